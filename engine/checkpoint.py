"""Checkpoints: plain dicts of tensors and numbers, written atomically, loaded with weights_only."""
import os

import torch

from core.errors import UserError

FORMAT = "lt-sam/1"


def save_checkpoint(path: str, state: dict) -> None:
    """Write to a temporary file, then rename: a crash mid-write never leaves a broken last.pt."""
    tmp = f"{path}.tmp"
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load checkpoint {path}: the file is corrupt or not a PyTorch checkpoint "
                        f"({first[:160]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not an lt-sam checkpoint (no '{FORMAT}' format tag)")
    return state
