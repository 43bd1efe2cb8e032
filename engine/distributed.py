"""Everything that knows about ranks: process-group setup, main-process checks, reductions.

Nothing else in the project reads RANK / WORLD_SIZE / LOCAL_RANK. Single-process runs get a
`DistInfo` with world_size 1 and every helper here degrades to a no-op.
"""
import datetime
import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            from engine.errors import UserError
            raise UserError("train.device is 'cuda' but no CUDA GPU is visible; use train.device=cpu or auto")
        return torch.device("cuda", local_rank) if requested == "cuda" else torch.device(requested)
    return torch.device(requested)


def init_distributed(requested_device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group when launched by torchrun (nccl on GPU, gloo on CPU); else one process."""
    if not launched_by_torchrun():
        return DistInfo(device=pick_device(requested_device))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend, store=_attempt_store(rank, world, timeout), rank=rank, world_size=world,
                                timeout=timeout)
    return DistInfo(rank, world, local_rank, device, backend)


def _attempt_store(rank: int, world: int, timeout) -> "dist.Store":
    """The rendezvous store, with keys prefixed by torchrun's restart count.

    After `--max-restarts` restarts a worker group, the agent's store still holds the previous
    attempt's addresses under the same keys, and the new ranks read them (seen with PyTorch 2.15:
    gloo then dials a dead peer and the restart fails). A prefix per attempt keeps them apart.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent_serves = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world, is_master=(rank == 0 and not agent_serves), timeout=timeout)
    return dist.PrefixStore(f"lt-sam/attempt_{restart_count()}", store)


def is_communication_failure(error: BaseException) -> bool:
    """A collective failed because a peer died or the network broke (gloo and NCCL say so in text)."""
    markers = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe", "timed out")
    return isinstance(error, getattr(dist, "DistError", ())) or any(m in str(error) for m in markers)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum_(tensors: List[torch.Tensor], group=None, bucket_bytes: int = 32 << 20) -> None:
    """Sum `tensors` over all ranks, in place, as few collectives as possible.

    Tensors of one dtype are flattened into buckets of about `bucket_bytes` and reduced together
    (what DDP's reducer does internally), instead of one collective per parameter.
    """
    if not is_initialized() or dist.get_world_size(group) == 1:
        return
    by_dtype: dict = {}
    for t in tensors:
        by_dtype.setdefault((t.dtype, t.device), []).append(t)
    for group_tensors in by_dtype.values():
        bucket, size = [], 0
        for t in group_tensors + [None]:
            if t is not None:
                bucket.append(t)
                size += t.numel() * t.element_size()
            if bucket and (t is None or size >= bucket_bytes):
                flat = torch.cat([b.reshape(-1) for b in bucket])
                dist.all_reduce(flat, group=group)
                offset = 0
                for b in bucket:
                    b.copy_(flat[offset:offset + b.numel()].view_as(b))
                    offset += b.numel()
                bucket, size = [], 0


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Make every rank hold rank `src`'s buffers (BN running statistics) before evaluation."""
    if not is_initialized():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src)


def gather_variable(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate a (N_r, ...) tensor from every rank in rank order; N_r may differ per rank."""
    if not info.distributed:
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(info.world_size)]
    dist.all_gather(sizes, n)
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros((most,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    out = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)])
