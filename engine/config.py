"""Configuration: YAML files with `inherit`, typed `--set` overrides, one frozen schema.

A config is read once at start-up: `load_config(path, overrides)` merges the inherited files
(paths relative to the file that names them, later files win, dicts merge key by key), applies
`--set a.b=value` overrides (values parsed as YAML, then typed by the schema), and builds frozen
dataclasses. The `data`, `model`, `loss` and `optim` sections are each built from the options
class of the component they name (`core.registry.Component.options`, declared next to the
component in its library), so every default and doc lives in one place; `train` and `seed` are
the engine's own.

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

import data
import losses
import models
import optim
from core.errors import ConfigError, OptionError
from core.options import Checked, describe, opt
from core.registry import lookup
from data.options import DataOptions
from losses.base import LossOptions
from models.heads import ModelOptions
from optim.base import OptimOptions
from engine.config_checks import check_relations, check_seed, check_train


@dataclass(frozen=True)
class TrainConfig(Checked):
    """The engine's own keys: the loop, precision, device, evaluation cadence."""
    epochs: int = opt(200, "training epochs")
    batch_size: int = opt(64, "GLOBAL batch: split evenly over the processes under torchrun")
    eval_batch_size: int = opt(256, "global, evaluation only (256 is fastest for ResNet-32 on CPU)")
    max_steps_per_epoch: Optional[int] = opt(None, "cut epochs short (smoke runs); null: full epochs")
    warmup_epochs: int = opt(0, "linear LR warm-up epochs before the cosine schedule")
    amp: Literal["none", "bf16", "fp16"] = opt("none", "mixed precision: bf16 autocast, or fp16 with one loss scaler")
    device: str = opt("auto", "auto: cuda when available, else cpu; or cpu, cuda, cuda:N")
    eval_every: int = opt(1, "evaluate every N epochs (the last epoch always)")
    drop_last: bool = opt(False, "drop the last partial training batch")
    sync_bn: bool = opt(False, "SyncBatchNorm across processes under torchrun (CUDA only)")
    compile: Literal["none", "model"] = opt("none", "model: torch.compile the model for training (every pass); none: eager")
    capture: Literal["none", "step"] = opt("none", "step: replay the whole optimizer step from a CUDA graph (CUDA; SGD, SAM, Focal-SAM; not fp16)")
    progress: Literal["auto", "on", "off"] = opt("auto", "progress bars; auto: only on a TTY outside CI")
    dist_timeout_minutes: float = opt(30.0, "torchrun: minutes a rank waits for a peer that stopped responding, then stops with the resume command")
    loggers: Tuple[Literal["tensorboard", "csv", "wandb"], ...] = opt(
        ("tensorboard", "csv"), "where epochs and the final report go besides metrics.jsonl: tensorboard (tb/), "
        "csv (summary.csv), wandb (Weights & Biases, `pip install wandb`; engine/tracking.py)")
    wandb_project: str = opt("lt-sam", "W&B project (with wandb in train.loggers)")
    wandb_entity: Optional[str] = opt(None, "W&B team or user; null: your default entity")
    wandb_group: Optional[str] = opt(None, "W&B group; run_table.py sets the table cell, so that its seeds group")
    wandb_name: Optional[str] = opt(None, "W&B run name; null: the run folder's name (group/folder with a group)")

    def check(self) -> None:
        check_train(self)


@dataclass(frozen=True)
class Section:
    """A config section that names a component: its registry, and the base of its options."""
    kind: str           # "optimizer" in messages
    registry: dict
    base: type          # the keys every component of the section has (and the default name)


SECTIONS = {
    "data": Section("dataset", data.DATASETS, DataOptions),
    "model": Section("model", models.MODELS, ModelOptions),
    "loss": Section("loss", losses.LOSSES, LossOptions),
    "optim": Section("optimizer", optim.OPTIMIZERS, OptimOptions),
}


def section(which: str, /, **values):
    """The options of one section from plain values, validated as YAML would be:
    `section("optim", name="focal_sam", rho=0.1)` -> FocalSAMOptions(...)."""
    return build_section(which, values, which)


