"""``EtpProcessor``: ETP's ECG feature extractor + report tokenizer (an `EcgTextProcessor`).

Saved with ``save_pretrained`` (``processor_config.json`` with the extractor nested, plus the
tokenizer files) and loaded with ``AutoProcessor.from_pretrained`` once ``ecg_hub`` is imported.
The keys it returns are listed in ``processing_ecg_text``.

Imports transformers only (Hub remote-code bundle).
"""

from .processing_ecg_text import EcgTextProcessor


class EtpProcessor(EcgTextProcessor):
    r"""ECG feature extractor + tokenizer for [`EtpModel`].

    Args:
        feature_extractor: an ``EcgFeatureExtractor`` (ETP default:
            ``EcgFeatureExtractor.from_preset("etp")``: 12 leads in MERL order, 500 Hz, 5000 samples,
            record min-max to [0, 1]).
        tokenizer: the text tower's tokenizer (default model: ``emilyalsentzer/Bio_ClinicalBERT``).
        max_text_length: reports and prompts are truncated to this many tokens (MERL: 256).
        lowercase_text: lower-case text before tokenising (MERL lower-cases its zero-shot prompts;
            only useful with a cased tokenizer).
    """


__all__ = ["EtpProcessor"]
