"""Linear probe: frozen backbone, features computed once and cached, then one ``Linear`` head.

Protocol (ecg-hub §4): the encoder runs in eval mode with the deterministic crop of its feature
extractor; the probe feature is the backbone's ``pooler_output`` (for ECG-JEPA the mean of all
tokens after the final LayerNorm, for the ResNet encoders the pooled last stage, ...). The head is
``Linear(D -> C)`` trained with BCE-with-logits (multi-label) or cross-entropy (single-label),
AdamW lr 1e-3, weight decay 1e-4, batch 128, at most 100 epochs, cosine from 1e-3 to 1e-5, early
stopping on validation macro AUROC with patience 5; the test split is scored once with the
best-validation head.

Fast path: the features are extracted once per (backbone, feature extractor, split) and the head is
trained by a plain PyTorch loop over the cached (N, D) matrix. Running the same probe through the
``Trainer`` with a frozen backbone recomputes the backbone on every epoch
(``benchmarks/bench_linear_probe.py`` measures both).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ecg_hub.inference import collect_outputs, module_device, resolve_inference_dtype
from ecg_hub.loading import check_problem_type
from ecg_hub.utils import accepted_kwargs

from .metrics import classification_metrics, macro_auroc_fast, scores_from_logits

logger = logging.getLogger(__name__)

#: Batch entries a backbone's ``forward`` may take.
BACKBONE_INPUTS = ("input_values", "attention_mask", "lead_mask")


def backbone_of(model: nn.Module) -> nn.Module:
    """The encoder whose ``pooler_output`` is the probe feature.

    ``...ForSequenceClassification`` / ``...ForPreTraining`` models expose it as ``model.base_model``
    (the submodule named by ``base_model_prefix``); a bare ``...Model`` is its own base model.
    """
    base = getattr(model, "base_model", model)
    return base if base is not None else model


def _forward_kwargs(module: nn.Module, batch: dict) -> dict:
    """The batch entries the module's ``forward`` accepts (``lead_mask`` only if it names it)."""
    inputs = {k: v for k, v in batch.items() if k in BACKBONE_INPUTS}
    return accepted_kwargs(module.forward, inputs, explicit_only=("lead_mask",))


def extract_features(
    model: nn.Module,
    dataset,
    feature_extractor,
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    feature: str = "pooler_output",
    dtype: str = "float32",
) -> np.ndarray:
    """Backbone features of every record of ``dataset``, in dataset order.

    Args:
        model: any ecg-hub model (``...Model``, ``...ForSequenceClassification``, ...); its
            ``backbone_of`` runs in eval mode.
        dataset: a ``datasets.Dataset`` with ``signal``, ``sampling_rate``, ``leads`` columns.
        feature_extractor: the model's ``EcgFeatureExtractor``; the deterministic crop is used.
        batch_size: records per forward pass.
        device: defaults to the model's device.
        num_workers: DataLoader workers for the feature extractor.
        feature: the output field used as the feature (``pooler_output``).
        dtype: inference precision, ``"float32"``, ``"bfloat16"`` or ``"auto"`` (:mod:`ecg_hub.inference`).

    Returns:
        (N, D) float32 array.
    """
    backbone = backbone_of(model)

    def step(batch: dict) -> torch.Tensor:
        value = getattr(backbone(**_forward_kwargs(backbone, batch)), feature, None)
        if value is None:
            raise ValueError(
                f"{type(backbone).__name__} returned no {feature!r}; the linear probe needs a pooled "
                "(batch, hidden) feature"
            )
        if value.ndim != 2:
            raise ValueError(f"{type(backbone).__name__}.{feature} must be (batch, hidden), got {tuple(value.shape)}")
        return value.float()

    return collect_outputs(
        backbone,
        dataset,
        feature_extractor,
        step,
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
        dtype=dtype,
    )


# --- on-disk cache ------------------------------------------------------------------------------


