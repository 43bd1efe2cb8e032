"""The keys every dataset's config section has, and what every dataset builder returns."""
from dataclasses import dataclass, replace
from typing import List, Literal

from core.options import Checked, opt, require

MAX_WORKERS = 128                 # loader processes per training process
MAX_LOADER_WAIT = 86_400          # seconds a batch may take: a day; longer is a hang, not a slow read
MAX_SIDE = 1024                   # pixels: the crop fed to the network, or the synthetic images' side


def check_image_size(size: int) -> None:
    require("image_size", 8 <= size <= MAX_SIDE, f"must be 8..{MAX_SIDE} pixels", size)


def check_num_classes(num_classes: int) -> None:
    require("num_classes", num_classes >= 2, "must be >= 2", num_classes)


@dataclass(frozen=True)
class DataOptions(Checked):
    """Common keys of the `data` section; each dataset's options class adds its own."""
    name: str = opt("cifar10_lt", "the dataset (registry name)")
    root: str = opt("data", "folder holding the dataset (README, 'Datasets')")
    augment: bool = opt(True, "training augmentation (crop + flip presets)")
    num_workers: int = opt(-1, "loader workers per process; -1: from the CPU count, at most 8")
    # 600 s is generous: the first batch of an epoch includes starting the workers, and a worker
    # reads a whole batch of full-size JPEGs (about 1 s for 256 ImageNet images on one core).
    loader_timeout_seconds: float = opt(600.0, "with workers: a batch that takes longer stops the run with the "
                                               "resume command (a stalled file system, a stuck worker)")
    head_threshold: float = opt(100.0, "head classes: n_k > head_threshold training images")
    tail_threshold: float = opt(20.0, "tail classes: n_k < tail_threshold; medium: the rest")
    pin_memory: bool = opt(True, "page-locked batches for faster host-to-GPU copies (CUDA only)")
    persistent_workers: bool = opt(True, "keep loader workers between epochs (num_workers > 0)")
    prefetch_factor: int = opt(2, "batches each worker prepares ahead (num_workers > 0)")
    preprocess: Literal["standard", "clip"] = opt("standard", "clip: 224 px crops with CLIP's mean/std (foundation models)")

    def check(self) -> None:
        require("num_workers", -1 <= self.num_workers <= MAX_WORKERS,
                f"must be 0..{MAX_WORKERS}, or -1 (from the CPU count)", self.num_workers)
        require("loader_timeout_seconds", 0 < self.loader_timeout_seconds <= MAX_LOADER_WAIT,
                f"must be in (0, {MAX_LOADER_WAIT:,}] seconds (0 would never wait for a batch; a stalled run must "
                "stop)", self.loader_timeout_seconds)
        for key in ("head_threshold", "tail_threshold"):
            require(key, getattr(self, key) >= 0, "must be >= 0 (a training count)", getattr(self, key))
        require("head_threshold", self.head_threshold >= self.tail_threshold,
                f"is below data.tail_threshold={self.tail_threshold}", self.head_threshold)
        require("prefetch_factor", self.prefetch_factor >= 1, "must be >= 1", self.prefetch_factor)

    def loader_kind(self, device_type: str) -> str:
        """How this set reaches the model: "workers" (a DataLoader with CPU workers) for sets
        read from files; in-memory sets may live on the device instead."""
        return "workers"

    def in_process(self) -> "DataOptions":
        """These options without augmentation and with every image prepared in this process (no
        workers, no device stage): what an analysis of a trained run reads."""
        return replace(self, augment=False, num_workers=0)


@dataclass(frozen=True)
class InMemoryOptions(DataOptions):
    """Sets held in memory as uint8 arrays (CIFAR-LT, synthetic), which can live on the device."""
    loader: Literal["auto", "workers", "device"] = opt(
        "auto", "workers: DataLoader with CPU workers; device: the set on the GPU, augmented there (CIFAR crop/flip, CLIP resized crop); auto: device on CUDA")

    def loader_kind(self, device_type: str) -> str:
        """`data.loader`, `auto` meaning the device on CUDA (on the CPU, worker processes overlap
        augmentation with the step; the device path cannot)."""
        if self.loader == "auto":
            return "device" if device_type == "cuda" else "workers"
        return self.loader


@dataclass
class DataSplits:
    """A built dataset: training and test sets (items: (image tensor, label)), counts, names."""
    train: object
    test: object
    class_counts: List[int]
    class_names: List[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)
