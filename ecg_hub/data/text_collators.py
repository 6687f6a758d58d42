"""ECG-report pair collation for the contrastive (ETP / CLIP-style) pretraining loop.

A dataset row carries ``signal`` (leads x samples, mV), ``sampling_rate``, ``leads`` and a free-text
report (``report`` by default). The collator runs the ECG through the processor's
``EcgFeatureExtractor`` (random crops when training) and the report through its tokenizer, and
names the two masks apart: ``ecg_attention_mask`` (time) and ``attention_mask`` (tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .collators import EcgCollator


def report_text(row: dict[str, Any], text_column: str = "report") -> str:
    """The row's report, stripped; ``ValueError`` naming the record when it is missing or empty."""
    text = row.get(text_column)
    if not isinstance(text, str) or not text.strip():
        record = row.get("record_id", "?")
        raise ValueError(
            f"record {record}: field {text_column!r} must be a non-empty report string, got {text!r} "
            "(drop such rows first, e.g. with ecg_hub.data.text_collators.with_reports)"
        )
    return " ".join(text.split())


def with_reports(dataset, text_column: str = "report", min_words: int = 1):
    """Rows of a ``datasets.Dataset`` whose report has at least ``min_words`` words (MERL drops < 4)."""
    if text_column not in dataset.column_names:
        raise ValueError(f"dataset has no {text_column!r} column (columns: {dataset.column_names})")
    return dataset.filter(
        lambda text: isinstance(text, str) and len(text.split()) >= min_words, input_columns=[text_column]
    )


class EcgTextCollator:
    """Collate ECG-report rows into one batch for ``EtpModel(**batch)``.

    Args:
        processor: an ``EtpProcessor`` (``feature_extractor`` + ``tokenizer``; its ``max_text_length``
            and ``lowercase_text`` apply).
        text_column: the row field holding the report (``"report"``).
        training: random ECG crops (augmentation) instead of the extractor's deterministic crop.
        seed: seed of the random-crop generator (one stream per DataLoader worker).
        return_loss: add ``return_loss=True`` to the batch, so ``model(**batch).loss`` is set in eval
            mode too (validation loss).

    Returns (``__call__``): ``input_values`` (B, L, T) float32, ``ecg_attention_mask`` (B, T),
    ``lead_mask`` (B, L), ``input_ids`` / ``attention_mask`` (/ ``token_type_ids``) (B, tokens),
    and ``return_loss``.
    """

    def __init__(
        self,
        processor,
        text_column: str = "report",
        training: bool = False,
        seed: int | None = None,
        return_loss: bool = True,
    ):
        if getattr(processor, "feature_extractor", None) is None or getattr(processor, "tokenizer", None) is None:
            raise ValueError("EcgTextCollator needs a processor with a feature_extractor and a tokenizer")
        self.processor = processor
        self.text_column = text_column
        self.training = training
        self.return_loss = return_loss
        self._ecg = EcgCollator(processor.feature_extractor, training=training, seed=seed)

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rows = list(rows)
        texts = [report_text(row, self.text_column) for row in rows]
        ecg = self._ecg(rows)
        batch: dict[str, Any] = {
            "input_values": ecg["input_values"],
            "lead_mask": ecg["lead_mask"],
        }
        if "attention_mask" in ecg:
            batch["ecg_attention_mask"] = ecg["attention_mask"]
        text = self.processor(text=texts, return_tensors="pt")
        batch.update({key: value for key, value in text.items() if isinstance(value, torch.Tensor)})
        if self.return_loss:
            batch["return_loss"] = True
        return batch


__all__ = ["EcgTextCollator", "report_text", "with_reports"]
