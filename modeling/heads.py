"""The classification head every ``...ForSequenceClassification`` of ecg-hub shares.

`SequenceClassificationHeadMixin` gives a model whose encoder sits at ``self.<base_model_prefix>``:

* ``init_classification_head(hidden_size, dropout)``: ``self.dropout`` + ``self.classifier``
  (``Linear(hidden_size -> num_labels)``; ``Identity`` for ``num_labels == 0``, a feature model);
* ``freeze_base_model()``: linear probing, with one flag (``base_model_frozen``): no gradients into
  the encoder, and the encoder stays in eval mode even when the model trains (no dropout or
  stochastic depth, BatchNorm statistics as loaded), like the papers' precomputed probe features;
* ``classify(pooled, labels)``: logits and the loss of ``config.problem_type`` through transformers'
  ``loss_function`` (float multi-hot labels: BCE; integer labels: cross-entropy; one float target:
  MSE), so the model is ``Trainer``-ready.

Imports torch only (Hub remote-code bundle).
"""

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

#: ``config.problem_type`` values the heads (and ecg-hub's fine-tuning and evaluation) support.
PROBLEM_TYPES = ("multi_label_classification", "single_label_classification", "regression")


class SequenceClassificationHeadMixin:
    """Mixed into a ``PreTrainedModel`` before its base class; see the module docstring."""

    base_model_frozen: bool = False

    def init_classification_head(self, hidden_size: int, dropout: float) -> None:
        self.num_labels = self.config.num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = (
            nn.Linear(hidden_size, self.config.num_labels) if self.config.num_labels > 0 else nn.Identity()
        )
        self.base_model_frozen = False

    @property
    def classification_encoder(self) -> nn.Module:
        """The encoder under the head (the ``base_model_prefix`` submodule)."""
        return getattr(self, self.base_model_prefix)

    def freeze_base_model(self) -> None:
        """Linear probing: freeze the encoder's weights and keep it in eval mode (see module docstring)."""
        encoder = self.classification_encoder
        encoder.requires_grad_(False)
        encoder.eval()
        self.base_model_frozen = True

    def train(self, mode: bool = True):
        super().train(mode)
        if self.base_model_frozen:
            self.classification_encoder.eval()
        return self

    def classify(self, pooled: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits (batch, num_labels), loss or None)`` from ``(batch, hidden_size)`` pooled features.

        ``labels``: ``(batch, num_labels)`` float multi-hot (multi-label), ``(batch,)`` int class
        indices (single-label) or float targets (regression, ``num_labels == 1``).
        """
        logits = self.classifier(self.dropout(pooled))
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return logits, loss

    def classify_ecg(
        self,
        input_values: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        lead_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """The whole forward of an ECG classifier whose encoder takes ``(input_values,
        attention_mask, lead_mask)`` and returns ``pooler_output``: encode, `classify`, and a
        ``SequenceClassifierOutput`` with the encoder's hidden states and attentions."""
        outputs = self.classification_encoder(input_values, attention_mask=attention_mask, lead_mask=lead_mask, **kwargs)
        logits, loss = self.classify(outputs.pooler_output, labels)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = ["PROBLEM_TYPES", "SequenceClassificationHeadMixin"]