def _default(name: str):
    return lambda: section(name)


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataOptions = field(default_factory=_default("data"))
    model: ModelOptions = field(default_factory=_default("model"))
    loss: LossOptions = field(default_factory=_default("loss"))
    optim: OptimOptions = field(default_factory=_default("optim"))
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check_seed(self.seed)


# ----------------------------------------------------------------------------- reading YAML

class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last one
    silently, so a second `lr:` would quietly win). Merge keys (`<<: *base`) still override."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it with its position
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first.line + 1}); keep one of them",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_error(path: str, e: yaml.YAMLError) -> ConfigError:
    """One line with the file, the line and column of the problem, and what PyYAML found."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else path
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return ConfigError("", f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else ""))


def _read_text(path: str, inherited_by: str) -> str:
    """The file as UTF-8 text; a missing, binary or non-UTF-8 file is one error naming it."""
    if not os.path.exists(path):
        if inherited_by:
            raise ConfigError("inherit", f"{inherited_by} inherits {path}, which does not exist")
        raise ConfigError("", f"config file not found: {path}")
    if os.path.isdir(path):
        raise ConfigError("", f"{path} is a folder; give a YAML file (see configs/)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror or e}") from None
    if b"\0" in data:
        raise ConfigError("", f"{path} is a binary file, not a YAML config")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ConfigError("", f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                          "save it as UTF-8") from None


def _inherit_list(raw: dict, path: str) -> list:
    """The `inherit` entry as a list of non-empty path strings."""
    parents = raw.pop("inherit", [])
    parents = [parents] if isinstance(parents, str) else parents
    if not isinstance(parents, list):
        raise ConfigError("inherit", f"expected a path or a list of paths in {path}, got {parents!r}")
    for i, parent in enumerate(parents):
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError(f"inherit[{i}]", f"expected a file path in {path}, got {parent!r}")
    return parents


def read_yaml_tree(path: str, _seen: tuple = ()) -> dict:
    """Read `path` and everything it inherits into one plain dict (no schema yet)."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError("inherit", f"inheritance cycle through {path}")
    text = _read_text(path, _seen[-1] if _seen else "")
    try:
        raw = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    except (ValueError, OverflowError, RecursionError) as e:  # e.g. a date 2020-13-01, nesting 10,000 deep
        raise ConfigError("", f"{path}: cannot read a value ({type(e).__name__}: {str(e)[:80]})") from None
    if raw is None:
        raise ConfigError("", f"{path} is empty; a config names at least its sections or an `inherit` "
                          "(see configs/)")
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path} must hold a mapping of sections, found {type(raw).__name__}")
    merged: dict = {}
    for parent in _inherit_list(raw, path):
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
            value = yaml.load(text, Loader=StrictLoader) if text.strip() else None
        except (yaml.YAMLError, ValueError, OverflowError, RecursionError):
            value = text  # not YAML (or a date like 2020-13-01): the schema then names the key
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


