"""Configuration: YAML files with `inherit`, typed `--set` overrides, one frozen schema.

A config is read once at start-up: `load_config(path, overrides)` merges the inherited files
(paths relative to the file that names them, later files win, dicts merge key by key), applies
`--set a.b=value` overrides (values parsed as YAML, then typed by the schema), and builds the
frozen dataclasses below. Every default lives here and nowhere else.

Fails at load time, with the key path, on: an unknown key or section, a value of the wrong type,
an unknown component name (listing the valid ones), an option that the chosen component does not
read (it would be silently ignored), and impossible combinations (DRW after the last epoch, rho
milestones out of order, head threshold below tail threshold).
"""
import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple

import yaml

from core.errors import ConfigError
from core.registry import lookup


def option(default, **kw):
    """A key read only by some components of its section (see `core.registry.Component.uses`)."""
    return field(default=default, metadata={"option": True}, **kw)


@dataclass(frozen=True)
class DataConfig:
    name: str = "cifar10_lt"
    root: str = "data"                  # folder holding the dataset (see README, "Datasets")
    download: bool = option(True)       # fetch CIFAR when missing and the network allows
    imb_factor: float = option(100.0)   # n_max / n_min of the long-tailed profile
    augment: bool = True                # training augmentation (crop + flip, presets in data/)
    num_workers: int = -1               # DataLoader workers per process; -1: from the CPU count
    head_threshold: float = 100.0       # head: n_k > head_threshold (training count)
    tail_threshold: float = 20.0        # tail: n_k < tail_threshold; medium: the rest
    pin_memory: bool = True             # page-locked batches for faster host-to-GPU copies (CUDA only)
    persistent_workers: bool = True     # keep loader workers between epochs (num_workers > 0)
    prefetch_factor: int = 2            # batches each worker prepares ahead (num_workers > 0)
    num_classes: int = option(10)       # synthetic: classes made; list datasets: labels must be < this
    image_size: int = option(16)        # synthetic: image side; list datasets: crop fed to the network (224)
    # synthetic: a deterministic long-tailed set of small random images for smoke runs and tests
    max_per_class: int = option(100)    # n_0, the head class's training count
    test_per_class: int = option(10)
    # list datasets (ImageNet-LT, iNaturalist 2018): paths relative to the repository unless absolute
    train_list: str = option("")        # e.g. data_txt/ImageNet_LT/ImageNet_LT_train.txt
    test_list: str = option("")
    class_names: str = option("")       # classnames.txt / categories.json (reports only)
    decode: Literal["pil", "torchvision", "device"] = option("pil")   # where images are decoded (data/listfile.py)
    check_files: bool = option(False)   # check that every listed image exists before training
    preprocess: Literal["standard", "clip"] = "standard"   # clip: CLIP's 224-px crops and mean/std (CLIP models)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnet32"
    classifier: Literal["linear", "cosine"] = "linear"   # cosine: LDAM's normalised head
    channels_last: bool = False         # NHWC memory format (faster convolutions on recent GPUs)
    # CLIP models (models/clip.py, issue 16): options of clip_vit_b16 and clip_tiny
    finetune: Literal["full", "lift"] = option("full")  # full: every transformer block + head (FFT); lift: AdaptFormer adapters + head
    adapter_dim: int = option(0)        # lift: adapter bottleneck width; 0 = LIFT's rule 2^floor(log2(C / 2L))
    cosine_scale: float = option(25.0)  # head logits = cosine_scale * cos(feature, class weight) (official code: 25)
    prompts: Tuple[str, ...] = option(("a photo of a {}.",))   # head init: text templates, {} = class name, averaged
    clip_weights: str = option("~/.cache/clip/ViT-B-16.pt")   # clip_vit_b16: OpenAI's ViT-B-16.pt or an open_clip checkpoint
    clip_download: bool = option(True)  # clip_vit_b16: download OpenAI's file to clip_weights when it is missing


