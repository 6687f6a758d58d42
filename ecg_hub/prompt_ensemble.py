"""Zero-shot prompt ensembling: the class embeddings of CLIP-style ECG-text models (ETP, MELP).

A class described by several prompts (templates x descriptions) gets the mean of its
L2-normalised prompt embeddings, re-normalised (open_clip's zero-shot classifier, MERL's CKEPE
ensembling). Used by the ``zero-shot-ecg-classification`` pipeline (:mod:`ecg_hub.pipelines`) and
by the zero-shot evaluation protocol (:mod:`ecg_hub.evaluation.zero_shot`), which only differ in how
they tokenise the prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ecg_hub.utils import accepted_kwargs

__all__ = ["encode_class_prompts", "ensemble_class_embeddings", "pooled_embedding"]


def pooled_embedding(output) -> torch.Tensor:
    """The embedding in a model output: the output itself if it is a tensor, else its ``pooler_output``."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise ValueError(
            f"{type(output).__name__} is neither a tensor nor an output with pooler_output (the embedding); "
            "get_ecg_features / get_text_features must return one of them"
        )
    return pooled


def ensemble_class_embeddings(prompt_embeddings: torch.Tensor, class_prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """``(num_classes, dim)`` L2-normalised class embeddings from the ``(num_prompts, dim)``
    embeddings of the flattened ``class_prompts`` (class by class, in order): each prompt embedding
    is normalised, averaged over its class, and the mean normalised again."""
    sizes = [len(prompts) for prompts in class_prompts]
    if sum(sizes) != prompt_embeddings.shape[0]:
        raise ValueError(f"{prompt_embeddings.shape[0]} prompt embeddings for {sum(sizes)} prompts")
    text = F.normalize(prompt_embeddings.float(), dim=-1)
    per_class, start = [], 0
    for size in sizes:
        per_class.append(text[start : start + size].mean(0))
        start += size
    return F.normalize(torch.stack(per_class), dim=-1)


@torch.no_grad()
def encode_class_prompts(model, tokens: Mapping[str, torch.Tensor], class_prompts: Sequence[Sequence[str]]) -> torch.Tensor:
    """Class embeddings of ``model.get_text_features`` on the tokenised, flattened ``class_prompts``
    (``tokens``: the tokenizer's output on the device of the model; the entries ``get_text_features``
    does not take are dropped)."""
    output = model.get_text_features(**accepted_kwargs(model.get_text_features, tokens))
    return ensemble_class_embeddings(pooled_embedding(output), class_prompts)