def build_dataclass(cls, tree, path: str = "", others: Optional[dict] = None):
    """Build `cls` from a plain dict, rejecting unknown keys with the closest valid one.

    `others` maps keys that other components of the section read to those components' names:
    such a key is "not used by" this one rather than unknown.
    """
    if not isinstance(tree, dict):
        raise ConfigError(path, f"expected a section (mapping), got {tree!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in tree.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in known:
            raise _unknown_key(where, key, known, others or {})
        if path == "" and key in SECTIONS:
            kwargs[key] = build_section(key, value, where)
            continue
        tp = hints[key]
        kwargs[key] = build_dataclass(tp, value, where) if dataclasses.is_dataclass(tp) else coerce(value, tp, where)
    try:
        return cls(**kwargs)
    except OptionError as e:      # the component's own check of its values (core.options.Checked)
        raise ConfigError(f"{path}.{e.key}" if path else e.key, e.message) from None


def _unknown_key(where: str, key, known: list, others: dict) -> ConfigError:
    if key in others:
        users, kind, name = others[key]
        return ConfigError(where, f"is not used by {kind} '{name}' (used by: {', '.join(users)}); remove it")
    close = difflib.get_close_matches(str(key), known + list(others), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return ConfigError(where, f"unknown key; {hint}valid keys: {', '.join(known)}")


def build_section(name: str, tree, path: str):
    """A component section: its `name` picks the options class that the other keys must fit."""
    sec = SECTIONS[name]
    if not isinstance(tree, dict):
        raise ConfigError(path, f"expected a section (mapping), got {tree!r}")
    chosen = coerce(tree.get("name", sec.base.name), str, f"{path}.name")
    cls = lookup(sec.registry, chosen, f"{path}.name", sec.kind).options
    own = {f.name for f in dataclasses.fields(cls)}
    others: dict = {}
    for comp_name, comp in sorted(sec.registry.items()):
        for f in dataclasses.fields(comp.options):
            if f.name not in own:
                others.setdefault(f.name, ([], sec.kind, chosen))[0].append(comp_name)
    return build_dataclass(cls, {**tree, "name": chosen}, path, others)


# ----------------------------------------------------------------------------- the whole config

def check_requirements(cfg: Config) -> None:
    """What a chosen component needs of the rest of the config (LDAM: the cosine classifier)."""
    for name, sec in SECTIONS.items():
        chosen = getattr(cfg, name).name
        for key_path, value, reason in sec.registry[chosen].requires:
            part, key = key_path.split(".")
            found = getattr(getattr(cfg, part), key)
            if found != value:
                raise ConfigError(key_path, f"{sec.kind} '{chosen}' needs {key_path}: {value} ({reason}), "
                                  f"got {found!r}; set {key_path}: {value}")


def config_from_tree(tree: dict) -> Config:
    cfg = build_dataclass(Config, tree)     # each section checks its own values as it is built
    check_requirements(cfg)
    check_relations(cfg)
    return cfg


def load_config(path: str, overrides: Optional[list] = None) -> Config:
    """The one entry point: files + overrides -> validated, frozen `Config`."""
    return config_from_tree(apply_overrides(read_yaml_tree(path), overrides))


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) for YAML / JSON / checkpoints. Each section holds the
    keys of its chosen component only, so the saved file loads again and shows only what acts."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))


def options_table() -> str:
    """Markdown: every key of every section with its default, the components that read it and
    its doc. `python train.py --options` prints it; the README's table is this text (a test
    checks), so defaults and docs have one source: the options classes."""
    lines = ["| key | default | read by | meaning |", "|---|---|---|---|"]
    for name, sec in SECTIONS.items():
        rows: dict = {k: [[d, ["all"], doc]] for k, d, doc in describe(sec.base)}
        for comp_name, comp in sec.registry.items():
            common = tuple(f.name for f in dataclasses.fields(sec.base))
            for k, d, doc in describe(comp.options, skip=common):
                _add_reader(rows.setdefault(k, []), comp_name, d, doc)
        lines += [f"| `{name}.{k}` | `{_show(d)}` | {', '.join(users)} | {doc} |"
                  for k, variants in rows.items() for d, users, doc in variants]
    lines += [f"| `train.{f.name}` | `{_show(f.default)}` | all | {f.metadata.get('doc', '')} |"
              for f in dataclasses.fields(TrainConfig)]
    lines.append("| `seed` | `0` | all | seeds the model initialisation, data order and augmentation |")
    return "\n".join(lines)


def _add_reader(variants: list, component: str, default, doc: str) -> None:
    """One row per (default, doc) of a key: components that give a key their own meaning or
    default (sse_sam's gamma beside focal_sam's) get a row of their own under the first."""
    for row in variants:
        if row[0] == default and row[2] == doc:
            row[1].append(component)
            return
    variants.append([default, [component], doc])


def _show(value) -> str:
    if isinstance(value, tuple):
        return "[]" if not value else str([list(v) if isinstance(v, tuple) else v for v in value])
    return "null" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
