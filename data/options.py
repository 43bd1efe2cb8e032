"""The keys every dataset's config section has, and what every dataset builder returns."""
from dataclasses import dataclass
from typing import List, Literal

from core.options import opt


@dataclass(frozen=True)
class DataOptions:
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


@dataclass(frozen=True)
class InMemoryOptions(DataOptions):
    """Sets held in memory as uint8 arrays (CIFAR-LT, synthetic), which can live on the device."""
    loader: Literal["auto", "workers", "device"] = opt(
        "auto", "workers: DataLoader with CPU workers; device: the set on the GPU, augmented there (CIFAR crop/flip, CLIP resized crop); auto: device on CUDA")


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
