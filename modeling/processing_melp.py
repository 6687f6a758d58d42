"""``MelpProcessor``: MELP's ECG feature extractor + report tokenizer (an `EcgTextProcessor`).

Text comes out as MELP's ``_tokenize`` makes it: ``[BOS] report [SEP] [PAD]...`` (the tokenizer's
leading ``[CLS]`` replaced by the added ``[BOS]``), padded to ``max_text_length - 1`` tokens, so that
the ``[CLS]`` the model appends sits at position ``max_text_length - 1`` (127), as in the official
code. With it comes ``sentence_index``: the report sentence of every token (``-1`` for none), which
the beat-level loss averages over, so a collator never re-tokenises. The keys are those of
``processing_ecg_text`` plus ``sentence_index``.

Saved with ``save_pretrained`` and loaded with ``AutoProcessor.from_pretrained`` once ``ecg_hub`` is
imported. Imports transformers only (Hub remote-code bundle).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .processing_ecg_text import EcgTextProcessor

#: The token MELP adds to the text tower's vocabulary to start every report.
BOS_TOKEN = "[BOS]"


def add_bos_token(tokenizer) -> int:
    """Add ``[BOS]`` as the tokenizer's ``bos_token`` unless it has one (MELP:
    ``tokenizer.add_special_tokens({"bos_token": "[BOS]"})``); its id."""
    if tokenizer.bos_token is None:
        tokenizer.add_special_tokens({"bos_token": BOS_TOKEN})
    return tokenizer.bos_token_id


def sentence_index(input_ids: Sequence[int], separator_id: int, special_ids: Iterable[int]) -> list[int]:
    """The sentence of every token of one tokenised report, ``-1`` for none (MELP's
    ``aggregate_sentence_emb``): a sentence runs up to and including a separator token; tokens after
    the last separator belong to none; special tokens belong to none; a sentence with no other token
    is skipped and the others are numbered 0, 1, ..."""
    special = set(special_ids)
    index = [-1] * len(input_ids)
    start, number = 0, 0
    for position, token in enumerate(input_ids):
        if token != separator_id:
            continue
        members = [p for p in range(start, position + 1) if input_ids[p] not in special]
        if members:
            for p in members:
                index[p] = number
            number += 1
        start = position + 1
    return index


class MelpProcessor(EcgTextProcessor):
    r"""ECG feature extractor + tokenizer for the MELP models.

    Args:
        feature_extractor: an ``EcgFeatureExtractor`` (MELP: ``EcgFeatureExtractor.from_preset("melp")``:
            12 leads in MIMIC order, 500 Hz, 5000 samples, record min-max to [0, 1]).
        tokenizer: the text tower's BERT tokenizer (MELP: ``fuyingw/heart_bert``); ``[BOS]`` is added
            when missing (the model's vocabulary must include it: ``MelpModel.from_ecg_text_pretrained``
            resizes it).
        max_text_length: MELP's ``max_seq_len`` (128): reports are truncated and padded to
            ``max_text_length - 1`` tokens, the model appends ``[CLS]``.
        lowercase_text: lower-case text first (MELP lower-cases its reports and prompts).
        sentence_separator: the token that ends a sentence (MELP: ".", id 18 in the MedCPT vocabulary;
            keep it equal to the model's ``sentence_separator_token_id``).

    Example:
        >>> processor = MelpProcessor(EcgFeatureExtractor.from_preset("melp"), tokenizer)
        >>> batch = processor(ecg=signals, text=reports, sampling_rate=500, leads=leads, return_tensors="pt")
        >>> sorted(batch)  # doctest: +SKIP
        ['attention_mask', 'ecg_attention_mask', 'input_ids', 'input_values', 'lead_mask', 'sentence_index', 'token_type_ids']
        >>> processor.batch_decode(model.generate(**batch))  # reports written by MelpForConditionalGeneration
    """

    #: MELP pads every report to the same length (the appended ``[CLS]`` sits at the last position).
    default_padding = "max_length"

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        max_text_length: int = 128,
        lowercase_text: bool = True,
        sentence_separator: str = ".",
    ):
        if not isinstance(max_text_length, int) or max_text_length < 3:
            raise ValueError(f"MelpProcessor: max_text_length must be an int >= 3, got {max_text_length!r}")
        self.sentence_separator = sentence_separator
        if tokenizer is not None:
            add_bos_token(tokenizer)
        super().__init__(feature_extractor, tokenizer, max_text_length=max_text_length, lowercase_text=lowercase_text)

    @property
    def sentence_separator_token_id(self) -> int:
        """Id of ``sentence_separator`` in the tokenizer."""
        return self.tokenizer.convert_tokens_to_ids(self.sentence_separator)

    def _encode_text(self, texts, padding, truncation, max_length, return_tensors) -> dict[str, list]:
        """``[BOS] text [SEP]`` padded (default ``"max_length"``: ``max_length`` or
        ``max_text_length``, minus the ``[CLS]`` the model appends) plus ``sentence_index``. With
        ``padding=True`` the batch is padded to its longest text only (the appended ``[CLS]`` then
        moves with the padding: the official model always sees 128 tokens). Lists: the caller's
        ``BatchFeature`` makes the tensors."""
        tokenizer = self.tokenizer
        length = (max_length if max_length is not None else self.max_text_length) - 1
        encoded = dict(tokenizer(texts, padding=padding, truncation=truncation, max_length=length))
        bos, cls = tokenizer.bos_token_id, tokenizer.cls_token_id
        rows = []
        for ids in encoded["input_ids"]:
            ids = list(ids)
            if ids and ids[0] == cls:
                ids[0] = bos  # MELP: "[BOS] text" with the leading [CLS] removed
            else:
                ids = [bos, *ids]
            rows.append(ids)
        if any(len(row) != len(encoded["input_ids"][i]) for i, row in enumerate(rows)):  # [BOS] was prepended
            for key in ("attention_mask", "token_type_ids"):
                if key in encoded:
                    encoded[key] = [[1 if key == "attention_mask" else 0, *values] for values in encoded[key]]
        encoded["input_ids"] = rows
        separator, special = self.sentence_separator_token_id, tokenizer.all_special_ids
        encoded["sentence_index"] = [sentence_index(row, separator, special) for row in rows]
        return encoded

    def batch_decode(self, sequences, skip_special_tokens: bool = True, **kwargs) -> list[str]:
        """Decode generated reports (``[BOS]``, ``[SEP]`` and padding dropped by default)."""
        return self.tokenizer.batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)

    def decode(self, sequence, skip_special_tokens: bool = True, **kwargs) -> str:
        """Decode one generated report."""
        return self.tokenizer.decode(sequence, skip_special_tokens=skip_special_tokens, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return [*super().model_input_names, "sentence_index"]


__all__ = ["BOS_TOKEN", "MelpProcessor", "add_bos_token", "sentence_index"]
