"""A CIFAR loader that keeps the whole set on the training device (DESIGN.md section 7).

The uint8 images live on the device once (padded by 4 pixels when augmenting); a batch is one
gather: random crop and horizontal flip are index arithmetic on the padded tensor, then the same
normalisation as `data.transforms.CifarTest`. No worker processes, no host-to-device copy per
batch. It iterates like a DataLoader: `(images, targets)` on the device, `len(loader)` batches,
and `loader.sampler.set_epoch(e)` before each epoch.

Same samples, same order: the training order is DistributedSampler's (torch.randperm with a
generator seeded by seed + epoch, padded to a multiple of the world size unless drop_last, then
indices rank, rank + world, ...), so with augmentation off the batches equal the DataLoader
path's. Same augmentation distribution, not the same draws: the crop offsets (uniform in
0..2*padding per axis) and flips (probability 1/2) of every training index are drawn once per
epoch from a CPU generator keyed on (seed, epoch), so an image's augmentation depends only on
(seed, epoch, index), never on the rank, the world size or the device; the worker path draws them
from numpy per sample (data/arrays.py), which costs tens of microseconds per image on the host.
"""
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from data.transforms import CifarTest, CifarTrain

# Distinct from the DistributedSampler stream (seed + epoch), so that order and augmentation
# are independent draws.
AUGMENT_STREAM = 0x5EED_A06


class EpochSampler:
    """The indices of one rank in one epoch, exactly as torch's DistributedSampler lists them
    (shuffled) or as the evaluation ShardSampler does (unshuffled, unpadded)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.n, self.rank, self.world_size, self.seed = n, rank, world_size, seed
        self.shuffle, self.drop_last, self.epoch = shuffle, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> List[int]:
        if not self.shuffle:   # evaluation: every index on exactly one rank, no padding
            return list(range(self.rank, self.n, self.world_size))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.drop_last:
            total = (self.n // self.world_size) * self.world_size
            order = order[:total]
        else:
            total = -(-self.n // self.world_size) * self.world_size
            pad = total - self.n
            order += (order * (pad // max(self.n, 1) + 1))[:pad]   # repeat from the start, as torch does
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        if not self.shuffle:
            return len(range(self.rank, self.n, self.world_size))
        if self.drop_last:
            return self.n // self.world_size
        return -(-self.n // self.world_size)


def draw_augmentation(n: int, padding: int, seed: int, epoch: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top (n,), left (n,), flip (n,) bool) for every index of the set in this epoch: offsets
    uniform in 0..2*padding, flips with probability 1/2 (CifarTrain's distribution)."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence([AUGMENT_STREAM, seed, epoch]).generate_state(1, np.uint64)[0] >> 1))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    return offsets[0], offsets[1], flip


def crop_flip(padded: torch.Tensor, idx: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
              flip: torch.Tensor, size: int) -> torch.Tensor:
    """One gather: padded (N, C, H + 2p, W + 2p) -> (b, C, size, size) crops of images `idx` at
    (top, left), mirrored left-right where `flip`. All index tensors (b,) on padded's device."""
    ar = torch.arange(size, device=padded.device)
    rows = top[:, None] + ar                                      # (b, size)
    cols = left[:, None] + torch.where(flip[:, None], size - 1 - ar, ar)   # (b, size)
    chans = torch.arange(padded.shape[1], device=padded.device)
    return padded[idx[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """Batches of an in-memory uint8 image set, kept on `device`, augmented there.

    Args:
        images: (N, H, W, 3) uint8 (the ArrayDataset layout); labels: (N,) int.
        transform: the dataset's CifarTrain (crop + flip + normalise) or CifarTest (normalise).
        batch_size: per process; rank / world_size / seed / shuffle / drop_last: as DistributedSampler.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform, batch_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        if not isinstance(transform, (CifarTrain, CifarTest)):
            raise ValueError(f"the device loader applies CifarTrain or CifarTest, not {type(transform).__name__}")
        norm = transform.normalize if isinstance(transform, CifarTrain) else transform
        self.padding: Optional[int] = transform.padding if isinstance(transform, CifarTrain) else None
        self.size = images.shape[1]
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)   # (N, 3, H, W) uint8
        if self.padding:
            x = torch.nn.functional.pad(x, (self.padding,) * 4)                    # zeros, as CifarTrain
        self.images = x.contiguous().to(device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        self.mean, self.std = norm.mean.to(device), norm.std.to(device)           # (3, 1, 1)
        self.batch_size, self.drop_last, self.seed, self.device = batch_size, drop_last, seed, device
        self.sampler = EpochSampler(len(labels), rank, world_size, seed, shuffle, drop_last)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(self.sampler.indices(), dtype=torch.int64).to(self.device)
        aug = None
        if self.padding:
            aug = [t.to(self.device) for t in draw_augmentation(len(self.labels), self.padding, self.seed,
                                                                  self.sampler.epoch)]
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield self.normalize(self.gather(idx, aug)), self.labels[idx]

    def gather(self, idx: torch.Tensor, aug) -> torch.Tensor:
        if aug is None:
            return self.images[idx]
        top, left, flip = (t[idx] for t in aug)
        return crop_flip(self.images, idx, top, left, flip, self.size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The arithmetic of CifarTest, in its order, so both paths give the same floats."""
        return (x.float().div_(255.0) - self.mean) / self.std
