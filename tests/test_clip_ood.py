"""Out-of-distribution evaluation (data/ood.py, engine/ood.py, eval.py --ood): corruption errors
on hand-computed numbers, class-folder scanning, and eval.py on small folder trees with a
checkpoint whose prediction is known (every image -> class 2)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, run_cli
from core.errors import UserError
from data.ood import (ALEXNET_ERROR, CORRUPTIONS, SEVERITIES, corruption_errors, imagenet_c_subsets, read_wnids,
                      scan_class_folders)
from engine.checkpoint import save_checkpoint
from engine.config import load_config, save_config
from models import build_model


def test_corruption_error_by_hand():
    # Gaussian noise: errors 50..90 % sum to 350; AlexNet's mean 0.886428 -> 5 x 88.6428 = 443.214.
    # Brightness: 30..50 % sum to 200 against 5 x 56.4592 = 282.296.
    errors = {("gaussian_noise", s): e for s, e in zip(SEVERITIES, (50, 60, 70, 80, 90))}
    errors.update({("brightness", s): e for s, e in zip(SEVERITIES, (30, 35, 40, 45, 50))})
    errors[("fog", 1)] = 10.0                       # one severity only: no CE for fog
    out = corruption_errors(errors)
    assert out["ce"] == pytest.approx({"gaussian_noise": 78.96862, "brightness": 70.84762}, abs=1e-4)
    assert out["mean_error"] == pytest.approx({"gaussian_noise": 70.0, "brightness": 40.0})
    assert out["mce"] is None                       # mCE needs all 15 corruptions


def test_mce_is_the_mean_of_the_fifteen_ce():
    # Errors at a fixed multiple f_c of AlexNet's at every severity give CE_c = 100 f_c exactly.
    factors = {c: 0.5 + 0.02 * i for i, c in enumerate(CORRUPTIONS)}
    errors = {(c, s): 100 * factors[c] * ALEXNET_ERROR[c] for c in CORRUPTIONS for s in SEVERITIES}
    out = corruption_errors(errors)
    assert out["ce"] == pytest.approx({c: 100 * f for c, f in factors.items()})
    assert out["mce"] == pytest.approx(100 * (0.5 + 0.02 * 7))          # mean of 0.5 + 0.02 i, i = 0..14
    assert len(CORRUPTIONS) == 15 and set(CORRUPTIONS) == set(ALEXNET_ERROR)


def image(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.RandomState(seed).randint(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)


WNIDS = ["n00000001", "n00000002", "n00000003"]


def test_class_folders_by_wordnet_id_or_index(tmp_path):
    image(tmp_path / "s" / "n00000003" / "a.png")
    image(tmp_path / "s" / "n00000001" / "deeper" / "b.JPEG")
    (tmp_path / "s" / "n00000001" / "notes.txt").write_text("not an image")
    image(tmp_path / "s" / "1" / "c.png")             # ImageNetV2 names folders by label index
    paths, labels = scan_class_folders(str(tmp_path / "s"), WNIDS)
    assert sorted(zip(paths, labels)) == [("1/c.png", 1), ("n00000001/deeper/b.JPEG", 0), ("n00000003/a.png", 2)]
    image(tmp_path / "s" / "n99999999" / "d.png")
    with pytest.raises(UserError, match="n99999999: a class folder must be named"):
        scan_class_folders(str(tmp_path / "s"), WNIDS)
    with pytest.raises(UserError, match="does not exist"):
        scan_class_folders(str(tmp_path / "missing"), WNIDS)


def test_class_list_and_imagenet_c_layout(tmp_path):
    names = tmp_path / "classnames.txt"
    names.write_text("n00000001 cat\nn00000002 dog\nn00000003 sea turtle\n")
    assert read_wnids(str(names), 3) == WNIDS
    with pytest.raises(UserError, match="expected 4 lines"):
        read_wnids(str(names), 4)
    for sub in ("gaussian_noise/1", "gaussian_noise/5", "brightness/2", "speckle_noise/1", "fog/extra"):
        (tmp_path / "c" / sub).mkdir(parents=True)
    found = imagenet_c_subsets(str(tmp_path / "c"))
    assert sorted(found) == [("brightness", 2), ("gaussian_noise", 1), ("gaussian_noise", 5)]   # the 15 only


@pytest.fixture
def ood_run(tmp_path):
    """A tiny-CLIP ImageNet-LT run whose features are one constant vector, the head row of class 2:
    every image is predicted as class 2. Counts 30 / 10 / 2: head, medium, tail."""
    (tmp_path / "classnames.txt").write_text("n00000001 cat\nn00000002 dog\nn00000003 bird\n")
    cfg_path = tmp_path / "run" / "config.yaml"
    cfg_path.parent.mkdir()
    cfg_path.write_text(
        f"data: {{name: imagenet_lt, root: {tmp_path}, train_list: {tmp_path}/train.txt, test_list: {tmp_path}/t.txt, "
        f"class_names: {tmp_path}/classnames.txt, num_classes: 3, image_size: 224, preprocess: clip, "
        "head_threshold: 20, tail_threshold: 5, num_workers: 0}\n"
        "model: {name: clip_tiny, finetune: lift}\nloss: {name: la}\noptim: {name: sgd, lr: 0.01}\n"
        "train: {epochs: 1, batch_size: 4, eval_batch_size: 4, device: cpu}\n")
    cfg = load_config(str(cfg_path))
    model = build_model(cfg.model, 3, ["cat", "dog", "bird"])
    with torch.no_grad():
        model.visual.ln_post.weight.zero_()
        model.visual.ln_post.bias.copy_(model.classifier.weight[2])
    save_checkpoint(str(tmp_path / "run" / "last.pt"), {"model": model.state_dict(), "class_counts": [30, 10, 2],
                                                         "epoch": 1})
    save_config(cfg, str(cfg_path))
    # Sketch by WordNet id: 2 + 1 + 3 images; V2 by index: 1 of class 0, 2 of class 2.
    for i, (cls, n) in enumerate((("n00000001", 2), ("n00000002", 1), ("n00000003", 3))):
        for j in range(n):
            image(tmp_path / "sketch" / cls / f"{j}.png", seed=10 * i + j)
    image(tmp_path / "v2" / "0" / "a.png")
    for j in range(2):
        image(tmp_path / "v2" / "2" / f"{j}.jpeg", seed=j)
    # ImageNet-C: three subsets (and an extra corruption outside the 15, ignored).
    image(tmp_path / "c" / "gaussian_noise" / "1" / "n00000001" / "x.png")
    image(tmp_path / "c" / "gaussian_noise" / "1" / "n00000003" / "y.png")
    image(tmp_path / "c" / "gaussian_noise" / "2" / "n00000001" / "z.png")
    image(tmp_path / "c" / "brightness" / "3" / "n00000003" / "w.png")
    image(tmp_path / "c" / "spatter" / "1" / "n00000003" / "v.png")
    return tmp_path


def test_eval_py_ood_reports_each_set(ood_run):
    t = ood_run
    out = t / "ood.json"
    proc = run_cli("eval.py", "--checkpoint", str(t / "run" / "last.pt"), "--out", str(out),
                   "--ood", f"imagenet_sketch={t / 'sketch'}", "--ood", f"imagenet_v2={t / 'v2'}",
                   "--ood", f"imagenet_c={t / 'c'}")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    # Everything is class 2: per-class accuracy (0, 0, 100) on the sketches, (0, -, 100) on V2.
    assert r["imagenet_sketch"] == pytest.approx({"top1": 100 / 3, "head": 0.0, "medium": 0.0, "tail": 100.0,
                                                  "accuracy": 50.0, "num_test": 6})
    assert r["imagenet_v2"] == pytest.approx({"top1": 50.0, "head": 0.0, "medium": None, "tail": 100.0,
                                              "accuracy": 200 / 3, "num_test": 3})
    c = r["imagenet_c"]
    assert sorted(c["subsets"]) == ["brightness/3", "gaussian_noise/1", "gaussian_noise/2"]
    # Subset accuracies 50 / 0 / 100 (top-1 50 / 0 / 100): their means; no full corruption, no CE.
    assert (c["top1"], c["accuracy"], c["head"], c["tail"]) == pytest.approx((50.0, 50.0, 0.0, 100.0))
    assert c["medium"] is None and c["num_subsets"] == 3 and c["ce"] == {} and c["mce"] is None
    assert "imagenet_sketch: top1 33.33" in proc.stdout


def test_eval_py_ood_bad_arguments(ood_run):
    ckpt = str(ood_run / "run" / "last.pt")
    proc = run_cli("eval.py", "--checkpoint", ckpt, "--ood", "sketch=/x")
    assert_one_line_error(proc, "--ood expects NAME=DIR", "imagenet_sketch")
    proc = run_cli("eval.py", "--checkpoint", ckpt, "--ood", f"imagenet_c={ood_run / 'sketch'}")
    assert_one_line_error(proc, "holds no ImageNet-C corruption folder")
