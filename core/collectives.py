"""Collective operations on an explicit process group, no-ops outside torch.distributed.

These take a process group (None: the default group), never the engine's run information, so
that the optimizers can call them on DDP's own group and stay usable in anyone's loop.
"""
from typing import List

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(group=None) -> int:
    return dist.get_world_size(group) if is_initialized() else 1


def all_reduce_sum_(tensors: List[torch.Tensor], group=None, bucket_bytes: int = 32 << 20) -> None:
    """Sum `tensors` over the ranks of `group`, in place, with as few collectives as possible.

    Tensors of one dtype and device are flattened into buckets of about `bucket_bytes` and reduced
    together (what DDP's reducer does internally), instead of one collective per parameter.
    """
    if world_size(group) == 1:
        return
    by_kind: dict = {}
    for t in tensors:
        by_kind.setdefault((t.dtype, t.device), []).append(t)
    for same_kind in by_kind.values():
        bucket, size = [], 0
        for t in same_kind + [None]:
            if t is not None:
                bucket.append(t)
                size += t.numel() * t.element_size()
            if bucket and (t is None or size >= bucket_bytes):
                _reduce_bucket(bucket, group)
                bucket, size = [], 0


def _reduce_bucket(bucket: List[torch.Tensor], group) -> None:
    flat = torch.cat([b.reshape(-1) for b in bucket])
    dist.all_reduce(flat, group=group)
    offset = 0
    for b in bucket:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def gather_variable(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate a (N_r, ...) tensor from every rank of `group` in rank order; N_r may differ."""
    world = world_size(group)
    if world == 1:
        return tensor
    n = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    most = int(max(s.item() for s in sizes))
    padded = torch.zeros((most,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    out = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(out, padded, group=group)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)])


def broadcast_buffers(module: torch.nn.Module, src: int = 0, group=None) -> None:
    """Make every rank hold rank `src`'s buffers (BN running statistics), e.g. before evaluation."""
    if world_size(group) == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src, group=group)