@dataclass(frozen=True)
class LossConfig:
    name: str = "ce"
    tau: float = option(1.0)            # LA / VS: additive tau * log(pi_k)
    gamma: float = option(0.3)          # VS: multiplicative (n_k / n_max)^gamma (VS code default)
    max_m: float = option(0.5)          # LDAM: largest margin (rarest class)
    s: float = option(30.0)             # LDAM: logit scale on cosine logits
    drw_epoch: Optional[int] = None     # DRW: class-balanced weights from this epoch on (0-based)
    drw_beta: float = 0.9999            # DRW effective-number beta
    drw_reduction: Literal["batch", "weights"] = "batch"  # batch: sum / b (Focal-SAM code)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1                     # base learning rate (cosine-annealed per epoch to 0)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    rho: float = option(0.05)           # perturbation radius at epoch 0
    rho_milestones: Tuple[Tuple[int, float], ...] = option(())  # [[epoch, rho], ...]: rho from that epoch on
    bn_mode: Literal["update", "freeze"] = option("update")     # BN running stats in the perturbed pass
    exclude_bn_bias: bool = option(False)                       # leave BN and bias parameters unperturbed
    gamma: float = option(2.0)          # Focal-SAM focusing exponent on (1 - pi_k)
    lam: float = option(1.0)            # Focal-SAM sharpness weight lambda
    eta: float = option(100.0)          # ImbSAM: tail = classes with n_k <= eta
    ratio: float = option(0.3)          # CC-SAM: weight r of the perturbed loss (official 0.3)
    radius: Literal["official", "plain"] = option("official")   # CC-SAM per-class radius rule
    scope: Literal["classifier", "all"] = option("classifier")  # CC-SAM: parameters perturbed per class
    perturbation: Literal["global", "local"] = option("global") # DDP: perturb along the global or per-replica gradient


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    batch_size: int = 64                # GLOBAL batch: split evenly over the processes under torchrun
    eval_batch_size: int = 256          # global, evaluation only (256 is fastest for ResNet-32 on CPU)
    max_steps_per_epoch: Optional[int] = None   # cut epochs short (smoke runs); None: full epochs
    warmup_epochs: int = 0              # linear LR warm-up before the cosine schedule
    amp: Literal["none", "bf16", "fp16"] = "none"
    device: str = "auto"                # auto: cuda when available, else cpu
    eval_every: int = 1                 # evaluate every N epochs (the last epoch always)
    drop_last: bool = False
    sync_bn: bool = False               # SyncBatchNorm across processes under torchrun (CUDA only)
    progress: Literal["auto", "on", "off"] = "auto"   # auto: bars only on a TTY outside CI


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTION_KIND = {"data": "dataset", "model": "model", "loss": "loss", "optim": "optimizer"}


# ----------------------------------------------------------------------------- reading YAML

