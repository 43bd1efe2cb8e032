"""The one GPU detection of the project: which torch device a setting names, checked against the
machine (the trainer's train.device, the analysis and benchmark tools' --device, CLIP's text tower)."""
import torch

from core.errors import UserError


def pick_device(requested: str, local_rank: int = 0, option: str = "train.device") -> torch.device:
    """auto -> this rank's CUDA GPU when one is visible, else
    the CPU; an explicit device is checked against what the machine has. `option` names the setting
    in the error line (train.device, --device)."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{option} is {requested!r} but no CUDA GPU is visible; use {option} cpu or auto")
        device = torch.device("cuda", local_rank) if requested == "cuda" else _device(requested, option)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"{option} {requested}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
        return device
    if requested == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{option} is 'mps' but this machine has no Apple GPU; use {option} cpu or auto")
    return _device(requested, option)


def _device(name: str, option: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError:
            raise UserError(f"{option} {name!r}: unknown device (not a device torch knows); use auto, cpu, cuda or cuda:N") from None
