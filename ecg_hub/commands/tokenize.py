"""`ecg-hub tokenize DATASET --tokenizer T --out D`: precompute ECG2TOK token ids as a dataset column.

    ecg-hub tokenize DATASET --tokenizer T --out D [--column ecg2tok_labels] [--batch-size 16]
                     [--revision R]

Writes a copy of the prepared dataset folder DATASET (datasets.load_from_disk; a Dataset or
a DatasetDict) to D with one more column: per record, the stage-A tokenizer's ids flattened
lead-major (`leads * patches`: patch p of lead l at `l * patches + p`), -100 for
missing leads and padded time, as int16 (int32 for codebooks over 32767 codes).

The ids are those of the deterministic (non-training) crop of the tokenizer's own feature extractor
(its preprocessor_config.json), exactly what `EcgCollator(feature_extractor, training=False)`
feeds a model; `EcgCollator(..., token_column=COLUMN)` then passes them as stage-B labels.
Random training crops would not match them, so that collator refuses training=True.

Beside the data, ecg_hub_tokens.json records, per token column, the tokenizer (path or Hub id,
the revision asked for and the commit it resolved to), its codebook size and grid, and the feature
extractor config, so the labels can be regenerated. The copy is written to a temporary folder
beside D and renamed into place; D must not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

#: Sidecar JSON in the output folder: ``{column: how its token ids were made}``.
TOKENS_FILE = "ecg_hub_tokens.json"
DEFAULT_COLUMN = "ecg2tok_labels"
IGNORE_INDEX = -100


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        help="copy a prepared dataset with a column of ECG2TOK token ids (stage-B labels)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dataset", type=Path, metavar="DATASET", help="prepared dataset folder (`ecg-hub data prepare`)"
    )
    parser.add_argument("--tokenizer", required=True, help="stage-A ECG2TOK tokenizer folder or Hub id")
    parser.add_argument("--out", required=True, type=Path, help="output dataset folder (must not exist)")
    parser.add_argument(
        "--column", default=DEFAULT_COLUMN, help=f"name of the new column (default {DEFAULT_COLUMN})"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="records per encode batch (default 16)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hub tokenizer")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        out = tokenize_dataset(
            args.dataset,
            args.tokenizer,
            args.out,
            column=args.column,
            batch_size=args.batch_size,
            revision=args.revision,
        )
    except (ValueError, OSError, FileExistsError) as error:
        print(f"ecg-hub tokenize: {error}", file=sys.stderr)
        return 2
    print(f"token ids in column {args.column!r} written to {out}")
    return 0


# --------------------------------------------------------------------------------------------


def load_tokenizer(tokenizer: str | os.PathLike, revision: str | None = None):
    """``(model, feature_extractor)`` of a stage-A tokenizer folder or Hub id (installed classes,
    never remote code); a clear error when it is not an ECG2TOK stage-A tokenizer."""
    from transformers import AutoConfig

    from ecg_hub.modeling import register_all
    from ecg_hub.modeling.feature_extraction_ecg import EcgFeatureExtractor
    from ecg_hub.modeling.modeling_ecg2tok import Ecg2TokTokenizerModel

    register_all()
    source = str(tokenizer)
    config = AutoConfig.from_pretrained(source, revision=revision, trust_remote_code=False)
    if config.model_type != "ecg2tok_tokenizer":
        raise ValueError(
            f"tokenizer {source}: model_type is {config.model_type!r}, not 'ecg2tok_tokenizer' "
            "(a stage-A ECG2TOK tokenizer, e.g. the output of `ecg-hub pretrain ecg2tok/tokenizer_tiny`)"
        )
    model = Ecg2TokTokenizerModel.from_pretrained(source, revision=revision).eval()
    try:
        feature_extractor = EcgFeatureExtractor.from_pretrained(source, revision=revision)
    except OSError as error:
        raise ValueError(
            f"tokenizer {source}: no preprocessor_config.json; the ids are defined on its own feature extractor"
        ) from error
    return model, feature_extractor


def _tokenizer_record(
    source: str, revision: str | None, model, feature_extractor, dtype: str
) -> dict[str, Any]:
    config = model.config
    local = Path(source).is_dir()
    commit = getattr(config, "_commit_hash", None)
    return {
        "tokenizer_name_or_path": str(Path(source).resolve()) if local else source,
        "tokenizer_revision": revision,
        "tokenizer_commit": None if local else commit,
        "model_type": config.model_type,
        "codebook_size": int(config.codebook_size),
        "lead_names": list(config.lead_names),
        "patch_size": int(config.patch_size),
        "layout": "lead-major: index = lead * patches + patch",
        "ignore_index": IGNORE_INDEX,
        "dtype": dtype,
        "crop": "deterministic (training=False)",
        "feature_extractor": {k: v for k, v in feature_extractor.to_dict().items() if k != "auto_map"},
    }


def encode_split(dataset, model, feature_extractor, *, batch_size: int = 16, desc: str = "tokenize"):
    """Token ids of every row of ``dataset``, in order: a list of flat int lists (``leads * patches``)."""
    import torch
    from tqdm.auto import tqdm

    from ecg_hub.inference import inference_loader

    rows: list[list[int]] = []
    if len(dataset) == 0:
        return rows
    loader = inference_loader(dataset, feature_extractor, batch_size=batch_size)
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=None):
            ids = model.encode(
                batch["input_values"],
                lead_mask=batch.get("lead_mask"),
                attention_mask=batch.get("attention_mask"),
            )
            rows.extend(ids.reshape(ids.shape[0], -1).cpu().tolist())
    return rows


def tokenize_dataset(
    dataset_path: str | os.PathLike,
    tokenizer: str | os.PathLike,
    out: str | os.PathLike,
    *,
    column: str = DEFAULT_COLUMN,
    batch_size: int = 16,
    revision: str | None = None,
) -> Path:
    """Write a copy of the prepared dataset ``dataset_path`` with ``column`` of token ids to ``out``
    (see the module docstring). Returns ``out``."""
    import datasets

    from ecg_hub.data.splits import load_dataset_folder

    dataset_path, out = Path(dataset_path), Path(out)
    if out.exists():
        raise FileExistsError(f"output folder {out} already exists; choose a new --out (nothing was written)")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    data = load_dataset_folder(dataset_path)
    splits = dict(data) if isinstance(data, datasets.DatasetDict) else {None: data}
    for name, split in splits.items():
        where = f" (split {name!r})" if name is not None else ""
        if column in split.column_names:
            raise ValueError(
                f"dataset {dataset_path}{where} already has a column {column!r}; pass another --column"
            )
        if "signal" not in split.column_names:
            raise ValueError(f"dataset {dataset_path}{where} has no 'signal' column")

    model, feature_extractor = load_tokenizer(tokenizer, revision)
    dtype = "int16" if model.config.codebook_size <= 2**15 - 1 else "int32"
    length = None
    if (
        feature_extractor.num_samples is not None
        and feature_extractor.num_samples % model.config.patch_size == 0
    ):
        length = len(feature_extractor.leads) * (feature_extractor.num_samples // model.config.patch_size)
    feature = datasets.Sequence(datasets.Value(dtype), length=length if length is not None else -1)

    tokenized = {}
    for name, split in splits.items():
        ids = encode_split(
            split, model, feature_extractor, batch_size=batch_size, desc=f"tokenize {name or 'rows'}"
        )
        tokenized[name] = split.add_column(column, ids, feature=feature)
    result = tokenized[None] if None in tokenized else datasets.DatasetDict(tokenized)

    sidecar: dict[str, Any] = {}
    previous = dataset_path / TOKENS_FILE
    if previous.is_file():  # columns an earlier `ecg-hub tokenize` added
        sidecar = json.loads(previous.read_text(encoding="utf-8"))
    sidecar[column] = _tokenizer_record(str(tokenizer), revision, model, feature_extractor, dtype)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        target = staging / "dataset"
        result.save_to_disk(str(target))
        from ecg_hub.data.builder import SUMMARY_FILE

        if (dataset_path / SUMMARY_FILE).is_file():  # keep the prepare summary with the data
            shutil.copyfile(dataset_path / SUMMARY_FILE, target / SUMMARY_FILE)
        (target / TOKENS_FILE).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            raise FileExistsError(f"output folder {out} appeared while tokenizing; nothing was written to it")
        os.rename(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def load_tokens_info(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``ecg_hub_tokens.json`` of a tokenized dataset folder (``{}`` when there is none)."""
    path = Path(dataset_dir) / TOKENS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
