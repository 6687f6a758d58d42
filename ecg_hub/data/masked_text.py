"""Masked-language-model batches for pretraining a text tower on a cardiology corpus.

A corpus row (``ecg-hub text prepare``, :mod:`ecg_hub.data.text_corpus`) carries ``text`` (a chunk
that fits the tokenizer's length), ``document_id`` and ``chunk``. :class:`MaskedTextCollator`
tokenizes the chunks of a batch and hands them to ``transformers.DataCollatorForLanguageModeling``,
which pads them and masks 15 % of the tokens (80 % ``[MASK]``, 10 % a random token, 10 % kept;
labels are ``-100`` elsewhere). The pretraining loop seeds its randomness per batch, so the masks
of a batch are the same after a resume.

:func:`train_corpus_tokenizer` trains a BERT-style WordPiece vocabulary on a corpus (the tiny
recipe's random BERT uses it); real recipes use the starting model's own tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MaskedTextCollator", "train_corpus_tokenizer"]


def _finite_model_max_length(tokenizer: Any) -> int | None:
    """``tokenizer.model_max_length`` unless it is transformers' "no limit" sentinel (1e30)."""
    value = getattr(tokenizer, "model_max_length", None)
    return int(value) if value is not None and value < 1e9 else None


class MaskedTextCollator:
    """Collate corpus rows into masked-LM batches for ``AutoModelForMaskedLM(**batch)``.

    Args:
        feature_extractor: the model's tokenizer (the pretraining loop passes the recipe's
            ``preprocessor`` under this name, as for every collator).
        text_column: the row field holding the text.
        max_length: longest sequence in tokens, special tokens included (default the tokenizer's
            ``model_max_length``). A longer row is an error naming it, never cut: chunk the corpus
            for this tokenizer (``ecg-hub text prepare --tokenizer ... --max-length ...``).
        mlm_probability: share of tokens selected for prediction (BERT: 0.15).
        whole_word_mask: select whole words (every WordPiece of a word together) rather than
            single pieces; needs a fast tokenizer (its offsets say where words start). transformers
            then replaces every selected token by ``[MASK]`` (no random or kept tokens).
        mask_replace_prob, random_replace_prob: of the selected tokens, the share replaced by
            ``[MASK]`` and by a random token (the rest stay as they are).
        pad_to_multiple_of: pad the batch length to a multiple of this (8 suits tensor cores).

    Returns (``__call__``): ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for BERT) of
    shape (B, tokens) and ``labels`` (B, tokens), ``-100`` where no prediction is scored.
    """

    def __init__(
        self,
        feature_extractor: Any,
        text_column: str = "text",
        max_length: int | None = None,
        mlm_probability: float = 0.15,
        whole_word_mask: bool = False,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: int | None = None,
    ):
        from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerBase

        tokenizer = feature_extractor
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            raise ValueError(  # noqa: TRY004 - a recipe error, reported as the loop's other ValueErrors
                f"MaskedTextCollator needs the model's tokenizer as its preprocessor, got {type(tokenizer).__name__}"
            )
        if whole_word_mask and not tokenizer.is_fast:
            raise ValueError("whole_word_mask needs a fast tokenizer (word boundaries come from its offsets)")
        if max_length is None:
            max_length = _finite_model_max_length(tokenizer)
            if max_length is None:
                raise ValueError(
                    f"the tokenizer ({type(tokenizer).__name__}) sets no model_max_length: give the collator a max_length"
                )
        limit = _finite_model_max_length(tokenizer)
        if limit is not None and max_length > limit:
            raise ValueError(f"collator max_length {max_length} is over the tokenizer's model_max_length {limit}")
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.max_length = int(max_length)
        self.whole_word_mask = whole_word_mask
        self.pad_to_multiple_of = pad_to_multiple_of
        self.masker = DataCollatorForLanguageModeling(
            tokenizer=tokenizer,
            mlm=True,
            whole_word_mask=whole_word_mask,
            mlm_probability=mlm_probability,
            mask_replace_prob=1.0 if whole_word_mask else mask_replace_prob,
            random_replace_prob=0.0 if whole_word_mask else random_replace_prob,
        )

    def _row_name(self, row: dict[str, Any]) -> str:
        document = row.get("document_id", "?")
        return f"document {document}" + (f" chunk {row['chunk']}" if "chunk" in row else "")

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        rows = list(rows)
        texts = []
        for row in rows:
            text = row.get(self.text_column)
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    f"{self._row_name(row)}: field {self.text_column!r} must be a non-empty string, got {text!r}"
                )
            texts.append(text)
        # Padded here (not by DataCollatorForLanguageModeling, whose padding cannot carry the offsets
        # whole-word masking needs); padding positions count as special tokens, so none is masked.
        encoded = self.tokenizer(
            texts,
            truncation=False,
            padding=True,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_special_tokens_mask=True,
            return_offsets_mapping=self.whole_word_mask,
            return_tensors="pt",
        )
        for row, length in zip(rows, encoded["attention_mask"].sum(dim=1).tolist()):
            if length > self.max_length:
                raise ValueError(
                    f"{self._row_name(row)}: {length} tokens, over max_length {self.max_length}; nothing is cut "
                    "silently: re-chunk the corpus for this tokenizer (ecg-hub text prepare --tokenizer ... "
                    f"--max-length {self.max_length})"
                )
        special_tokens_mask = encoded.pop("special_tokens_mask")
        offset_mapping = encoded.pop("offset_mapping", None)
        batch = dict(encoded)
        batch["input_ids"], batch["labels"] = self.masker.torch_mask_tokens(
            batch["input_ids"], special_tokens_mask=special_tokens_mask, offset_mapping=offset_mapping
        )
        return batch


def train_corpus_tokenizer(
    path: str,
    vocab_size: int = 2000,
    split: str | None = "train",
    text_column: str = "text",
    max_length: int = 512,
    lowercase: bool = True,
):
    """A BERT-style WordPiece tokenizer trained (``tokenizers``) on a prepared text corpus.

    Args:
        path: the corpus folder (``ecg-hub text prepare --out``).
        vocab_size: largest vocabulary, special tokens included (a small corpus gives fewer).
        split: train the vocabulary on this split only (``null``: every row), so held-out text
            does not shape it.
        text_column: the text field.
        max_length: the tokenizer's ``model_max_length`` (tokens).
        lowercase: BERT uncased normalisation.
    """
    import datasets

    from .splits import dataset_split
    from .text_collators import train_report_tokenizer

    corpus = datasets.load_from_disk(path)
    if split is not None:
        corpus = dataset_split(corpus, split)
    if text_column not in corpus.column_names:
        raise ValueError(f"corpus {path}: no {text_column!r} column (columns: {corpus.column_names})")
    tokenizer = train_report_tokenizer(corpus[text_column], vocab_size=vocab_size, lowercase=lowercase)
    tokenizer.model_max_length = int(max_length)
    return tokenizer
