"""``EcgTextProcessor``: one object that prepares ECG (``EcgFeatureExtractor``) and text (tokenizer)
for the ECG-text families; ``EtpProcessor`` (and MELP's) derive from it.

Saved with ``save_pretrained`` (``processor_config.json`` with the extractor nested, plus the
tokenizer files) and loaded with ``AutoProcessor.from_pretrained`` once ``ecg_hub`` is imported (as the family's subclass).

The two modalities' masks get distinct names so that neither overwrites the other:

=====================  ==========================  ==================================
key                    shape                       meaning
=====================  ==========================  ==================================
``input_values``       (n_ecg, leads, samples)     the ECG, as the feature extractor returns it
``ecg_attention_mask`` (n_ecg, samples)            1 = real sample, 0 = padding
``lead_mask``          (n_ecg, leads)              1 = recorded/derived lead, 0 = zero-filled
``input_ids``          (n_text, tokens)            token ids
``attention_mask``     (n_text, tokens)            1 = real token (the **text** mask)
``token_type_ids``     (n_text, tokens)            when the tokenizer returns them
=====================  ==========================  ==================================

Imports transformers only (Hub remote-code bundle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class EcgTextProcessor(ProcessorMixin):
    r"""ECG feature extractor + tokenizer of an ECG-text model.

    Args:
        feature_extractor: an ``EcgFeatureExtractor`` (the model's input contract).
        tokenizer: the text tower's tokenizer.
        max_text_length: reports and prompts are truncated to this many tokens (MERL: 256).
        lowercase_text: lower-case text before tokenising (MERL lower-cases its zero-shot prompts;
            only useful with a cased tokenizer).

    Example:
        >>> processor = EtpProcessor(EcgFeatureExtractor.from_preset("etp"), tokenizer)
        >>> batch = processor(ecg=signals, text=reports, sampling_rate=500, leads=leads, return_tensors="pt")
        >>> sorted(batch)  # doctest: +SKIP
        ['attention_mask', 'ecg_attention_mask', 'input_ids', 'input_values', 'lead_mask', 'token_type_ids']
    """

    #: The tokenizer's ``padding`` when a call gives none (``True``: to the longest text of the batch).
    default_padding: bool | str = True

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        max_text_length: int = 256,
        lowercase_text: bool = False,
    ):
        if not isinstance(max_text_length, int) or max_text_length < 1:
            raise ValueError(f"{type(self).__name__}: max_text_length must be a positive int, got {max_text_length!r}")
        self.max_text_length = max_text_length
        self.lowercase_text = bool(lowercase_text)
        super().__init__(feature_extractor, tokenizer)

    def __call__(
        self,
        ecg: Any = None,
        text: str | Sequence[str] | None = None,
        sampling_rate: float | Sequence[float] | None = None,
        leads: Sequence[str] | Sequence[Sequence[str]] | None = None,
        training: bool = False,
        return_tensors: str | None = None,
        padding: bool | str | None = None,
        truncation: bool = True,
        max_length: int | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Prepare ECG and/or text.

        Args:
            ecg: anything ``EcgFeatureExtractor`` accepts: ``(leads, samples)`` / ``(batch, leads,
                samples)`` arrays or tensors, a list of records, or dataset row(s) with ``signal``,
                ``sampling_rate`` and ``leads``.
            text: one string or a list of strings (reports, or class prompts).
            sampling_rate: the ECG's rate in Hz (unless the rows carry it).
            leads: the ECG's lead names (unless the rows carry them).
            training: random ECG crops (augmentation) instead of the extractor's deterministic crop.
            return_tensors: ``"pt"``, ``"np"`` or ``None``.
            padding, truncation, max_length: tokenizer options (``padding`` defaults to the class's
                ``default_padding``, ``max_length`` to ``max_text_length``).
            **kwargs: forwarded to the feature extractor (``units``, ``record_ids``, ``generator``).

        Returns:
            ``BatchFeature`` with the keys in the module docstring.
        """
        if ecg is None and text is None:
            raise ValueError(f"{type(self).__name__} needs `ecg`, `text` or both")
        data: dict[str, Any] = {}
        if ecg is not None:
            features = self.feature_extractor(
                ecg, sampling_rate=sampling_rate, leads=leads, training=training, return_tensors=return_tensors, **kwargs
            )
            data["input_values"] = features["input_values"]
            data["lead_mask"] = features["lead_mask"]
            if "attention_mask" in features:
                data["ecg_attention_mask"] = features["attention_mask"]
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            if not texts or not all(isinstance(t, str) for t in texts):
                raise ValueError(f"{type(self).__name__}: `text` must be a string or a non-empty list of strings")
            if self.lowercase_text:
                texts = [t.lower() for t in texts]
            padding = self.default_padding if padding is None else padding
            data.update(self._encode_text(texts, padding, truncation, max_length, return_tensors))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _encode_text(
        self, texts: list[str], padding: bool | str, truncation: bool, max_length: int | None, return_tensors
    ) -> dict[str, Any]:
        """The tokenizer's output for the checked (and lower-cased) ``texts``; a family's processor
        overrides it to lay the tokens out as its model reads them (MELP: ``[BOS]``, sentence index)."""
        encoded = self.tokenizer(
            texts,
            padding=padding,
            truncation=truncation,
            max_length=max_length if max_length is not None else self.max_text_length,
            return_tensors=return_tensors,
        )
        return dict(encoded)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_values", "ecg_attention_mask", "lead_mask", "input_ids", "attention_mask", "token_type_ids"]


__all__ = ["EcgTextProcessor"]
