"""The text tower of the ECG-text families (ETP, MELP): any ``AutoModel`` text encoder, kept at
``self.text_model`` of the composite model.

`TextTowerMixin` gives such a model, from config fields ``text_config``, ``text_pooling``,
``freeze_text_layers`` and ``cache_text_features``:

* ``init_text_tower(text_model=None)``: builds the tower from ``config.text_config`` (or takes a
  loaded one) and shares one config object between the composite and the tower, keeping the
  tower's attention implementation (as ``VisionTextDualEncoderModel`` does);
* ``apply_text_freezing()``: freezes the embeddings and the bottom ``freeze_text_layers`` layers
  (``-1``: all of it, which also runs without dropout, a fixed feature map as in LiT), and a BERT
  pooler the chosen pooling does not read (DDP rejects parameters that get no gradient);
* ``encode_text(...) -> (text_output or None, pooled (batch, text_hidden))``: one vector per text
  by ``text_pooling`` (``cls``, ``pooler`` or masked ``mean``), through an exact in-memory cache of
  the pooled features of a fully frozen tower (``cache_text_features``);
* ``from_pretrained`` that re-applies the freezing (loading makes every parameter trainable).

`load_text_tower` and `split_tower_kwargs` serve the ``from_ecg_text_pretrained`` constructors.

Imports torch and transformers only (Hub remote-code bundle).
"""

from collections.abc import Iterable

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel

TEXT_POOLINGS = ("cls", "pooler", "mean")


