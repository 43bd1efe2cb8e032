"""Every foundation-model config (configs/clip/) loads, carries the paper's and the official
code's settings, and takes a step on the tiny random CLIP that stands in for ViT-B/16 (the real
weights are not available to the tests)."""
import copy
import glob
import os

import pytest
import torch

from conftest import ROOT, counts_for
from engine.config import load_config
from engine.epoch_values import EpochValues
from losses import build_loss
from models import build_model
from optim import build_optimizer

CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "clip", "*", "*.yaml"))
                 if "_base" not in p)
TINY = ["model.name=clip_tiny", "~model.clip_weights"]
DATASETS = ("cifar10_lt", "cifar100_lt", "imagenet_lt", "inat2018")
ROWS = [f"{m}_{o}" for m in ("fft", "lift") for o in ("sgd", "sam", "imbsam", "cc_sam", "focal_sam")]
# Official scongl/Focal-SAM scripts/*.sh, "Fine-tune CLIP" lines: (rho, flat_gamma, sharpness).
OFFICIAL_FOCAL = {"cifar10_lt": (0.05, 1.5, 0.7), "cifar100_lt": (0.05, 5.5, 0.8),
                  "imagenet_lt": (0.05, 0.5, 0.8), "inat2018": (0.02, 0.2, 1.0)}


def test_a_config_per_row_of_the_foundation_tables():
    thirty = [f"configs/clip/{d}/{m}_sam_30ep.yaml" for d in ("cifar100_lt", "imagenet_lt") for m in ("fft", "lift")]
    assert CONFIGS == sorted([f"configs/clip/{d}/{r}.yaml" for d in DATASETS for r in ROWS] + thirty)   # + 8F / 9F


@pytest.mark.parametrize("path", CONFIGS)
def test_settings_follow_the_paper_and_the_official_code(path):
    cfg = load_config(os.path.join(ROOT, path))
    dataset, row = path.split("/")[2], os.path.basename(path)[:-5]
    mode, optim = row.split("_", 1)
    epochs = 20
    if optim.endswith("_30ep"):      # Tables 8F/9F: SAM at 1.5x the epochs, otherwise its 20-epoch row
        optim, epochs = optim[:-len("_30ep")], 30
    assert open(os.path.join(ROOT, path)).readline().startswith("# Paper Table")
    assert (cfg.model.name, cfg.data.name, cfg.data.preprocess, cfg.loss.name) == ("clip_vit_b16", dataset, "clip", "la")
    assert cfg.model.finetune == {"fft": "full", "lift": "lift"}[mode]
    assert cfg.optim.lr == {"fft": 0.001, "lift": 0.01}[mode]               # App. C.4
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == (optim, 0.9, 5e-4)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.model.cosine_scale) == (epochs, 128, 25.0)
    assert cfg.model.prompts == ("a photo of a {}.",) and cfg.model.adapter_dim == 0
    assert cfg.train.amp == ("none" if dataset == "inat2018" else "fp16")   # official iNaturalist: --prec fp32
    # fp32 weights (ours; the official --prec fp16 is model.precision=fp16), activation from the weights
    assert (cfg.model.precision, cfg.model.activation) == ("fp32", "auto")
    rho, gamma, lam = OFFICIAL_FOCAL[dataset]
    if optim != "sgd":
        assert cfg.optim.rho == rho and cfg.optim.rho_milestones == ()
    if optim == "focal_sam":
        assert (cfg.optim.gamma, cfg.optim.lam) == (gamma, lam)


_BUILT = {}


def tiny_model(cfg, num_classes):
    """One tiny CLIP per (classes, mode), copied for each config: the text encoding of 8,142
    prompts is the slow part of building, and it does not depend on the optimizer."""
    key = (num_classes, cfg.model.finetune)
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = build_model(cfg.model, num_classes, [f"class {k}" for k in range(num_classes)])
    return copy.deepcopy(_BUILT[key])


@pytest.mark.parametrize("path", CONFIGS)
def test_config_steps_on_the_tiny_clip(path):
    cfg = load_config(os.path.join(ROOT, path), TINY)
    counts = counts_for(cfg)
    model = tiny_model(cfg, len(counts))
    criterion = build_loss(cfg.loss, counts)
    opt = build_optimizer(cfg.optim, model.parameters(), counts, "none")
    schedule = EpochValues(cfg, counts)
    # One step at the last epoch (no CLIP row has DRW or rho milestones), on a head and a tail
    # sample so that every pass of every optimizer runs.
    schedule.apply(cfg.train.epochs - 1, opt, criterion)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([len(counts) - 1, 0])
    loss, logits = opt.step(model, x, y, criterion)
    assert torch.isfinite(loss) and logits.shape == (2, len(counts))
    assert all(torch.isfinite(p).all() for p in model.parameters())
