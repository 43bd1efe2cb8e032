"""Value checks of a typed config: ranges and relations, each failing with the key that is wrong.

The schema (engine/config.py) has already checked types and names; here the values themselves:
a negative learning rate, a momentum of 1.5 or a DRW beta of 1 would otherwise start a run that
diverges, divides by zero, or fails minutes later inside PyTorch with a traceback. Options that
exist only for some components (`optim.ratio` for CC-SAM, `data.imb_factor` for the profile
datasets) are read with `getattr(..., None)`, so a section without them is simply not checked.
"""
import dataclasses
import re
from typing import Callable, Iterator, Optional, Tuple

from core.args import SEED_MAX   # numpy.random.seed and np.random.default_rng accept 0 .. 2**32 - 1
from core.errors import ConfigError

FLOAT32_MAX = 3.4028234663852886e38   # values end up in float32 tensors (lr, rho, weights)
MAX_EPOCHS = 100_000              # schedules are expanded into one value per epoch at start-up
MAX_WORKERS = 128                 # loader processes per training process
MAX_LOADER_WAIT = 86_400          # seconds a batch may take: a day; longer is a hang, not a slow read
MAX_SIDE = 1024                   # pixels: the crop fed to the network, or the synthetic images' side
MAX_SYNTHETIC = 100_000           # images per class that the synthetic set makes in memory
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

# (section, key, test, what the value must be). A None value (an optional key left unset, or an
# option the section does not have) is not checked.
Rule = Tuple[str, str, Callable[[object], bool], str]
RULES: Tuple[Rule, ...] = (
    ("", "seed", lambda v: 0 <= v <= SEED_MAX, f"must be in 0..{SEED_MAX} (numpy's seed range)"),
    ("data", "imb_factor", lambda v: v >= 1, "must be >= 1 (n_max / n_min of the long-tailed profile)"),
    ("data", "num_workers", lambda v: -1 <= v <= MAX_WORKERS, f"must be 0..{MAX_WORKERS}, or -1 (from the CPU count)"),
    ("data", "loader_timeout_seconds", lambda v: 0 < v <= MAX_LOADER_WAIT,
     f"must be in (0, {MAX_LOADER_WAIT:,}] seconds (0 would never wait for a batch; a stalled run must stop)"),
    ("data", "head_threshold", lambda v: v >= 0, "must be >= 0 (a training count)"),
    ("data", "tail_threshold", lambda v: v >= 0, "must be >= 0 (a training count)"),
    ("data", "num_classes", lambda v: v >= 2, "must be >= 2"),
    ("data", "image_size", lambda v: 8 <= v <= MAX_SIDE, f"must be 8..{MAX_SIDE} pixels"),
    ("data", "max_per_class", lambda v: 1 <= v <= MAX_SYNTHETIC, f"must be 1..{MAX_SYNTHETIC:,}"),
    ("data", "test_per_class", lambda v: 1 <= v <= MAX_SYNTHETIC, f"must be 1..{MAX_SYNTHETIC:,}"),
    ("loss", "gamma", lambda v: v >= 0, "must be >= 0 (VS: exponent of n_k / n_max)"),
    ("loss", "max_m", lambda v: v >= 0, "must be >= 0 (LDAM: largest margin)"),
    ("loss", "s", lambda v: v > 0, "must be > 0 (LDAM: logit scale)"),
    ("loss", "drw_beta", lambda v: 0 < v < 1, "must be in (0, 1) (DRW weights (1 - beta) / (1 - beta^n_k))"),
    ("optim", "lr", lambda v: v > 0, "must be > 0"),
    ("optim", "momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("optim", "weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("optim", "gamma", lambda v: v >= 0, "must be >= 0 (Focal-SAM: exponent of 1 - pi_k)"),
    ("optim", "lam", lambda v: v >= 0, "must be >= 0 (Focal-SAM: sharpness weight)"),
    ("optim", "eta", lambda v: v >= 0, "must be >= 0 (ImbSAM: tail = classes with n_k <= eta)"),
    ("optim", "tail_weight", lambda v: v > 0, "must be > 0 (ImbSAM: factor on the tail loss; 1 paper, 2 its code)"),
    ("optim", "ratio", lambda v: 0 <= v <= 1, "must be in [0, 1] (CC-SAM: weight of the perturbed loss)"),
    ("train", "device", lambda v: bool(DEVICE.match(v)), "must be auto, cpu, cuda, cuda:N or mps"),
    ("train", "epochs", lambda v: v <= MAX_EPOCHS, f"must be <= {MAX_EPOCHS:,}"),
    ("train", "dist_timeout_minutes", lambda v: v > 0, "must be > 0 (minutes)"),
)


def _sections(cfg) -> Iterator[Tuple[str, object]]:
    yield "", cfg
    for f in dataclasses.fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub):
            yield f.name, sub