def pool_text(text_output, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """``(batch, hidden)`` from a text encoder output: the first token's state (``cls``), the BERT
    pooler (``pooler``: CLS through dense + tanh) or the mean over real tokens (``mean``)."""
    if pooling == "pooler":
        if getattr(text_output, "pooler_output", None) is None:
            raise ValueError("text_pooling='pooler' but the text model returns no pooler_output")
        return text_output.pooler_output
    hidden = text_output.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    if pooling != "mean":
        raise ValueError(f"text_pooling must be one of {TEXT_POOLINGS}, got {pooling!r}")
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask[:, :, None].to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def freeze_text_tower(
    text_model: nn.Module,
    num_frozen_layers: int,
    pooling: str,
    *,
    freeze_embeddings: bool = True,
    setting: str = "freeze_text_layers",
) -> None:
    """Set ``requires_grad`` of a BERT-like tower: all frozen for ``-1``; otherwise the bottom
    ``num_frozen_layers`` layers, the embeddings with them unless ``freeze_embeddings=False`` (MELP:
    its added ``[BOS]`` row must learn), and an unused pooler. ``setting`` names the config field in
    the error."""
    if num_frozen_layers == -1:
        text_model.requires_grad_(False)
        return
    pooler = getattr(text_model, "pooler", None)
    if pooler is not None and pooling != "pooler":
        pooler.requires_grad_(False)
    if num_frozen_layers == 0:
        return
    embeddings = getattr(text_model, "embeddings", None) if freeze_embeddings else None
    layers = getattr(getattr(text_model, "encoder", None), "layer", None)
    if (freeze_embeddings and embeddings is None) or layers is None:
        needs = "`embeddings` and `encoder.layer`" if freeze_embeddings else "`encoder.layer`"
        raise ValueError(
            f"{setting}={num_frozen_layers} needs a BERT-like text model with {needs}; "
            f"{type(text_model).__name__} has not. Set {setting} to 0 or -1."
        )
    for module in [*([embeddings] if freeze_embeddings else []), *list(layers)[:num_frozen_layers]]:
        module.requires_grad_(False)


def load_text_tower(name_or_path: str, **kwargs) -> PreTrainedModel:
    """``AutoModel.from_pretrained(name_or_path)`` of a text encoder (a path or Hub id)."""
    if name_or_path is None:
        raise ValueError("a text tower needs text_model_name_or_path (a path or Hub id)")
    return AutoModel.from_pretrained(name_or_path, **kwargs)


def split_tower_kwargs(kwargs: dict, config_fields: Iterable[str], prefixes: Iterable[str]) -> dict[str, dict]:
    """Pop the ``<prefix>key`` entries of ``kwargs`` that are not composite-config fields, per prefix
    without it: ``{"text_": {"revision": ...}, "ecg_": {...}}``. What is left are config fields."""
    fields = set(config_fields)
    tower_keys = [key for key in kwargs if key not in fields]
    return {
        prefix: {key[len(prefix) :]: kwargs.pop(key) for key in tower_keys if key.startswith(prefix)}
        for prefix in prefixes
    }


class TextTowerMixin:
    """Mixed into a composite ``PreTrainedModel`` before its base class; see the module docstring."""

    def init_text_tower(self, text_model: PreTrainedModel | None = None) -> None:
        config = self.config
        text_model = text_model if text_model is not None else AutoModel.from_config(config.text_config)
        if text_model.config._attn_implementation is None:
            text_model.config._attn_implementation = "sdpa" if getattr(text_model, "_supports_sdpa", False) else "eager"
        config.text_config._attn_implementation = text_model.config._attn_implementation
        text_model.config = config.text_config
        self.text_model = text_model
        # Pooled features of the frozen text tower by token sequence (config.cache_text_features).
        self._text_feature_cache: dict[tuple, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        # Loading replaces every parameter by a new one with requires_grad=True: re-apply the config's
        # frozen layers. With output_loading_info=True the result is (model, loading_info).
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.apply_freezing()
        return loaded

    def apply_freezing(self) -> None:
        """``requires_grad`` from the config (`freeze_text_tower`); composites extend it."""
        freeze_text_tower(self.text_model, self.config.freeze_text_layers, self.config.text_pooling)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_text_layers == -1:
            # A fully frozen text tower is a fixed feature map: no dropout in it while training.
            self.text_model.eval()
        # Cached text features belong to the weights at hand; a mode switch is when they may change
        # (loading another checkpoint, a new training phase), so start afresh.
        self._text_feature_cache = {}
        return self

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ):
        """``(text_output or None, pooled (batch, text_hidden))``. ``text_output`` is None when the
        cache served some rows (token states then exist for the others only)."""
        text_kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            text_kwargs["token_type_ids"] = token_type_ids
        if position_ids is not None:
            text_kwargs["position_ids"] = position_ids
        pooling = self.config.text_pooling
        if not (self.config.cache_text_features and position_ids is None):
            text_output = self.text_model(input_ids=input_ids, return_dict=True, **text_kwargs)
            return text_output, pool_text(text_output, attention_mask, pooling)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        keys = []
        for row in range(input_ids.shape[0]):
            valid = mask[row].bool()
            ids = tuple(input_ids[row][valid].tolist())
            types = tuple(token_type_ids[row][valid].tolist()) if token_type_ids is not None else ()
            keys.append((ids, types))
        missing = sorted({i for i, key in enumerate(keys) if key not in self._text_feature_cache})
        text_output = None
        if missing:
            index = torch.tensor(missing, device=input_ids.device)
            sub_kwargs = {k: v.index_select(0, index) for k, v in text_kwargs.items() if v is not None}
            with torch.no_grad():
                text_output = self.text_model(input_ids=input_ids.index_select(0, index), return_dict=True, **sub_kwargs)
                pooled = pool_text(text_output, sub_kwargs.get("attention_mask"), pooling)
            for row, vector in zip(missing, pooled):
                self._text_feature_cache[keys[row]] = vector.detach()
            if len(missing) < input_ids.shape[0]:
                text_output = None
        pooled = torch.stack([self._text_feature_cache[key] for key in keys]).to(input_ids.device)
        return text_output, pooled


__all__ = [
    "TEXT_POOLINGS",
    "TextTowerMixin",
    "freeze_text_tower",
    "load_text_tower",
    "pool_text",
    "split_tower_kwargs",
]
