"""Every shipped config loads, validates, builds its model, loss and optimizer, and trains two
steps (at its first and its last epoch, so DRW and rho milestones are in force) on small random
images with the config's own class counts."""
import glob
import os

import pytest
import torch

from conftest import ROOT, counts_for
from engine.config import load_config
from engine.build import build_run

# CLIP rows (configs/clip/) need pretrained weights to build: tests/test_clip_configs.py steps them
# on the tiny random CLIP instead.
CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                 if "_base" not in p and not os.path.relpath(p, ROOT).startswith(os.path.join("configs", "clip")))


def test_there_is_a_config_per_row():
    for ds in ("imagenet_lt", "inat2018"):
        for opt in ("sgd", "sam", "imbsam", "focal_sam"):
            assert f"configs/{ds}/la_{opt}.yaml" in CONFIGS
    for ds in ("cifar10_lt", "cifar100_lt"):
        for loss in ("ce", "la", "ldam_drw", "vs"):
            for opt in ("sgd", "sam", "imbsam", "cc_sam", "focal_sam"):
                assert f"configs/{ds}/{loss}_{opt}.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_and_steps(path):
    cfg = load_config(os.path.join(ROOT, path))
    header = open(os.path.join(ROOT, path)).readline()
    assert header.startswith("#"), "each config starts with a comment naming its table and row"
    counts = counts_for(cfg)
    run = build_run(cfg, load_data=False, class_counts=counts)
    model, criterion, opt, schedule = run.model, run.criterion, run.optimizer, run.epoch_values
    g = torch.Generator().manual_seed(0)
    for epoch in (0, cfg.train.epochs - 1):
        schedule.apply(epoch, opt, criterion)
        x = torch.randn(8, 3, 8, 8, generator=g)
        y = torch.randint(0, len(counts), (8,), generator=g)
        y[0] = len(counts) - 1           # a tail sample: every perturbed pass runs
        loss, logits = opt.step(model, x, y, criterion)
        assert torch.isfinite(loss) and logits.shape == (8, len(counts))
    assert all(torch.isfinite(p).all() for p in model.parameters())
