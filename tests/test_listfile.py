"""ImageNet-LT / iNaturalist data path on tiny JPEG trees in the real layout that the tests write:
counts, labels, transforms for every decode mode, a two-step ResNet-50 run, and each error path."""
import json
import os

import numpy as np
import pytest
import torch
import yaml

from conftest import assert_one_line_error, run_cli, write_tree
from data import build_data
from data.augment import draw_crop, draw_train_params, eval_resize
from engine.config import load_config, section
from core.errors import UserError
from engine.loaders import DeviceStageLoader, eval_loader, train_loader
from engine.distributed import DistInfo

COUNTS = [6, 4, 2, 1]


def data_cfg(root, lists, **kw):
    return section("data", name=kw.pop("name", "imagenet_lt"), root=str(root), train_list=lists["train"],
                      test_list=lists["val"], num_classes=4, image_size=32, head_threshold=5, tail_threshold=2,
                      num_workers=0, **kw)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imagenet_lt"
    return root, write_tree(str(root))


def test_counts_labels_and_shapes(tree):
    root, lists = tree
    splits = build_data(data_cfg(root, lists), seed=0)
    assert splits.class_counts == COUNTS
    assert len(splits.test) == 8 and splits.test.labels == [0, 0, 1, 1, 2, 2, 3, 3]
    for ds in (splits.train, splits.test):
        x, y = ds[1]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert eval_resize(224) == 256


def test_decode_modes_agree(tree):
    root, lists = tree
    info = DistInfo(device=torch.device("cpu"))
    tv = build_data(data_cfg(root, lists, decode="torchvision"), seed=3)
    dev = build_data(data_cfg(root, lists, decode="device"), seed=3)
    pil = build_data(data_cfg(root, lists, decode="pil"), seed=3)
    cfg = data_cfg(root, lists)
    for a, b in ((tv.train, dev.train), (tv.test, dev.test)):
        loader_b = eval_loader(b, 13, info, cfg)                      # order = index order
        assert isinstance(loader_b, DeviceStageLoader)
        xb, yb = next(iter(loader_b))
        xa = torch.stack([a[i][0] for i in range(len(yb))])
        assert xb.shape == xa.shape and xb.dtype == torch.float32
        torch.testing.assert_close(xb, xa, rtol=0, atol=1e-5)       # same decoder, same parameters
    # PIL decodes and resizes with other code: same crop and flip, small pixel differences only.
    diff = (pil.train[0][0] - tv.train[0][0]).abs().mean().item()
    assert diff < 0.15, diff


def test_augmentation_is_keyed_and_jitter_is_imagenet_only(tree):
    root, lists = tree
    train = build_data(data_cfg(root, lists), seed=0).train
    first = train[2][0]
    assert torch.equal(train[2][0], first)
    train.set_epoch(1)
    assert not torch.equal(train[2][0], first)
    assert build_data(data_cfg(root, lists), seed=0).train.jitter == 0.4
    assert build_data(data_cfg(root, lists, name="inat2018"), seed=0).train.jitter == 0.0
    params = draw_train_params(np.random.default_rng(0), 100, 80, jitter=0.4)
    assert sorted(op for op, _ in params.jitter) == [0, 1, 2] and all(0.6 <= f <= 1.4 for _, f in params.jitter)


