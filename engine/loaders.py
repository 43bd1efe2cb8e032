"""DataLoaders for one process or one rank: training shards by DistributedSampler, evaluation
by an unpadded shard so that the gathered predictions cover every test image exactly once."""
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from engine.distributed import DistInfo
from engine.errors import ConfigError


class ShardSampler(Sampler):
    """Indices rank, rank + world, ... : every index on exactly one rank, no padding."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def auto_workers(requested: int, info: DistInfo) -> int:
    if requested >= 0:
        return requested
    local_procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, (os.cpu_count() or 1) // local_procs - 1))


def per_process_batch(global_batch: int, info: DistInfo, key: str) -> int:
    if global_batch % info.world_size:
        raise ConfigError(key, f"the global batch {global_batch} does not split evenly over "
                               f"{info.world_size} processes; choose a multiple of {info.world_size}")
    return global_batch // info.world_size


def train_loader(dataset, global_batch: int, info: DistInfo, seed: int, workers: int, drop_last: bool):
    """Shuffled by (seed, epoch) through DistributedSampler (also with one process), so a resumed
    run visits the same batches; call `loader.sampler.set_epoch(e)` each epoch."""
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=seed, drop_last=drop_last)
    return DataLoader(dataset, batch_size=per_process_batch(global_batch, info, "train.batch_size"),
                      sampler=sampler, num_workers=workers, pin_memory=info.device.type == "cuda",
                      drop_last=drop_last)


def eval_loader(dataset, global_batch: int, info: DistInfo, workers: int):
    return DataLoader(dataset, batch_size=max(1, global_batch // info.world_size),
                      sampler=ShardSampler(len(dataset), info.rank, info.world_size),
                      num_workers=workers, pin_memory=info.device.type == "cuda")
