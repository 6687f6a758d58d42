"""The starting model of a masked-LM recipe: ``AutoModelForMaskedLM.from_pretrained`` plus the one
ablation the text-model figures need.

A sentence or retrieval encoder (all-MiniLM-L6-v2, MedCPT-Query-Encoder) is saved without an MLM
head: ``from_pretrained`` adds BERT's head with its decoder tied to the word embeddings and a new
transform layer. Its "before" perplexity is therefore that of an untrained head, and a fall in
perplexity mixes two things: the head learning to read the encoder, and the encoder adapting to
cardiology text. ``freeze_encoder=True`` trains the head alone (same data, same steps), which
separates them: continued pretraining is worth shipping only if it beats that baseline.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["load_masked_lm"]

logger = logging.getLogger(__name__)


def load_masked_lm(pretrained_model_name_or_path: str, freeze_encoder: bool = False, **kwargs: Any):
    """``AutoModelForMaskedLM.from_pretrained(pretrained_model_name_or_path, **kwargs)`` (safetensors
    only); with ``freeze_encoder`` every parameter outside the MLM head is frozen, word embeddings
    included (the decoder is tied to them), except the head's own decoder bias."""
    from transformers import AutoModelForMaskedLM

    model, info = AutoModelForMaskedLM.from_pretrained(
        pretrained_model_name_or_path, use_safetensors=True, output_loading_info=True, **kwargs
    )
    new = sorted(info.get("missing_keys") or [])
    if new:
        logger.warning("%s: newly initialised (not in the checkpoint): %s", pretrained_model_name_or_path, new)
    if freeze_encoder:
        encoder = model.base_model
        encoder.requires_grad_(False)
        trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        if not trainable:
            raise ValueError(f"{type(model).__name__}: freeze_encoder left no trainable parameter (no separate head)")
    return model
