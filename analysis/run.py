"""Load a trained run for analysis: its config, training data without augmentation, the model
with the checkpoint's weights, and the per-sample training loss. `load_run` is the one place that
assembles these, on the engine's one way back from a checkpoint (engine.evaluation.load_trained)."""
import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from core.errors import UserError

CLASS_WEIGHTS = ("trained", "none")


@dataclasses.dataclass
class LoadedRun:
    folder: str                      # the run folder (the checkpoint's folder)
    checkpoint: str
    cfg: object                      # engine.config.Config
    model: torch.nn.Module           # on `device`, weights loaded, eval mode
    criterion: torch.nn.Module       # (logits, targets) -> per-sample losses, class weights set
    train: object                    # training dataset, test-time transform (no augmentation)
    class_counts: List[int]
    class_names: List[str]
    masks: Dict[str, np.ndarray]     # head / medium / tail class masks (data thresholds)
    epochs_trained: Optional[int]
    device: torch.device

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.train.targets)

    def images(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x (n, 3, H, W), y (n,)) of these training samples, on the run's device."""
        items = [self.train[int(i)] for i in indices]
        x = torch.stack([im for im, _ in items]).to(self.device)
        y = torch.as_tensor([int(t) for _, t in items], dtype=torch.long, device=self.device)
        return x, y

    def describe(self) -> dict:
        """The run's identity for result files: folder, checkpoint, data, model, loss, optimizer."""
        c = self.cfg
        return {"run": os.path.abspath(self.folder), "checkpoint": os.path.abspath(self.checkpoint),
                "epochs_trained": self.epochs_trained, "dataset": c.data.name, "imb_factor": c.data.imb_factor,
                "model": c.model.name, "loss": c.loss.name, "optim": c.optim.name, "seed": c.seed,
                "class_counts": self.class_counts, "class_names": self.class_names}


def run_paths(path: str, config: Optional[str] = None) -> Tuple[str, str, str]:
    """A run folder or a checkpoint file -> (folder, checkpoint, config.yaml)."""
    if not os.path.exists(path):
        raise UserError(f"run folder or checkpoint not found: {path}")
    if os.path.isdir(path):
        folder, checkpoint = path, os.path.join(path, "last.pt")
        if not os.path.isfile(checkpoint):
            raise UserError(f"no checkpoint in {path} (expected last.pt, written by train.py after each epoch)")
    else:
        folder, checkpoint = os.path.dirname(os.path.abspath(path)), path
    if config and not os.path.isfile(config):   # before --out is created: a typo must not create folders
        problem = "a folder, not a file" if os.path.isdir(config) else "file not found"
        raise UserError(f"--config {config}: {problem}")
    config = config or os.path.join(folder, "config.yaml")
    if not os.path.isfile(config):
        raise UserError(f"no config.yaml in {folder}; pass --config FILE (the run's resolved config)")
    return folder, checkpoint, config


def load_run(path: str, overrides: Sequence[str] = (), device: str = "auto", class_weights: str = "trained",
             config: Optional[str] = None) -> LoadedRun:
    """Config -> data without augmentation -> model with weights -> criterion.

    `overrides`: --set strings (e.g. data.root=DIR on another machine). `class_weights`: "trained"
    sets the DRW weights in force in the run's last trained epoch, "none" leaves every class at 1.
    """
    # Imported here: the engine pulls in torchvision (seconds to import), which --help, argument
    # errors and a mistyped run folder need not wait for.
    from engine.config import load_config
    from engine.distributed import pick_device
    from engine.evaluation import load_trained
    from engine.metrics import group_masks
    from losses.drw import drw_weights

    if class_weights not in CLASS_WEIGHTS:
        raise UserError(f"class weights must be one of {', '.join(CLASS_WEIGHTS)}, got {class_weights!r}")
    folder, checkpoint, config_path = run_paths(path, config)
    cfg = load_config(config_path, list(overrides))
    dev = pick_device(device, option="--device")
    trained = load_trained(dataclasses.replace(cfg, data=cfg.data.in_process()), checkpoint, dev)
    run = trained.run
    splits, counts, model, criterion = run.splits, run.class_counts, run.model, run.criterion
    _no_augmentation(splits.train)
    epochs = trained.epochs_trained
    if class_weights == "trained" and epochs:
        criterion.set_class_weight(drw_weights(epochs - 1, counts, cfg.loss.drw_epoch, cfg.loss.drw_beta))
    masks = group_masks(counts, cfg.data.head_threshold, cfg.data.tail_threshold)
    return LoadedRun(folder, checkpoint, cfg, model, criterion, splits.train, counts, list(splits.class_names),
                     masks, epochs, dev)


def _no_augmentation(dataset) -> None:
    # List datasets choose their transform by their `train` flag, not by data.augment.
    from data.listfile import ListDataset
    if isinstance(dataset, ListDataset):
        dataset.train = False