def read_yaml_tree(path: str, _seen: tuple = ()) -> dict:
    """Read `path` and everything it inherits into one plain dict (no schema yet)."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError("inherit", f"inheritance cycle through {path}")
    if not os.path.isfile(path):
        raise ConfigError("", f"config file not found: {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError("", f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping of sections, found {type(raw).__name__}")
    parents = raw.pop("inherit", [])
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list):
        raise ConfigError("inherit", f"expected a path or a list of paths in {path}")
    merged: dict = {}
    for parent in parents:
        merged = deep_merge(merged, read_yaml_tree(os.path.join(os.path.dirname(path), parent), _seen + (path,)))
    return deep_merge(merged, raw)


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(tree: dict, overrides: list) -> dict:
    """Apply `a.b=value` strings; values are parsed as YAML (typed later by the schema).

    `~a.b` (no value) removes a key so that it falls back to its default: a run that swaps the
    component (e.g. `data.name=synthetic` on an ImageNet-LT config) can drop the options that
    only the old component reads, which validation would otherwise reject.
    """
    tree = deep_merge({}, tree)
    for item in overrides or []:
        if item.startswith("~"):
            _remove_key(tree, item[1:].strip(), item)
            continue
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", f"expected KEY=VALUE, got '{item}'")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(key, "is not a section")
        node[parts[-1]] = value
    return tree


def _remove_key(tree: dict, key: str, item: str) -> None:
    node, parts = tree, key.split(".")
    if "=" in key or not all(parts):
        raise ConfigError("--set", f"expected ~KEY (remove a key), got '{item}'")
    for part in parts[:-1]:
        node = node.get(part)
        if not isinstance(node, dict):
            raise ConfigError(key, f"'{item}' names no section of the config")
    node.pop(parts[-1], None)  # absent already: nothing to remove, the default applies


# ----------------------------------------------------------------------------- typing values

def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def coerce(value, tp, path: str):
    """Check `value` against the annotation `tp`, converting where YAML is loose (1e-3, ints)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return coerce(value, [a for a in args if a is not type(None)][0], path)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans: take the word back
            words = ("on", "true", "yes") if value else ("off", "false", "no")
            value = next((w for w in words if w in args), value)
        if value in args and not isinstance(value, bool):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r}{hint}")
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(path, f"expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(path, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def build_dataclass(cls, tree, path: str = ""):
    """Build `cls` from a plain dict, rejecting unknown keys with the closest valid one."""
    if not isinstance(tree, dict):
        raise ConfigError(path, f"expected a section (mapping), got {tree!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in tree.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(where, f"unknown key; {hint}valid keys: {', '.join(known)}")
        tp = hints[key]
        kwargs[key] = build_dataclass(tp, value, where) if dataclasses.is_dataclass(tp) else coerce(value, tp, where)
    return cls(**kwargs)


# ----------------------------------------------------------------------------- the whole config

def _component_registries() -> dict:
    # Imported here: the registries import their builders, which import torch; the schema
    # above stays importable without them.
    import data, losses, models, optim
    return {"data": data.DATASETS, "model": models.MODELS, "loss": losses.LOSSES, "optim": optim.OPTIMIZERS}


def check_components(cfg: Config, tree: dict) -> None:
    """Each `name` must be registered, and each option set in YAML must be read by it."""
    for section, registry in _component_registries().items():
        sub = getattr(cfg, section)
        comp = lookup(registry, sub.name, f"{section}.name", SECTION_KIND[section])
        for f in dataclasses.fields(sub):
            if f.metadata.get("option") and f.name in tree.get(section, {}) and f.name not in comp.uses:
                users = sorted(n for n, c in registry.items() if f.name in c.uses)
                raise ConfigError(f"{section}.{f.name}", f"is not used by {SECTION_KIND[section]} "
                                  f"'{sub.name}' (used by: {', '.join(users)}); remove it")
        for key_path, value, reason in comp.requires:
            sec, key = key_path.split(".")
            if getattr(getattr(cfg, sec), key) != value:
                raise ConfigError(key_path, f"{SECTION_KIND[section]} '{sub.name}' needs {key_path}: {value} "
                                  f"({reason}), got {getattr(getattr(cfg, sec), key)!r}; set {key_path}: {value}")


def check_combinations(cfg: Config) -> None:
    t = cfg.train
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key}", f"must be >= 1, got {getattr(t, key)}")
    if t.max_steps_per_epoch is not None and t.max_steps_per_epoch < 1:
        raise ConfigError("train.max_steps_per_epoch", f"must be >= 1 or null, got {t.max_steps_per_epoch}")
    if not 0 <= t.warmup_epochs < t.epochs:
        raise ConfigError("train.warmup_epochs", f"must be in [0, epochs={t.epochs}), got {t.warmup_epochs}")
    if cfg.loss.drw_epoch is not None and not 0 <= cfg.loss.drw_epoch < t.epochs:
        raise ConfigError("loss.drw_epoch", f"DRW would start at epoch {cfg.loss.drw_epoch}, "
                          f"outside the run's epochs 0..{t.epochs - 1}")
    last = 0
    for i, (epoch, rho) in enumerate(cfg.optim.rho_milestones):
        if epoch <= last or epoch >= t.epochs:
            raise ConfigError(f"optim.rho_milestones[{i}]", f"epoch {epoch} must be increasing, > 0 and "
                              f"< epochs={t.epochs}")
        if rho < 0:
            raise ConfigError(f"optim.rho_milestones[{i}]", f"rho must be >= 0, got {rho}")
        last = epoch
    if cfg.optim.rho < 0:
        raise ConfigError("optim.rho", f"must be >= 0, got {cfg.optim.rho}")
    if cfg.data.prefetch_factor < 1:
        raise ConfigError("data.prefetch_factor", f"must be >= 1, got {cfg.data.prefetch_factor}")
    if cfg.data.head_threshold < cfg.data.tail_threshold:
        raise ConfigError("data.head_threshold", f"{cfg.data.head_threshold} is below "
                          f"data.tail_threshold={cfg.data.tail_threshold}")


def config_from_tree(tree: dict) -> Config:
    cfg = build_dataclass(Config, tree)
    check_components(cfg, tree)
    check_combinations(cfg)
    return cfg


def load_config(path: str, overrides: Optional[list] = None) -> Config:
    """The one entry point: files + overrides -> validated, frozen `Config`."""
    return config_from_tree(apply_overrides(read_yaml_tree(path), overrides))


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) for YAML / JSON / checkpoints. Options that the chosen
    component does not read are left out, so the saved file loads again and shows only what acts."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    tree = plain(dataclasses.asdict(cfg))
    for section, registry in _component_registries().items():
        sub = getattr(cfg, section)
        uses = registry[sub.name].uses
        for f in dataclasses.fields(sub):
            if f.metadata.get("option") and f.name not in uses:
                del tree[section][f.name]
    return tree


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
