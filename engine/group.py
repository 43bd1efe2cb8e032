"""The runs one process trains: one run, or N runs of one config that differ only in the seed,
trained together as one stacked model (models/stacked.py), each with its own folder.

Each member keeps everything a run alone has: its initial weights (built under its own seed),
its data order and augmentation (its own loader, seeded by its seed), its BatchNorm statistics,
its optimizer state, its checkpoint, metrics and report. The members share the passes: one
forward / backward runs all of them, which on a GPU replaces N small kernel launches by one
larger one. With one run, nothing is stacked: the ordinary path, bit for bit.
"""
from dataclasses import dataclass, replace
from typing import List, Sequence

import torch

from core.errors import ConfigError, UserError
from engine.build import Run, build_run
from engine.config import Config, config_to_dict
from engine.loaders import train_loader
from models.stacked import StackedModels, member_optimizer_state, stacked_optimizer_state
from optim import build_optimizer, optimizer_class
from optim.members import members


@dataclass
class Group:
    runs: List[Run]                   # one per member (their own models are not trained when stacked)
    model: torch.nn.Module            # the run's model, or a StackedModels of the members' models
    optimizer: torch.optim.Optimizer
    criterion: torch.nn.Module
    epoch_values: object

    @property
    def cfgs(self) -> List[Config]:
        return [r.cfg for r in self.runs]

    @property
    def class_counts(self) -> List[int]:
        return self.runs[0].class_counts

    def member_state(self, k: int):
        """(model state_dict, optimizer state_dict) of member k, as one run alone would save them."""
        if not members(self.model):
            return self.model.state_dict(), self.optimizer.state_dict()
        return self.model.member_state_dict(k), member_optimizer_state(self.optimizer.state_dict(), k)

    def load_members(self, states: Sequence[dict]) -> None:
        """Each member from its own checkpoint's 'model' and 'optimizer'."""
        if not members(self.model):
            self.model.load_state_dict(states[0]["model"])
            self.optimizer.load_state_dict(states[0]["optimizer"])
            return
        for k, state in enumerate(states):
            self.model.load_member_state_dict(k, state["model"])
        self.optimizer.load_state_dict(stacked_optimizer_state([s["optimizer"] for s in states]))


def check_members(cfgs: Sequence[Config], distributed: bool) -> None:
    """Runs trained together must be one config with distinct seeds, one process, no fp16."""
    seeds = [c.seed for c in cfgs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"the seeds trained together must differ, got {seeds}")
    base = _flat(config_to_dict(replace(cfgs[0], seed=0)))
    for c in cfgs[1:]:
        other = _flat(config_to_dict(replace(c, seed=0)))
        keys = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
        if keys:
            raise UserError(f"runs trained in one process must share their config except the seed; seed {c.seed} "
                            f"differs in {', '.join(keys[:4])}")
    if distributed:
        raise UserError("several seeds in one process cannot run under torchrun; launch one run per seed")
    if cfgs[0].train.amp == "fp16":   # (why_not_stackable says it too; this line says why)
        raise ConfigError("train.amp", "fp16 would share one loss scale (and its skipped steps) between the seeds "
                                       "trained together; use bf16 or none")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def why_not_stackable(cfg: Config) -> str:
    """'' if seeds of `cfg` can train together in one process, else the config key that forbids it."""
    if not optimizer_class(cfg.optim.name).stackable:
        return f"optim.name={cfg.optim.name}"
    if not cfg.model.stackable:        # the backbone's own answer (CLIP's open_clip modules: no)
        return f"model.name={cfg.model.name}"
    if cfg.model.channels_last:   # vmap cannot query a channels_last layout (torch 2.14: NYI)
        return "model.channels_last=true"
    if cfg.train.amp == "fp16":
        return "train.amp=fp16"
    return ""


def build_group(cfgs: Sequence[Config], device: torch.device, distributed: bool = False) -> Group:
    """Build every member as its own run (its seed seeds its weights), then stack them."""
    if len(cfgs) == 1:
        run = build_run(cfgs[0], device)
        return Group([run], run.model, run.optimizer, run.criterion, run.epoch_values)
    check_members(cfgs, distributed)
    reason = why_not_stackable(cfgs[0])
    if reason:
        raise UserError(f"{reason} cannot train several seeds in one process; launch one run per seed")
    runs = [build_run(c, device) for c in cfgs]
    model = StackedModels([r.model for r in runs])
    optimizer = build_optimizer(cfgs[0].optim, model.parameters(), runs[0].class_counts, cfgs[0].train.amp)
    for r in runs:
        r.model = r.optimizer = None    # the stacked copies are the ones trained: free the originals
    return Group(runs, model, optimizer, runs[0].criterion, runs[0].epoch_values)


def train_batches(group: Group, info):
    """The training loader of a group: the run's own, or one batch per member stacked, each
    member's loader seeded by its seed (order and augmentation as if it ran alone)."""
    cfg = group.cfgs[0]
    loaders = [train_loader(r.splits.train, cfg.train.batch_size, info, r.cfg.seed, cfg.data, cfg.train.drop_last)
               for r in group.runs]
    return loaders[0] if len(loaders) == 1 else MemberBatches(loaders)


class MemberBatches:
    """One batch from each member's loader, stacked: images (N, B, ...), targets (N, B). The
    members' loaders have the same length and batch sizes (one data set, one batch size)."""

    def __init__(self, loaders: Sequence):
        self.loaders = list(loaders)

    @property
    def sampler(self):
        return self               # the trainer calls `loader.sampler.set_epoch(e)`

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self):
        for batches in zip(*self.loaders):
            yield torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
