"""DataLoaders for one process or one rank: training shards by DistributedSampler, evaluation
by an unpadded shard so that the gathered predictions cover every test image exactly once.

A loader never hangs a run silently: with workers, a batch that takes longer than
`data.loader_timeout_seconds` stops the run with one line and the resume command (a stalled
network file system, a stuck worker), and so does a worker that dies (out of memory). Workers
never print tracebacks of their own when the process group is stopped: they ignore Ctrl-C (the
main process stops and shuts them down) and leave quietly on SIGTERM.

In-memory sets (CIFAR-LT, synthetic) can instead live on the training device
(`data.loader: device`, the default on CUDA): data/device_loader.py, the same order and the same
iterator, with crop and flip done on the device."""
import os
import signal
import sys
import threading

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from core.errors import ConfigError, brief
from data.arrays import ArrayDataset
from data.device_loader import DeviceLoader
from engine.distributed import DistInfo
from engine.guards import RunStopped

class ShardSampler(Sampler):
    """Indices rank, rank + world, ... : every index on exactly one rank, no padding."""

    def __init__(self, n: int, rank: int, world_size: int):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _leave_quietly(signum, frame) -> None:
    # Exit status 0: PyTorch's SIGCHLD handler in the main process raises for a worker killed by
    # a signal, which would race with the main process's own SIGTERM line.
    os._exit(0)


def quiet_worker(worker_id: int) -> None:
    """worker_init_fn: a worker forked from the main process inherits its SIGTERM handler, which
    raises (engine/cli.py) and printed a traceback per worker; replace it (module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _leave_quietly)
    threading.excepthook = _quiet_lost_connection
    sys.excepthook = _quiet_lost_connection_sys
    from engine.locks import close_inherited_locks
    close_inherited_locks()


LOST_CONNECTION = (BrokenPipeError, ConnectionResetError, EOFError)


def _quiet_lost_connection(args) -> None:
    """A worker's helper threads (multiprocessing's resource sharer, which hands batch tensors'
    file descriptors to the main process) print a BrokenPipeError traceback when the main
    process stopped first (Ctrl-C): expected then, and not the worker's to report."""
    if issubclass(args.exc_type, LOST_CONNECTION):
        return
    threading.__excepthook__(args)


def _quiet_lost_connection_sys(exc_type, exc, tb) -> None:
    """The same for sys.excepthook: the resource sharer's thread catches its own errors and
    reports them through sys.excepthook, not threading.excepthook."""
    if issubclass(exc_type, LOST_CONNECTION):
        return
    sys.__excepthook__(exc_type, exc, tb)


class GuardedLoader:
    """A DataLoader that reports a stalled or dead worker as one line (RunStopped), and finishes
    each batch with `stage(batch, device)` when given one; iterates like the loader it wraps."""

    def __init__(self, loader: DataLoader, stage=None, device: torch.device = None):
        self.loader, self.stage, self.device = loader, stage, device

    @property
    def sampler(self):
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for batch in self.loader:
                yield batch if self.stage is None else self.stage(batch, self.device)
        except RuntimeError as e:
            if "DataLoader timed out" in str(e):
                raise RunStopped(f"no batch from the data loader in {self.loader.timeout:g} s "
                                 "(data.loader_timeout_seconds): a stalled read (network file system?) or a stuck "
                                 "worker") from None
            if "DataLoader worker" in str(e):
                raise RunStopped(f"a data loader worker stopped ({brief(e, 120)}); out of memory? lower "
                                 "data.num_workers") from None
            raise


class DeviceStageLoader(GuardedLoader):
    """A loader whose batches are finished on the training device by the dataset's
    `device_stage` (decode + augment on the GPU)."""


def auto_workers(requested: int, info: DistInfo) -> int:
    """-1: the CPUs of this node shared among its processes, one left for the main loop, at most 8."""
    if requested >= 0:
        return requested
    local_procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, (os.cpu_count() or 1) // local_procs - 1))


def per_process_batch(global_batch: int, info: DistInfo, key: str) -> int:
    if global_batch % info.world_size:
        raise ConfigError(key, f"the global batch {global_batch} does not split evenly over "
                               f"{info.world_size} processes; choose a multiple of {info.world_size}")
    return global_batch // info.world_size


def _make(dataset, batch: int, sampler, info: DistInfo, data_cfg, drop_last: bool = False):
    workers = auto_workers(data_cfg.num_workers, info)
    extra = dict(persistent_workers=data_cfg.persistent_workers, prefetch_factor=data_cfg.prefetch_factor,
                 timeout=data_cfg.loader_timeout_seconds, worker_init_fn=quiet_worker) if workers > 0 else {}
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=drop_last,
                        pin_memory=data_cfg.pin_memory and info.device.type == "cuda",
                        collate_fn=getattr(dataset, "collate", None), **extra)
    stage = getattr(dataset, "device_stage", None)
    return DeviceStageLoader(loader, stage, info.device) if stage is not None else GuardedLoader(loader)


def loader_kind(data_cfg, device: torch.device) -> str:
    """"device" or "workers", as the dataset's options answer for this device (data/options.py)."""
    return data_cfg.loader_kind(device.type)


def _on_device(dataset: ArrayDataset, batch: int, info: DistInfo, seed: int, shuffle: bool, drop_last: bool):
    return DeviceLoader(dataset.images, dataset.labels, dataset.transform, batch, info.device, rank=info.rank,
                        world_size=info.world_size, seed=seed, shuffle=shuffle, drop_last=drop_last)


def train_loader(dataset, global_batch: int, info: DistInfo, seed: int, data_cfg, drop_last: bool):
    """Shuffled by (seed, epoch) through DistributedSampler (also with one process), so a resumed
    run visits the same batches; call `loader.sampler.set_epoch(e)` each epoch."""
    batch = per_process_batch(global_batch, info, "train.batch_size")
    if loader_kind(data_cfg, info.device) == "device":
        return _on_device(dataset, batch, info, seed, shuffle=True, drop_last=drop_last)
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=seed, drop_last=drop_last)
    loader = _make(dataset, batch, sampler, info, data_cfg,
                   drop_last)
    if len(loader) == 0:
        raise ConfigError("train.batch_size", f"{global_batch} with train.drop_last=true leaves no full batch of "
                          f"the {len(dataset)} training images; lower train.batch_size or set train.drop_last=false")
    return loader


def eval_loader(dataset, global_batch: int, info: DistInfo, data_cfg):
    batch = max(1, global_batch // info.world_size)
    if loader_kind(data_cfg, info.device) == "device":
        return _on_device(dataset, batch, info, seed=0, shuffle=False, drop_last=False)
    return _make(dataset, batch, ShardSampler(len(dataset), info.rank, info.world_size), info, data_cfg)
