"""EMA teachers: a frozen copy of a student network that follows it by exponential moving average.

ECG-JEPA's target encoder and ECG2TOK's self-distillation teacher are both one. A model that has
one mixes in `EmaTeacherMixin` and says which submodules pair up (``_ema_pairs``, attribute names
``(student, teacher)``); the mixin then gives it:

* ``update_ema_teacher(momentum)``: ``teacher = m * teacher + (1 - m) * student`` for every pair
  (``m = 0`` copies the student exactly, as the official ``deepcopy`` at start);
* ``ema_momentum(step, total_steps)``: linear from ``config.ema_momentum_start`` to
  ``config.ema_momentum_end`` over the run (I-JEPA / ECG-JEPA; DINO uses a cosine, ``ema_schedule="cosine"``);
* ``post_optimizer_step(step, total_steps)``: the pretraining loop's hook, one EMA update per
  optimizer step, returning ``{"ema_momentum": m}`` for the logs;
* ``from_pretrained`` that, when a checkpoint has no teacher weights (an encoder-only or converted
  checkpoint), starts the teacher as a copy of the loaded student instead of random weights.

The teacher's parameters have ``requires_grad=False``; it is a registered submodule, so
checkpoints and ``accelerator.save_state`` include it.

Imports torch only (Hub remote-code bundle).
"""

import math

import torch
from torch import nn


def ema_momentum_schedule(step: int, total_steps: int, start: float, end: float, schedule: str = "linear") -> float:
    """Momentum after optimizer step ``step`` (0-based) of ``total_steps``: from ``start`` at step 0 to
    ``end`` at ``total_steps``, ``"linear"`` (ECG-JEPA) or ``"cosine"`` (DINO / iBOT)."""
    if total_steps <= 0:
        raise ValueError(f"EMA schedule: total_steps must be positive, got {total_steps}")
    progress = min(max(step, 0), total_steps) / total_steps
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2
    raise ValueError(f"EMA schedule must be 'linear' or 'cosine', got {schedule!r}")


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place over matching parameters: ``teacher = momentum * teacher + (1 - momentum) * student``;
    ``momentum=0`` copies the student exactly. Buffers are not touched."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    teacher_params, student_params = list(teacher.parameters()), list(student.parameters())
    if len(teacher_params) != len(student_params):
        raise ValueError(
            f"EMA update: teacher has {len(teacher_params)} parameters but student {len(student_params)}"
        )
    for student_param, teacher_param in zip(student_params, teacher_params):
        if momentum == 0.0:
            teacher_param.copy_(student_param)
        else:
            teacher_param.mul_(momentum).add_(student_param.detach(), alpha=1.0 - momentum)


class EmaTeacherMixin:
    """For a ``PreTrainedModel`` with EMA teacher submodules (see the module docstring).

    Subclasses set ``_ema_pairs = (("student_attr", "teacher_attr"), ...)``, build the teachers in
    ``__init__``, then call ``self.init_ema_teacher()`` after ``post_init()``. The config provides
    ``ema_momentum_start``, ``ema_momentum_end`` and optionally ``ema_schedule``.
    """

    _ema_pairs: tuple[tuple[str, str], ...] = ()

    def _ema_modules(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(getattr(self, student), getattr(self, teacher)) for student, teacher in self._ema_pairs]

    def init_ema_teacher(self) -> None:
        """Freeze the teachers and make them exact copies of their students."""
        for _, teacher in self._ema_modules():
            teacher.requires_grad_(False)
        self.update_ema_teacher(0.0)

    @torch.no_grad()
    def update_ema_teacher(self, momentum: float) -> None:
        """One EMA step of every teacher towards its student (``momentum=0``: exact copy)."""
        for student, teacher in self._ema_modules():
            ema_update_(teacher, student, momentum)

    def ema_momentum(self, step: int, total_steps: int) -> float:
        """Momentum after optimizer step ``step`` (0-based) of ``total_steps`` (`ema_momentum_schedule`)."""
        config = self.config
        return ema_momentum_schedule(
            step,
            total_steps,
            config.ema_momentum_start,
            config.ema_momentum_end,
            getattr(config, "ema_schedule", "linear"),
        )

    def post_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Called by the training loop after every optimizer step: one EMA update of the teachers with
        the scheduled momentum. Returns ``{"ema_momentum": m}`` for logging."""
        momentum = self.ema_momentum(step, total_steps)
        self.update_ema_teacher(momentum)
        return {"ema_momentum": momentum}

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As ``PreTrainedModel.from_pretrained``; when the checkpoint has no teacher weights (e.g. an
        encoder-only or converted checkpoint), each teacher starts as a copy of its loaded student."""
        return_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = info["missing_keys"]
        for student, teacher in model._ema_modules():
            prefix = next(name for name, module in model.named_children() if module is teacher) + "."
            if any(key.startswith(prefix) for key in missing):
                ema_update_(teacher, student, 0.0)
        return (model, info) if return_info else model


__all__ = ["EmaTeacherMixin", "ema_momentum_schedule", "ema_update_"]
