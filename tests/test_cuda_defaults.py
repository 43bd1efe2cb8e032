"""Every shipped config, resolved as it resolves on a CUDA device, trains and evaluates on the CPU.

No GPU runs the suite, so the paths that only a GPU takes are taken here on purpose: `data.loader:
auto` picks the device-resident loader (as on CUDA), the config's own mixed precision runs (CPU
autocast, fp16 with its loss scaler), the config's memory format, and `train.capture: step` wherever
a GPU could capture the step (the real CUDA graph is replaced by the stand-in recorder of
conftest.py; everything around it is the trainer's own code). Each config trains a few steps on
tiny data shaped like its own (synthetic images with the set's class count for CIFAR, a JPEG tree
for the list sets; the tiny CLIP for ViT-B/16, whose weights the tests do not have), then is
evaluated as eval.py evaluates it.

Configs that differ only in numbers (rho, gamma, lr, epochs, class counts) or in which list / CIFAR
set they read take the same code path: one of each such group trains here (58 of the 101), and a
test checks that every shipped config belongs to a group that does.
"""
import glob
import json
import os

import pytest
import torch

import engine.capture
import engine.loaders
from conftest import ROOT, write_tree
from data.device_loader import DeviceLoader
from engine import trainer
from engine.evaluation import evaluate_checkpoint
from engine.capture import why_not_capturable
from data import DATASETS
from engine.config import config_to_dict, load_config
from optim import optimizer_class

CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"),
                                                              recursive=True) if "_base" not in p)
IN_MEMORY_CLASSES = {"cifar10_lt": 10, "cifar100_lt": 100, "synthetic": None}
PATHS = ("root", "train_list", "test_list", "class_names", "clip_weights")   # files: not a code path


def code_path(tree, key=""):
    """The config with every number, file path and data set replaced by its kind: configs with
    the same code_path run the same code (strings, booleans and unset keys are kept)."""
    if isinstance(tree, dict):
        return {k: code_path(v, k) for k, v in tree.items() if k not in PATHS}
    if key == "name" and tree in DATASETS:
        return "in-memory" if tree in IN_MEMORY_CLASSES else "list"
    if isinstance(tree, (list, tuple)):
        return "list" if tree else "[]"
    return "number" if isinstance(tree, (int, float)) and not isinstance(tree, bool) else tree


def _groups():
    groups = {}
    for path in CONFIGS:
        key = json.dumps(code_path(config_to_dict(load_config(os.path.join(ROOT, path)))), sort_keys=True)
        groups.setdefault(key, []).append(path)
    return groups


GROUPS = _groups()


@pytest.fixture(scope="module")
def jpeg_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("lists")
    return str(root), write_tree(str(root), counts=(8, 6, 4, 2))   # 5 full batches of 4: capture after 3


def tiny_overrides(cfg, tree, steps: int) -> list:
    """The config's own settings on tiny data, tiny models and a short epoch. The learning rate
    follows the batch down (the linear scaling rule): ResNet-50 at lr 0.1 on 4 images diverges in
    one step."""
    out = ["train.epochs=1", "train.batch_size=4", "train.eval_batch_size=32", f"train.max_steps_per_epoch={steps}",
           f"optim.lr={cfg.optim.lr * 4 / cfg.train.batch_size}",
           "train.device=cpu", "train.progress=off", "data.num_workers=0", "~optim.rho_milestones", "~loss.drw_epoch"]
    if cfg.data.name in ("cifar10_lt", "cifar100_lt"):
        # Synthetic images through the same in-memory dataset, transforms and loaders; counts 4..2.
        out += ["data.name=synthetic", "~data.download", f"data.num_classes={IN_MEMORY_CLASSES[cfg.data.name]}",
                "data.image_size=32", "data.max_per_class=4", "data.imb_factor=2", "data.test_per_class=1",
                "data.head_threshold=3", "data.tail_threshold=3"]
    elif cfg.data.name not in IN_MEMORY_CLASSES:
        root, lists = tree
        out += [f"data.root={root}", f"data.train_list={lists['train']}", f"data.test_list={lists['val']}",
                "data.num_classes=4", "~data.class_names", "data.head_threshold=5", "data.tail_threshold=2"]
        if cfg.data.preprocess != "clip":
            out.append("data.image_size=32")
    if cfg.model.name.startswith("clip"):
        out += ["model.name=clip_tiny", "~model.clip_weights", "~model.clip_download"]
    if cfg.model.name == "resnet50":     # the same torchvision ResNet class at half the weights
        out.append("model.name=resnet18")
    return out


