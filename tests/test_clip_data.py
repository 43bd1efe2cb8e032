"""CLIP preprocessing (data.preprocess: clip) for the in-memory sets and the list datasets."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data import build_data
from data.transforms import ClipTest, ClipTrain
from engine.config import section

# CLIP's published normalisation (OpenAI clip package), written out here on purpose.
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
STEP = (1 / 255) / STD.min().item()                  # one uint8 level after normalisation


def test_test_transform_upsamples_the_whole_cifar_image_to_224():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = ClipTest()(img)
    # Shorter side 32 -> 224 and a 224 centre crop: the whole image, bilinearly upsampled.
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    up = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)[0].round().clamp(0, 255)
    assert out.shape == (3, 224, 224)
    assert (out - (up / 255 - MEAN) / STD).abs().max() <= STEP + 1e-6


def test_train_transform_crops_flips_and_normalises_with_clip_constants():
    colour = np.array([200, 100, 30], dtype=np.uint8)
    img = np.broadcast_to(colour, (32, 32, 3)).copy()
    tf = ClipTrain()
    out = tf(img, np.random.default_rng(1))
    assert out.shape == (3, 224, 224)
    expected = (torch.tensor(colour, dtype=torch.float32).view(3, 1, 1) / 255 - MEAN) / STD
    assert torch.allclose(out, expected.expand(3, 224, 224), atol=1e-5)    # no colour change
    # A left-to-right ramp: crops differ from draw to draw and about half are mirrored.
    ramp = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 32, 3)).copy()
    outs = [tf(ramp, np.random.default_rng(s))[0] for s in range(40)]
    increasing = [bool(o[:, -1].mean() > o[:, 0].mean()) for o in outs]
    assert 8 <= sum(increasing) <= 32
    assert len({(round(float(o[:, 0].mean()), 4), round(float(o[:, -1].mean()), 4)) for o in outs}) > 30


def test_in_memory_sets_follow_data_preprocess():
    kw = dict(name="synthetic", num_classes=3, image_size=16, max_per_class=6, imb_factor=2, test_per_class=2,
              num_workers=0)
    standard = build_data(section("data", **kw), seed=0)
    clip = build_data(section("data", preprocess="clip", **kw), seed=0)
    assert standard.train[0][0].shape == (3, 16, 16)
    assert clip.train[0][0].shape == (3, 224, 224) and clip.test[0][0].shape == (3, 224, 224)
    assert clip.class_names == standard.class_names and clip.class_counts == standard.class_counts


def write_png_tree(root):
    """Two classes of 300 x 100 PNGs: class 0 a flat colour, class 1 red for x < 130, blue after."""
    os.makedirs(root / "img", exist_ok=True)
    flat = np.broadcast_to(np.array([200, 100, 30], np.uint8), (100, 300, 3))
    split = np.zeros((100, 300, 3), np.uint8)
    split[:, :130, 0] = 255
    split[:, 130:, 2] = 255
    Image.fromarray(np.ascontiguousarray(flat)).save(root / "img" / "flat.png")
    Image.fromarray(split).save(root / "img" / "split.png")
    (root / "train.txt").write_text("img/flat.png 0\nimg/split.png 1\n")
    (root / "test.txt").write_text("img/flat.png 0\nimg/split.png 1\n")


@pytest.mark.parametrize("name, preprocess, red_columns", [("imagenet_lt", "clip", 67), ("imagenet_lt", "standard", 61),
                                                          ("inat2018", "clip", 61)])
def test_list_dataset_preprocess(tmp_path, name, preprocess, red_columns):
    write_png_tree(tmp_path)
    cfg = section("data", name=name, root=str(tmp_path), train_list=str(tmp_path / "train.txt"),
                     test_list=str(tmp_path / "test.txt"), num_classes=2, image_size=224, num_workers=0,
                     preprocess=preprocess)
    splits = build_data(cfg, seed=0)
    # Test: shorter side 100 -> 224 (ImageNet-LT CLIP: the crop size, as the official Focal-SAM
    # code's Resize(224)) or 256 (ResNet presets; iNaturalist CLIP: its Resize(224 * 8 // 7)),
    # centre crop 224. The red part ends at x = 130 * 2.24 = 291.2 of 672 (crop starts at 224), or
    # 130 * 2.56 = 332.8 of 768 (crop starts at 272).
    x = splits.test[1][0]
    red = (x[0] > x[2]).float().mean(0)                 # per column: share of red-dominated pixels
    assert x.shape == (3, 224, 224)
    assert abs(int((red > 0.5).sum()) - red_columns) <= 1
    # Train: a flat image stays flat; CLIP preprocessing has no colour jitter, the ImageNet-LT one does.
    flat = (torch.tensor([200.0, 100.0, 30.0]).view(3, 1, 1) / 255 - MEAN) / STD
    got = splits.train[0][0]
    if preprocess == "clip":
        assert torch.allclose(got, flat.expand(3, 224, 224), atol=1e-5)
    else:
        assert not torch.allclose(got, flat.expand(3, 224, 224), atol=1e-2)
