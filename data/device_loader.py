"""A loader that keeps an in-memory image set (CIFAR-LT, synthetic) on the training device.

The uint8 images live on the device once (padded by 4 pixels for the CIFAR crop); a batch is a
few gathers: the CIFAR crop and flip are index arithmetic on the padded tensor, CLIP's
random-resized crop to 224 pixels is a bilinear resize done as four gathers and a blend (the
224-pixel batch exists only on the device: the worker path builds, copies and pins 150,528
floats per image on the host), then the normalisation of the transform it replaces. No worker
processes, no host-to-device copy per batch. It iterates like a DataLoader: `(images, targets)`
on the device, `len(loader)` batches, and `loader.sampler.set_epoch(e)` before each epoch.

Same samples, same order: the training order is DistributedSampler's (torch.randperm with a
generator seeded by seed + epoch, padded to a multiple of the world size unless drop_last, then
indices rank, rank + world, ...), so with augmentation off the batches equal the DataLoader
path's. Same augmentation distribution, not the same draws: the crop offsets (uniform in
0..2*padding per axis) and flips (probability 1/2) of every training index are drawn once per
epoch from a CPU generator keyed on (seed, epoch), so an image's augmentation depends only on
(seed, epoch, index), never on the rank, the world size or the device; the worker path draws them
from numpy per sample (data/arrays.py), which costs tens of microseconds per image on the host.

CLIP preprocessing (ClipTrain / ClipTest) keeps the worker path's draws exactly: each index's
crop box and flip come from ClipTrain.draw with the generator the dataset would use, keyed on
(seed, epoch, index), drawn for the whole set once per epoch (about 30 microseconds an image on
the host, once). The resize is the worker path's bilinear one; the worker path rounds the
resized image to uint8 before normalising, and so does this one, so the two agree to one grey
level (their interpolation weights differ in the last bits).
"""
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch

from data.transforms import CLIP_MEAN, CLIP_STD, CifarTest, CifarTrain, ClipTest, ClipTrain

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
    g.manual_seed(int(np.random.SeedSequence([AUGMENT_STREAM, seed, epoch]).generate_state(1, np.uint64)[0]) >> 1)
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
        transform: the dataset's transform, which this loader replaces: CifarTrain (crop + flip +
            normalise), CifarTest (normalise), ClipTrain (random-resized crop + flip) or ClipTest.
        batch_size: per process; rank / world_size / seed / shuffle / drop_last: as DistributedSampler.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform, batch_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True, drop_last: bool = False):
        self.stage = stage_for(transform)
        self.images = self.stage.to_device(images, device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64).to(device)
        mean, std = self.stage.mean_std
        self.mean = torch.tensor(mean).view(3, 1, 1).to(device)                    # (3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1).to(device)
        self.batch_size, self.drop_last, self.seed, self.device = batch_size, drop_last, seed, device
        self.sampler = EpochSampler(len(labels), rank, world_size, seed, shuffle, drop_last)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(self.sampler.indices(), dtype=torch.int64).to(self.device)
        params = self.stage.draw(len(self.labels), self.seed, self.sampler.epoch)
        params = None if params is None else [t.to(self.device) for t in params]
        for k in range(len(self)):
            idx = order[k * self.batch_size:(k + 1) * self.batch_size]
            batch = self.stage.gather(self.images, idx, None if params is None else [t[idx] for t in params])
            yield self.normalize(batch), self.labels[idx]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The arithmetic of CifarTest and of data.augment.to_normalized, in their order, so
        both paths give the same floats for the same uint8 pixels."""
        return (x.float().div_(255.0) - self.mean) / self.std


def stage_for(transform):
    """The on-device version of a dataset transform."""
    if isinstance(transform, CifarTrain):
        return CifarStage(transform.padding, (transform.normalize.mean, transform.normalize.std))
    if isinstance(transform, CifarTest):
        return CifarStage(None, (transform.mean, transform.std))
    if isinstance(transform, (ClipTrain, ClipTest)):
        return ClipStage(transform.size, train=isinstance(transform, ClipTrain))
    raise ValueError(f"the device loader applies CifarTrain, CifarTest, ClipTrain or ClipTest, not "
                     f"{type(transform).__name__}")


class CifarStage:
    """CifarTrain's zero-padded random crop + flip (padding set), or CifarTest's identity."""

    def __init__(self, padding: Optional[int], mean_std):
        self.padding = padding
        self.mean_std = tuple(tuple(float(v) for v in t.flatten()) for t in mean_std)

    def to_device(self, images: np.ndarray, device: torch.device) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)   # (N, 3, H, W) uint8
        self.size = x.shape[2]
        if self.padding:
            x = torch.nn.functional.pad(x, (self.padding,) * 4)                    # zeros, as CifarTrain
        return x.contiguous().to(device)

    def draw(self, n: int, seed: int, epoch: int):
        return list(draw_augmentation(n, self.padding, seed, epoch)) if self.padding else None

    def gather(self, images: torch.Tensor, idx: torch.Tensor, params) -> torch.Tensor:
        if params is None:
            return images[idx]
        top, left, flip = params
        return crop_flip(images, idx, top, left, flip, self.size)


class ClipStage:
    """ClipTrain's random-resized crop + flip to `size` pixels, or ClipTest's resize of the whole
    (square) image to `size`; CLIP's mean and std."""
    mean_std = (CLIP_MEAN, CLIP_STD)

    def __init__(self, size: int, train: bool):
        self.size, self.train = size, train

    def to_device(self, images: np.ndarray, device: torch.device) -> torch.Tensor:
        if images.shape[1] != images.shape[2]:   # ClipTest's shorter-side resize + centre crop is then not a box
            raise ValueError(f"the device loader resizes square images only, got {images.shape[1]}x{images.shape[2]}")
        self.height, self.width = images.shape[1], images.shape[2]
        return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(device)

    def draw(self, n: int, seed: int, epoch: int):
        """(top, left, height, width, flip), each (n,): for training, every index's draw from the
        generator ArrayDataset gives it; for testing, the whole image, unflipped."""
        if not self.train:
            whole = torch.tensor([[0, 0, self.height, self.width, 0]], dtype=torch.int64).expand(n, 5)
            return list(whole.t())
        rows = []
        for i in range(n):
            p = ClipTrain.draw(np.random.default_rng([seed, epoch, i]), self.height, self.width)
            rows.append((p.top, p.left, p.height, p.width, int(p.flip)))
        return list(torch.tensor(rows, dtype=torch.int64).t())

    def gather(self, images: torch.Tensor, idx: torch.Tensor, params) -> torch.Tensor:
        top, left, height, width, flip = params
        return resized_crops(images, idx, top, left, height, width, flip.bool(), self.size)


