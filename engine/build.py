"""The one assembly of a run: config -> data -> model -> loss -> optimizer -> per-epoch values.

The trainer, eval, the benchmarks, the analysis tools and the tests all build through
`build_run`, so a run is put together the same way everywhere.
"""
import random
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch

from data import DataSplits, build_data, class_counts_only
from engine.config import Config
from engine.epoch_values import EpochValues
from losses import build_loss
from models import build_model
from optim import build_optimizer


@dataclass
class Run:
    cfg: Config
    splits: Optional[DataSplits]     # None when built with load_data=False
    class_counts: List[int]
    model: torch.nn.Module
    criterion: torch.nn.Module       # per-sample loss
    optimizer: torch.optim.Optimizer  # with step(model, images, targets, criterion)
    epoch_values: EpochValues


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_run(cfg: Config, device: torch.device = torch.device("cpu"), load_data: bool = True,
              class_counts: Optional[List[int]] = None, trained_state: Optional[dict] = None) -> Run:
    """Seed, then build every part of the run on `device`. With load_data=False no image is
    read: the class counts are `class_counts` if given, else those of the dataset's profile or
    split list (benchmarks, config checks). `trained_state`: the model state dict the caller
    loads next (models/__init__.py `build_model`)."""
    seed_everything(cfg.seed)
    splits = build_data(cfg.data, cfg.seed) if load_data else None
    if splits is not None:
        counts = list(splits.class_counts)
    else:
        counts = list(class_counts) if class_counts is not None else class_counts_only(cfg.data)
    names = splits.class_names if splits is not None else None      # CLIP heads start from them
    model = build_model(cfg.model, len(counts), names, trained_state).to(device)
    criterion = build_loss(cfg.loss, counts).to(device)
    optimizer = build_optimizer(cfg.optim, model.parameters(), counts, cfg.train.amp)
    return Run(cfg, splits, counts, model, criterion, optimizer, EpochValues(cfg, counts))
