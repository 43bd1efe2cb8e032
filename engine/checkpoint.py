"""Checkpoints: plain dicts of tensors and numbers, written atomically, loaded with weights_only.

`weights_only=True` makes torch.load refuse any pickled object other than tensors, numbers,
strings and containers, so a crafted last.pt cannot run code when a run is resumed or evaluated.
"""
import os
from typing import IO, Sequence

import torch

from core.errors import UserError, brief
from engine.report import atomic_write

FORMAT = "lt-sam/1"
TRAINING_KEYS = ("epoch", "elapsed", "model", "optimizer", "class_counts")   # what --resume needs
KEY_TYPES = {"epoch": int, "elapsed": (int, float), "model": dict, "optimizer": dict, "class_counts": list}


def save_checkpoint(path: str, state: dict) -> None:
    """Write through a temporary file of this writer, fsync, rename, fsync the folder: a crash or
    a full disk mid-write never leaves a broken last.pt (the previous one stays)."""
    atomic_write(path, lambda f: _save({"format": FORMAT, **state}, f))


class _WriteFailures:
    """The file torch.save writes to, keeping the first OSError of a write. torch's zip writer
    lets the OSError (no space left, file too large) pass, then fails closing the archive with
    RuntimeError "unexpected pos" and a 37-line traceback; the OSError is the fact to report."""

    def __init__(self, f: IO[bytes]):
        self.file, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name: str):   # flush, seek, tell: the file's own
        return getattr(self.file, name)


def _save(obj: dict, f: IO[bytes]) -> None:
    """torch.save(obj, f), a failed write raised as its OSError (atomic_write turns it into one
    line and keeps the last checkpoint). A file-size limit (ulimit -f) arrives as EFBIG, not as the
    signal SIGXFSZ: Python ignores that signal from start-up."""
    tracked = _WriteFailures(f)
    try:
        torch.save(obj, tracked)
    except RuntimeError:
        if tracked.error is None:
            raise
        raise tracked.error from None


def load_checkpoint(path: str, require: Sequence[str] = ("model",)) -> dict:
    """The checkpoint's dict; `require` names the entries the caller reads."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot load checkpoint {path}: the file is corrupt, not a PyTorch checkpoint, or "
                        f"holds objects other than tensors and numbers ({brief(e, 120)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an lt-sam checkpoint (no '{FORMAT}' format tag)")
    missing = [k for k in require if k not in state]
    if missing:
        raise UserError(f"{path} lacks {', '.join(repr(k) for k in missing)}: not a complete lt-sam "
                        "training checkpoint")
    wrong = [k for k in require if k in KEY_TYPES and not isinstance(state[k], KEY_TYPES[k])]
    if wrong:
        raise UserError(f"{path}: '{wrong[0]}' holds a {type(state[wrong[0]]).__name__}; the file is not an "
                        "lt-sam training checkpoint")
    return state


def check_class_counts(state: dict, class_counts, path: str) -> None:
    """The checkpoint's training counts must be this config's: Head / Medium / Tail and the
    class-dependent losses and optimizers are functions of them."""
    if state.get("class_counts") != list(class_counts):
        raise UserError(f"{path} was trained on other class counts than this config's data "
                        f"({len(state.get('class_counts') or [])} classes there, {len(class_counts)} here, or other "
                        "counts); check data.name / data.imb_factor / the split lists")