def test_random_resized_crop_parameters_stay_in_range():
    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        top, left, ch, cw = draw_crop(rng, w, h)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w and ch > 0 and cw > 0
    assert draw_crop(np.random.default_rng(0), 1000, 10) == (0, (1000 - 13) // 2, 10, 13)   # fallback: ratio 4/3


def test_persistent_workers_see_the_epoch(tree):
    root, lists = tree
    cfg = data_cfg(root, lists).__class__(**{**data_cfg(root, lists).__dict__, "num_workers": 1})
    info = DistInfo(device=torch.device("cpu"))
    splits = build_data(cfg, seed=0)
    loader = train_loader(splits.train, 13, info, 0, cfg, drop_last=False)
    batches = []
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        splits.train.set_epoch(epoch)
        batches.append(next(iter(loader)))
    splits.train.set_epoch(1)
    order = list(iter(loader.sampler))
    expected = torch.stack([splits.train[i][0] for i in order])
    torch.testing.assert_close(batches[1][0], expected)


def write_config(tmp_path, root, lists, **data):
    cfg = {"data": {"name": "imagenet_lt", "root": str(root), "train_list": lists["train"], "test_list": lists["val"],
                    "num_classes": 4, "image_size": 32, "head_threshold": 5, "tail_threshold": 2, "num_workers": 0,
                    **data},
           "model": {"name": "resnet50"}, "loss": {"name": "la"},
           "optim": {"name": "focal_sam", "lr": 0.01, "rho": 0.1, "gamma": 0.8, "lam": 0.8},
           "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "eval_batch_size": 8, "progress": "off"}}
    path = tmp_path / "large.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_resnet50_trains_two_steps(tree, tmp_path):
    import engine.trainer as trainer
    root, lists = tree
    cfg = load_config(write_config(tmp_path, root, lists, decode="device"))
    final = trainer.fit(cfg, str(tmp_path / "run"))
    assert final["class_counts"] == COUNTS and final["num_test"] == 8
    assert final["group_sizes"] == {"head": 1, "medium": 2, "tail": 1}
    assert json.loads((tmp_path / "run" / "final.json").read_text())["run"]["model"] == "resnet50"


def test_missing_train_list_names_the_command(tree):
    root, lists = tree
    with pytest.raises(UserError, match=r"not found; make it with: python scripts/get_imagenet_lt_list.py"):
        build_data(data_cfg(root, {**lists, "train": str(root / "nope.txt")}), seed=0)
    with pytest.raises(UserError, match=r"make_inat2018_lists.py"):
        build_data(data_cfg(root, {**lists, "train": str(root / "nope.txt")}, name="inat2018"), seed=0)


@pytest.mark.parametrize("line, fragment", [
    ("train/n00000/t_0.JPEG", "train.txt:3: expected '<relative/path> <label>'"),
    ("train/n00000/t_0.JPEG seven", "train.txt:3: label 'seven' is not an integer"),
    ("train/n00000/t_0.JPEG 9", "train.txt:3: label 9 is outside 0..3"),
    ("../outside.JPEG 0", "train.txt:3: path '../outside.JPEG' leaves the data root"),
    ("/etc/passwd 0", "train.txt:3: absolute path '/etc/passwd' is not allowed"),
])
def test_bad_list_lines(tree, line, fragment):
    root, lists = tree
    text = open(lists["train"]).read().splitlines()
    text.insert(2, line)
    open(lists["train"], "w").write("\n".join(text) + "\n")
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build_data(data_cfg(root, lists), seed=0)


def test_missing_image_checked_before_training(tree, tmp_path):
    root, lists = tree
    os.remove(root / "train" / "n00001" / "t_2.JPEG")
    proc = run_cli("train.py", "--config", write_config(tmp_path, root, lists, check_files=True), "--out",
                   str(tmp_path / "r1"), "--set", "train.progress=off")
    assert_one_line_error(proc, "missing or unreadable image train/n00001/t_2.JPEG", "line 9 of", "data.root=")
    assert not (tmp_path / "r1" / "last.pt").exists()


def test_unreadable_image_reported_at_its_batch_from_a_worker(tree, tmp_path):
    root, lists = tree
    (root / "train" / "n00000" / "t_3.JPEG").write_bytes(b"not a jpeg at all")
    for i in range(6):
        if i != 3:
            os.remove(root / "train" / "n00000" / f"t_{i}.JPEG")
    with open(lists["train"], "w") as f:       # only the corrupt image in the training list
        f.write("train/n00000/t_3.JPEG 0\ntrain/n00001/t_0.JPEG 1\ntrain/n00002/t_0.JPEG 2\ntrain/n00003/t_0.JPEG 3\n")
    proc = run_cli("train.py", "--config", write_config(tmp_path, root, lists, num_workers=1, decode="pil"),
                   "--out", str(tmp_path / "r2"))
    assert_one_line_error(proc, "cannot read image train/n00000/t_3.JPEG", "line 1 of", "data.root=")


def test_root_that_is_not_a_folder(tree):
    root, lists = tree
    with pytest.raises(UserError, match="is not a folder"):
        build_data(data_cfg(root / "missing", lists), seed=0)