def capturable_on_cuda(cfg) -> bool:
    p = [torch.nn.Parameter(torch.zeros(1))]
    kwargs = {"class_counts": [2, 1]} if cfg.optim.name != "sgd" else {}
    try:
        opt = optimizer_class(cfg.optim.name)(p, lr=0.1, **kwargs)
    except TypeError:
        return False
    return why_not_capturable(opt, cfg.train.amp, torch.device("cuda"), False) == ""


@pytest.mark.parametrize("path", [g[0] for g in GROUPS.values()])
def test_config_trains_and_evaluates_as_on_cuda(path, jpeg_tree, tmp_path, monkeypatch, cuda_graphs_on_cpu):
    shipped = load_config(os.path.join(ROOT, path))
    capture = capturable_on_cuda(shipped)   # then 3 eager warm-up steps, one captured, replayed once
    cfg = load_config(os.path.join(ROOT, path), tiny_overrides(shipped, jpeg_tree, 4 if capture else 2)
                      + [f"train.capture={'step' if capture else 'none'}"])
    kinds, steppers = [], []
    real_kind, real_capture = engine.loaders.loader_kind, engine.capture.CapturedStep
    monkeypatch.setattr(engine.loaders, "loader_kind",          # `auto` as it resolves on CUDA
                        lambda data_cfg, device: kinds.append(real_kind(data_cfg, torch.device("cuda"))) or kinds[-1])

    class Spy(real_capture):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            steppers.append(self)
    monkeypatch.setattr(trainer, "CapturedStep", Spy)

    final = trainer.fit(cfg, str(tmp_path / "run"))
    report = evaluate_checkpoint(cfg, str(tmp_path / "run" / "last.pt"), str(tmp_path / "eval.json"))

    in_memory = shipped.data.name in IN_MEMORY_CLASSES
    assert kinds and set(kinds) == {"device" if in_memory else "workers"}, kinds
    assert bool(steppers) == capture and all(s.captures == 1 for s in steppers)
    for r in (final, report, json.loads((tmp_path / "eval.json").read_text())):
        assert 0 <= r["top1"] <= 100 and len(r["per_class_acc"]) == len(r["class_counts"])
    assert final["top1"] == report["top1"]          # eval.py's report is the run's own last evaluation


def test_every_shipped_config_is_covered():
    """Every shipped config (ResNet rows, CLIP rows, the smoke config) is in one group, and each
    group's first config trains above; configs differing in a string option are in different ones."""
    assert len(CONFIGS) >= 100 and "configs/smoke.yaml" in CONFIGS
    assert sorted(p for g in GROUPS.values() for p in g) == CONFIGS
    fp16 = {json.loads(k)["train"]["amp"] for k, g in GROUPS.items() if g[0].startswith("configs/clip/")}
    assert fp16 == {"fp16", "none"}
    optims = {json.loads(k)["optim"]["name"] for k in GROUPS}
    assert optims >= {"sgd", "sam", "imbsam", "cc_sam", "focal_sam", "gsam", "looksam", "rwp", "sse_sam"}
    assert {json.loads(k)["optim"].get("perturb") for k in GROUPS} >= {"sam", "asam", "friendly"}


def test_device_loader_is_what_auto_picks_on_cuda_for_in_memory_sets():
    cfg = load_config(os.path.join(ROOT, "configs/clip/cifar100_lt/lift_focal_sam.yaml"))
    assert engine.loaders.loader_kind(cfg.data, torch.device("cuda")) == "device"
    assert engine.loaders.loader_kind(cfg.data, torch.device("cpu")) == "workers"
    assert isinstance(DeviceLoader, type)