def _model_digest(model: nn.Module) -> str:
    """SHA-256 over the backbone's parameter and buffer bytes (identifies the weights, not the path)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(backbone_of(model).state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_cache_key(
    model: nn.Module, dataset, feature_extractor, feature: str = "pooler_output", dtype: str = "float32"
) -> str:
    """A key that changes when the weights, the records (``dataset._fingerprint``), the
    preprocessing (feature extractor config), the feature field or the precision change."""
    fe_config = json.dumps(feature_extractor.to_dict(), sort_keys=True, default=str)
    parts = [_model_digest(model), getattr(dataset, "_fingerprint", str(len(dataset))), fe_config, feature]
    if dtype != "float32":  # float32 keys stay as they were
        parts.append(dtype)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def cached_features(
    model: nn.Module,
    dataset,
    feature_extractor,
    *,
    cache_dir: str | os.PathLike | None = None,
    **extract_kwargs,
) -> np.ndarray:
    """``extract_features`` with an optional on-disk cache (safetensors, written atomically).

    With ``cache_dir=None`` the features are computed (callers keep them in memory and reuse them
    across label fractions and seeds).
    """
    if cache_dir is None:
        return extract_features(model, dataset, feature_extractor, **extract_kwargs)
    from safetensors.numpy import load_file, save_file

    feature = extract_kwargs.get("feature", "pooler_output")
    dtype = str(resolve_inference_dtype(extract_kwargs.get("dtype", "float32"), module_device(model))[0]).removeprefix("torch.")
    key = feature_cache_key(model, dataset, feature_extractor, feature, dtype)
    path = Path(cache_dir) / f"features-{key}.safetensors"
    if path.exists():
        return load_file(str(path))["features"]
    features = extract_features(model, dataset, feature_extractor, **extract_kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"features": np.ascontiguousarray(features, dtype=np.float32)}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return features


# --- the head -----------------------------------------------------------------------------------


@dataclass
class LinearProbeConfig:
    """Optimisation of the probe head (defaults: ecg-hub protocol §4).

    ``standardize``: train the head on features z-scored with the training subset's mean and std
    (MAE's affine-free BatchNorm before the linear probe). Backbones differ widely in feature scale
    (post-LayerNorm tokens vs pooled ReLU maps), and one learning rate must suit all of them. The
    scaling is folded back into the returned ``Linear``, which therefore takes raw features.
    """

    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    weight_decay: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 100
    patience: int = 5
    seed: int = 0
    standardize: bool = True


@dataclass
class LinearProbeResult:
    """A trained probe: the best-validation head and its history.

    Attributes:
        head: ``nn.Linear(D, C)`` with the weights of the best validation epoch.
        best_epoch: 1-based epoch of the best validation macro AUROC.
        val_metrics: ``classification_metrics`` on validation at ``best_epoch``.
        history: per-epoch ``{"epoch", "train_loss", "val_macro_auroc"}``.
    """

    head: nn.Linear
    best_epoch: int
    val_metrics: dict
    history: list[dict] = field(default_factory=list)


def _labels_tensor(labels: np.ndarray, problem_type: str) -> torch.Tensor:
    labels = np.asarray(labels)
    if problem_type == "single_label_classification":
        if labels.ndim == 2:
            if not np.all(labels.sum(1) == 1):
                raise ValueError("single-label probe: every record needs exactly one positive class")
            labels = labels.argmax(1)
        return torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim != 2:
        raise ValueError(f"multi-label probe: labels must be (N, C) multi-hot, got shape {labels.shape}")
    return torch.as_tensor(labels, dtype=torch.float32)


def head_scores(head: nn.Module, features, problem_type: str) -> np.ndarray:
    """(N, C) probabilities of ``head`` on (N, D) features (sigmoid or softmax by ``problem_type``)."""
    with torch.no_grad():
        logits = head(torch.as_tensor(features, dtype=torch.float32))
        return scores_from_logits(logits, problem_type).numpy().astype(np.float64)


@contextlib.contextmanager
def single_thread():
    """Run tiny tensor ops on one intra-op thread. A (128 x D) @ (D x C) step is microseconds of
    work; with several threads on a busy machine every op waits for the others (measured here:
    13.4 s vs 0.54 s for 60 probe epochs on 2 shared cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    problem_type: str = "multi_label_classification",
    config: LinearProbeConfig | None = None,
    class_names: Sequence[str] | None = None,
) -> LinearProbeResult:
    """Train ``Linear(D -> C)`` on cached features with early stopping on validation macro AUROC.

    Args:
        train_features / val_features: (N, D) float features (``extract_features``).
        train_labels / val_labels: (N, C) multi-hot, or (N,) class indices for single-label.
        problem_type: ``"multi_label_classification"`` (BCE) or ``"single_label_classification"`` (CE).
        config: optimisation settings (ecg-hub protocol defaults).
        class_names: names for the per-class metrics.

    Returns:
        ``LinearProbeResult`` holding the best-validation head.
    """
    with single_thread():
        return _train_linear_probe(
            train_features, train_labels, val_features, val_labels, problem_type=problem_type,
            config=config, class_names=class_names,
        )


def _train_linear_probe(train_features, train_labels, val_features, val_labels, *, problem_type, config, class_names):
    check_problem_type(problem_type)
    config = config or LinearProbeConfig()
    x_train = torch.as_tensor(np.asarray(train_features), dtype=torch.float32)
    y_train = _labels_tensor(train_labels, problem_type)
    if x_train.ndim != 2 or x_train.shape[0] != y_train.shape[0] or x_train.shape[0] == 0:
        raise ValueError(
            f"train features {tuple(x_train.shape)} and labels {tuple(y_train.shape)} must be (N, D) and (N, ...) "
            "with the same N > 0"
        )
    if np.asarray(train_labels).ndim == 2:
        num_classes = int(np.asarray(train_labels).shape[1])
    elif class_names is not None:
        num_classes = len(class_names)
    else:
        num_classes = int(max(np.max(train_labels), np.max(val_labels))) + 1
    generator = torch.Generator().manual_seed(config.seed)
    mean = torch.zeros(x_train.shape[1])
    std = torch.ones(x_train.shape[1])
    if config.standardize:
        mean = x_train.mean(0)
        std = x_train.std(0, unbiased=False).clamp(min=1e-6)
        x_train = (x_train - mean) / std
    val_raw = torch.as_tensor(np.asarray(val_features), dtype=torch.float32)
    val_standardized = (val_raw - mean) / std
    head = nn.Linear(x_train.shape[1], num_classes)
    # The head starts at zero, as logistic regression does. A random start (Kaiming-uniform,
    # logits of std ~0.6 on standardised features) is noise the few optimizer steps of a 1 % or
    # 10 % probe (one or two batches per epoch) cannot unlearn: measured on the quickstart, it left
    # test AUROC below 0.5. From zero, the first AdamW step already points along the gradient.
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    loss_fn = nn.BCEWithLogitsLoss() if problem_type == "multi_label_classification" else nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(x_train.shape[0] / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.max_epochs * steps_per_epoch, eta_min=config.min_learning_rate
    )

    y_val = _labels_tensor(val_labels, problem_type).numpy()
    if y_val.ndim == 1:
        y_val = np.eye(num_classes, dtype=np.int64)[y_val]
    best_auroc, best_epoch, best_state, stale = -math.inf, 0, None, 0
    history = []
    for epoch in range(1, config.max_epochs + 1):
        head.train()
        order = torch.randperm(x_train.shape[0], generator=generator)
        total = 0.0
        for start in range(0, x_train.shape[0], config.batch_size):
            index = order[start : start + config.batch_size]
            loss = loss_fn(head(x_train[index]), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(index)
        head.eval()
        # Only the selection metric per epoch (fast rank AUROC, equal to scikit-learn's); the full
        # metrics are computed once, for the best epoch.
        val_auroc = macro_auroc_fast(y_val, head_scores(head, val_standardized, problem_type))
        history.append({"epoch": epoch, "train_loss": total / x_train.shape[0], "val_macro_auroc": val_auroc})
        if val_auroc > best_auroc:
            best_auroc, best_epoch, stale = val_auroc, epoch, 0
            best_state = copy.deepcopy(head.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    head.load_state_dict(best_state)
    with torch.no_grad():  # fold the standardisation in: W (x - m) / s + b = (W / s) x + (b - W m / s)
        head.bias.sub_(head.weight @ (mean / std))
        head.weight.div_(std)
    head.eval()
    val_metrics = classification_metrics(
        val_labels, head_scores(head, val_raw, problem_type), class_names
    )
    return LinearProbeResult(head=head, best_epoch=best_epoch, val_metrics=val_metrics, history=history)