def _source_taps(start: torch.Tensor, length: torch.Tensor, size: int):
    """Bilinear resize of a window [start, start + length) to `size` pixels along one axis (the
    half-pixel rule of torch.nn.functional.interpolate, align_corners=False): for each sample
    (b,) and output pixel (size,), the two source indices and the weight of the second."""
    out = torch.arange(size, device=start.device, dtype=torch.float64) + 0.5
    pos = (out[None, :] * (length[:, None].double() / size) - 0.5).clamp(min=0.0)    # (b, size), window coords
    first = pos.floor()
    second = torch.minimum(first + 1, (length[:, None] - 1).double())
    weight = (pos - first).float()
    return start[:, None] + first.long(), start[:, None] + second.long(), weight


def resized_crops(images: torch.Tensor, idx: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
                  height: torch.Tensor, width: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """images (N, C, H, W) uint8 -> (b, C, size, size) uint8: image idx[j]'s window (top, left,
    height, width) resized bilinearly to size x size, mirrored left-right where flip[j].
    Separable: the rows are interpolated first (b, C, size, W), then the columns."""
    src = images[idx].float()                                              # (b, C, H, W)
    b, c, h, w = src.shape
    r0, r1, wr = _source_taps(top, height, size)                          # (b, size) each
    c0, c1, wc = _source_taps(left, width, size)
    mirrored = lambda t: torch.where(flip[:, None], t.flip(1), t)
    c0, c1, wc = mirrored(c0), mirrored(c1), mirrored(wc)
    rows = lambda r: src.gather(2, r[:, None, :, None].expand(b, c, size, w))     # (b, C, size, W)
    by_rows = rows(r0) * (1 - wr[:, None, :, None]) + rows(r1) * wr[:, None, :, None]
    cols = lambda k: by_rows.gather(3, k[:, None, None, :].expand(b, c, size, size))
    out = cols(c0) * (1 - wc[:, None, None, :]) + cols(c1) * wc[:, None, None, :]
    return out.round_().clamp_(0, 255).to(torch.uint8)
