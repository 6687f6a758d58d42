"""Data collators: dataset rows -> model inputs, through the model's feature extractor.

They run inside DataLoader workers (the pretraining loop) and inside the ``Trainer``, so the
preprocessing a checkpoint was trained with is applied exactly once, in one place.

Masked leads: a row's ``masked_leads`` (flat, clipped or absent leads the dataset zeroed, see
``ecg_hub.data.records``) reach the model as missing leads, ``lead_mask`` 0 and zeros, because the
rows go to the feature extractor whole and it honours that field. Code that selects columns
before collating must keep it: :data:`COLLATOR_COLUMNS`.

Random lead masking (MELP's augmentation, ``lead_mask_probability``): while training, each lead of
each record is zeroed independently with that probability after the feature extractor (so after its
normalisation, as MELP's dataset zeroes leads after its min-max) and reaches the model as missing
(``lead_mask`` 0). Off by default; ``ecg_hub.data.text_collators.EcgTextCollator`` passes it on
for ECG-report pairs (MELP's recipes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ecg_hub.data.labels import multi_hot
from ecg_hub.modeling.feature_extraction_ecg import EcgFeatureExtractor
from ecg_hub.modeling.leads import canonicalize_leads

#: Dataset columns :class:`EcgCollator` reads for the ECG inputs (label columns come on top).
COLLATOR_COLUMNS: tuple[str, ...] = ("signal", "sampling_rate", "leads", "record_id", "masked_leads")


class EcgCollator:
    """Collate dataset rows (``signal``, ``sampling_rate``, ``leads``, ...) into a batch of tensors.

    Args:
        feature_extractor: the model's ``EcgFeatureExtractor``.
        label_column: name of a multi-label column (``Sequence(ClassLabel)``: lists of positive class
            indices). When set, the batch gets ``labels`` (batch, num_classes) float multi-hot, the
            form ``BCEWithLogits`` and the ``Trainer`` expect.
        num_classes: number of classes of ``label_column`` (required with it).
        single_label: give ``labels`` as (batch,) int64 class indices instead (rows must have exactly
            one positive class).
        training: random crops (augmentation) instead of the extractor's deterministic crop.
        seed: seed of the random-crop generator (each DataLoader worker gets its own stream).
        token_column: name of a column of precomputed ECG2TOK token ids (``ecg-hub tokenize``: flat
            ``leads * patches`` lists, ``-100`` for none). When set, the batch gets ``labels``
            (batch, leads * patches) int64, the stage-B ``Ecg2TokForMaskedSignalModeling`` labels.
            The ids belong to the extractor's deterministic crop, so ``training=True`` is refused.
        warn_on_reduction: let the feature extractor warn when a batch crops a record or zero-fills
            most leads (:class:`~ecg_hub.modeling.feature_extraction_ecg.EcgInputReducedWarning`).
            Off by default: training and evaluation crop to the window the recipe chose, on purpose
            and batch after batch; ``ecg-hub embed`` / ``predict`` turn it on.
        lead_mask_probability: random lead masking (MELP: 0.5): with ``training=True``, each lead
            of each record is zeroed and marked missing (``lead_mask`` 0) independently with this
            probability, drawn from the same generator as the crops. ``0`` (default): none.

    Returns (``__call__``): ``{"input_values": (B, L, T) float32, "attention_mask": (B, T),
    "lead_mask": (B, L)}`` plus ``labels`` when requested (``label_column`` or ``token_column``).
    Leads a row lists in ``masked_leads`` have ``lead_mask`` 0 and zero ``input_values``.
    """

    def __init__(
        self,
        feature_extractor: EcgFeatureExtractor,
        label_column: str | None = None,
        num_classes: int | None = None,
        single_label: bool = False,
        training: bool = False,
        seed: int | None = None,
        token_column: str | None = None,
        warn_on_reduction: bool = False,
        lead_mask_probability: float = 0.0,
    ):
        if not 0.0 <= float(lead_mask_probability) < 1.0:
            raise ValueError(f"lead_mask_probability must be in [0, 1), got {lead_mask_probability}")
        if label_column is not None and num_classes is None and not single_label:
            raise ValueError(f"num_classes is required with label_column={label_column!r}")
        if token_column is not None and label_column is not None:
            raise ValueError(
                f"token_column={token_column!r} and label_column={label_column!r} both give `labels`; set one"
            )
        if token_column is not None and training:
            raise ValueError(
                f"token_column={token_column!r} with training=True: the precomputed token ids belong to the "
                "feature extractor's deterministic crop, and random training crops would not match them. Use "
                "training=False, or leave token_column unset and let the model label with its tokenizer"
            )
        self.feature_extractor = feature_extractor
        self.label_column = label_column
        self.num_classes = num_classes
        self.single_label = single_label
        self.training = training
        self.seed = seed
        self.token_column = token_column
        self.warn_on_reduction = warn_on_reduction
        self.lead_mask_probability = float(lead_mask_probability)
        self._rng: np.random.Generator | None = None
        self._rng_worker: int | None = None

    def _generator(self) -> np.random.Generator | None:
        if not self.training:
            return None
        # One independent stream per DataLoader worker: same seed -> same crops, run after run.
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        if self._rng is None or self._rng_worker != worker:
            base = self.seed if self.seed is not None else int(torch.initial_seed() % 2**32)
            self._rng = np.random.default_rng([base, worker + 1])
            self._rng_worker = worker
        return self._rng

    def __call__(
        self, rows: Sequence[dict[str, Any]], generator: np.random.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """``generator``: random crops for this batch only (the pretraining loop passes one seeded by
        the batch's position, so that a resumed run crops as an uninterrupted one); by default the
        collator's own per-worker stream."""
        generator = generator if generator is not None else self._generator()
        features = self.feature_extractor(
            list(rows),
            training=self.training,
            generator=generator,
            return_tensors="pt",
            warn_on_reduction=self.warn_on_reduction,
        )
        batch = dict(features)
        self._check_masked_leads(rows, batch)
        if self.training and self.lead_mask_probability > 0:
            self._mask_random_leads(batch, generator if generator is not None else np.random.default_rng())
        if self.label_column is not None:
            positives = [row[self.label_column] for row in rows]
            if self.single_label:
                for row, pos in zip(rows, positives):
                    if len(pos) != 1:
                        raise ValueError(
                            f"record {row.get('record_id', '?')}: single-label training needs exactly one "
                            f"{self.label_column!r} class, got {list(pos)}"
                        )
                batch["labels"] = torch.tensor([int(pos[0]) for pos in positives], dtype=torch.long)
            else:
                batch["labels"] = torch.from_numpy(multi_hot(rows, self.label_column, self.num_classes))
        if self.token_column is not None:
            batch["labels"] = self._token_labels(rows)
        return batch

    def _mask_random_leads(self, batch: dict[str, torch.Tensor], generator: np.random.Generator) -> None:
        """MELP's ``RandomLeadsMask``: zero each lead of each record with probability
        ``lead_mask_probability`` (independently, as the official dataset does: a record may lose
        every lead) and mark it missing in ``lead_mask``."""
        values = batch["input_values"]
        keep = generator.random(tuple(values.shape[:2])) >= self.lead_mask_probability
        keep = torch.from_numpy(keep)
        batch["input_values"] = values * keep[:, :, None].to(values.dtype)
        lead_mask = batch.get("lead_mask")
        batch["lead_mask"] = keep.long() if lead_mask is None else lead_mask * keep.to(lead_mask.dtype)

    def _check_masked_leads(self, rows: Sequence[dict[str, Any]], batch: dict[str, torch.Tensor]) -> None:
        """Raise if a lead a row masks reached the model as present: a feature extractor that ignores
        ``masked_leads`` (e.g. remote code published before masking) would feed it a dead electrode."""
        lead_mask = batch.get("lead_mask")
        targets = list(getattr(self.feature_extractor, "leads", ()))
        if lead_mask is None or not targets:
            return
        for i, row in enumerate(rows):
            masked = row.get("masked_leads") if isinstance(row, Mapping) else None
            if masked is None or not len(masked):
                continue
            names = canonicalize_leads([str(lead) for lead in masked])  # the extractor accepted them
            leaked = [lead for lead in names if lead in targets and int(lead_mask[i, targets.index(lead)])]
            if leaked:
                raise ValueError(
                    f"record {row.get('record_id', '?')}: masked lead(s) {leaked} came out of "
                    f"{type(self.feature_extractor).__name__} with lead_mask 1; expected 0 (missing). The feature "
                    "extractor must honour the rows' masked_leads (ecg_hub.modeling.feature_extraction_ecg does)"
                )

    def _token_labels(self, rows: Sequence[dict[str, Any]]) -> torch.Tensor:
        """(batch, leads * patches) int64 of the rows' ``token_column`` (shorter rows padded with -100)."""
        ids = []
        for row in rows:
            if self.token_column not in row:
                raise ValueError(
                    f"record {row.get('record_id', '?')}: no {self.token_column!r} column "
                    "(write it with `ecg-hub tokenize`)"
                )
            ids.append(np.asarray(row[self.token_column], dtype=np.int64).reshape(-1))
        width = max(len(i) for i in ids)
        labels = np.full((len(ids), width), -100, dtype=np.int64)
        for k, row_ids in enumerate(ids):
            labels[k, : len(row_ids)] = row_ids
        return torch.from_numpy(labels)

