"""What stops a run cleanly: non-finite values, write failures, and the line that says how to go on.

A run stops with one line, never a traceback, and says how to continue only when there is
something to continue from: the resume command is offered only when `last.pt` exists, and a
checkpoint is called "good" only after its weights and optimizer state were checked finite
(a finite loss does not prove it: the last update of an epoch can still overflow).
"""
import contextlib
import math
import os
from typing import Iterable, Optional, Tuple

import torch

from core.errors import UserError


class RunStopped(UserError):
    """A fault during a run (a write failed, the loader stalled); the CLI adds how to continue."""


class NonFiniteLoss(UserError):
    """The loss, the weights or the metrics of a run became NaN or infinite: the fact (where, what);
    `member`: which of the seeds trained together, None for all of them (or one run)."""

    def __init__(self, message: str = "", member: Optional[int] = None):
        super().__init__(message)
        self.member = member

    @staticmethod
    @contextlib.contextmanager
    def of_member(k: int):
        """Inside: a NonFiniteLoss without a member is member k's."""
        try:
            yield
        except NonFiniteLoss as e:
            if e.member is None:
                e.member = k
            raise


def resume_hint(out_dirs) -> str:
    """How to go on from a run folder (or the folders of seeds trained together): the resume
    command when every one holds a checkpoint, else start again."""
    dirs = [out_dirs] if isinstance(out_dirs, str) else list(out_dirs)
    if dirs and all(d and os.path.isfile(os.path.join(d, "last.pt")) for d in dirs):
        kept = "the last checkpoint is kept" if len(dirs) == 1 else "the last checkpoints are kept"
        return f"{kept}, continue with: python train.py --resume {' '.join(dirs)}"
    return "no checkpoint was written yet; start the run again"


def _tensors(obj, prefix: str) -> Iterable[Tuple[str, torch.Tensor]]:
    """(name, floating tensor) pairs inside nested dicts and lists (a state dict)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def first_non_finite(state) -> Optional[str]:
    """The name of the first tensor in `state` holding NaN or inf, or None (one device sync)."""
    named = list(_tensors(state, ""))
    if not named:
        return None
    flags = torch.stack([torch.isfinite(t).all().to("cpu", non_blocking=True) for _, t in named])
    bad = (~flags).nonzero()
    return named[int(bad[0])][0] if len(bad) else None


def check_finite_state(model, optimizer, epoch: int) -> None:
    """Refuse to go on (and to save) when the weights, BN statistics or momentum are not finite."""
    bad = first_non_finite({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    if bad is not None:
        raise NonFiniteLoss(f"non-finite values in {bad} after epoch {epoch} (the loss was still finite); not saved")


def check_finite_report(report: dict) -> None:
    """A run never ends 'successfully' with NaN metrics."""
    for key in ("top1", "accuracy", "head", "medium", "tail", "ece"):
        value = report.get(key)
        if value is not None and not math.isfinite(value):
            raise NonFiniteLoss(f"the evaluation gives {key} = {value}: the model's outputs are not finite")


def likely_cause(cfg, epoch: int, schedule) -> str:
    """What in the config most likely made epoch `epoch` diverge, as advice."""
    causes = []
    drw_epoch = cfg.loss.drw_epoch
    if drw_epoch is not None and epoch >= drw_epoch:
        from losses.drw import class_balanced_weights
        weights = class_balanced_weights(schedule.class_counts, cfg.loss.drw_beta)
        causes.append(f"DRW class weights are on since epoch {drw_epoch} (loss.drw_epoch={drw_epoch}, "
                      f"loss.drw_beta={cfg.loss.drw_beta:g}; largest weight {float(weights.max()):.3g}): "
                      "a later loss.drw_epoch or a lower optim.lr may help")
    rho, before = schedule.rho(epoch), schedule.rho(epoch - 1) if epoch > 0 else None
    if rho is not None and before is not None and rho > before:
        causes.append(f"optim.rho rose to {rho:g} at this epoch (optim.rho_milestones)")
    if cfg.train.amp == "fp16":
        causes.append("train.amp=fp16 overflows easily: try train.amp=bf16 or none")
    if not causes:
        causes.append(f"lower optim.lr (now {cfg.optim.lr:g})" + (" or optim.rho" if rho else ""))
    return "; ".join(causes)


def stop_note(ckpt_path: str, epoch: int, cfg, schedule) -> str:
    """What a non-finite stop says: which checkpoint is good (if any) and the likely cause."""
    kept = (f"the last good checkpoint is {ckpt_path} (epoch {epoch})" if os.path.isfile(ckpt_path)
            else "no checkpoint yet")
    return f"{kept}; {likely_cause(cfg, epoch, schedule)}"