def _key(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def check_finite(cfg) -> None:
    """Every float in the config is a number that float32 can hold: YAML reads .nan and .inf as
    floats, and 1e300 is finite for Python but overflows when PyTorch applies it."""
    for section, sub in _sections(cfg):
        for f in dataclasses.fields(sub):
            value = getattr(sub, f.name)
            if isinstance(value, float) and not abs(value) <= FLOAT32_MAX:
                raise ConfigError(_key(section, f.name), f"must be a finite number (float32 range), got {value}")
    for i, (_, rho) in enumerate(getattr(cfg.optim, "rho_milestones", None) or ()):
        if not abs(rho) <= FLOAT32_MAX:
            raise ConfigError(f"optim.rho_milestones[{i}]", f"rho must be a finite number, got {rho}")


def check_ranges(cfg) -> None:
    for section, key, ok, need in RULES:
        sub = getattr(cfg, section) if section else cfg
        value = getattr(sub, key, None)
        if value is not None and not ok(value):
            raise ConfigError(_key(section, key), f"{need}, got {value!r}")


def check_relations(cfg) -> None:
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise ConfigError("optim.nesterov", "Nesterov needs momentum > 0 (optim.momentum is 0); "
                          "set optim.nesterov=false or a momentum")
    if getattr(cfg.model, "precision", "fp32") == "fp16" and cfg.train.amp != "none":
        raise ConfigError("model.precision", "fp16 holds the weights themselves in fp16 and trains them without "
                          f"autocast or loss scaler (the official code's --prec fp16); train.amp={cfg.train.amp} would "
                          "add both: set train.amp=none")
    if cfg.train.compile == "model" and getattr(cfg.optim, "clean_backward", "separate") == "batched":
        # vmap over a compiled backward has no batching rule (torch 2.14: aten::mm.out)
        raise ConfigError("optim.clean_backward", "batched cannot run through a compiled model "
                          "(train.compile=model); set optim.clean_backward=separate or train.compile=none")


def empty_class(counts) -> Optional[int]:
    """The first class with no training image, or None."""
    return next((k for k, n in enumerate(counts) if n < 1), None)


def check_class_counts(cfg) -> None:
    """A profile dataset (CIFAR-LT, synthetic) whose rarest class would get no training image.

    Its counts follow from the config alone (n_k = int(n_max * IF^(-k/(C-1)))); the list
    datasets count their list when they are built and refuse an empty class there.
    """
    import data  # the registry imports torch: only when a config is checked, not on import
    if cfg.data.name not in ("cifar10_lt", "cifar100_lt", "synthetic"):
        return
    counts = data.class_counts_only(cfg.data)
    k = empty_class(counts)
    if k is not None:
        n_max = counts[0]
        raise ConfigError("data.imb_factor", f"imbalance {cfg.data.imb_factor:g} leaves class {k} of "
                          f"{cfg.data.name} with no training image (n_k = int({n_max} * IF^(-k/(C-1)))); "
                          f"use an imb_factor of at most {n_max}")


def check_values(cfg) -> None:
    """Fail with the key path on the first value that is out of range or contradicts another."""
    check_finite(cfg)
    check_ranges(cfg)
    check_relations(cfg)
    check_class_counts(cfg)
