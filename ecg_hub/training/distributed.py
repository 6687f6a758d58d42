"""Ending a ``torch.distributed`` process group so that every process exits.

The pretraining loop tears its run down itself (``ecg_hub.training.pretrain._tear_down``, which has
the whole story of the exit deadlock it avoids). Entry points that let a library own the DDP wrapper
(``ecg-hub finetune`` through the ``Trainer``, ``ecg-hub embed`` / ``predict``) call
:func:`release_process_group` once they have dropped their references to it.
"""

from __future__ import annotations

import gc

__all__ = ["release_process_group"]


def release_process_group(wait: bool = True) -> None:
    """Destroy the default process group if one exists. With ``wait`` (after a successful run): a
    barrier first, so every collective of every process has completed, then ``gc.collect()`` so a
    dropped DDP wrapper is freed while the group still exists, then the destroy. Without ``wait``
    (after an error): destroy at once; the other processes fail alike or the launcher stops them."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        dist.barrier()
        gc.collect()
    dist.destroy_process_group()
