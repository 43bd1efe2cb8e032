"""Data: the long-tailed profiles, the CIFAR pickle loader on files in the real format, the
synthetic set, the CIFAR transforms and the missing-data errors."""
import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from conftest import full_size_labels, pixel_pattern, write_cifar
from data import build_data
from data.arrays import ArrayDataset, long_tailed_counts, long_tailed_indices
from data.cifar import cifar_lt, load_cifar
from data.transforms import CIFAR_MEAN, CIFAR_STD, CifarTest, CifarTrain
from engine.config import section
from core.errors import UserError

# Totals of the standard CIFAR-LT benchmarks (Cao et al. 2019 and the papers that follow them).
TOTALS = {("cifar10", 200): 11203, ("cifar10", 100): 12406, ("cifar10", 50): 13996, ("cifar10", 10): 20431,
          ("cifar100", 200): 9502, ("cifar100", 100): 10847, ("cifar100", 50): 12608, ("cifar100", 10): 19573}


@pytest.mark.parametrize("name, imb", sorted(TOTALS))
def test_long_tailed_counts_match_the_benchmarks(name, imb):
    n_max, classes = (5000, 10) if name == "cifar10" else (500, 100)
    counts = long_tailed_counts(n_max, classes, imb)
    assert sum(counts) == TOTALS[(name, imb)]
    assert counts[0] == n_max and counts[-1] == int(n_max / imb)
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_cifar10_if100_profile_by_hand():
    assert long_tailed_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_subset_is_the_cao_et_al_subset():
    labels = full_size_labels(10, 50)
    counts = long_tailed_counts(50, 10, 10)
    # Reference: the original IMBALANCECIFAR loop with numpy's global legacy generator.
    np.random.seed(0)
    expected = []
    for k, n in enumerate(counts):
        idx = np.where(labels == k)[0]
        np.random.shuffle(idx)
        expected.extend(idx[:n])
    assert np.array_equal(long_tailed_indices(labels, counts, seed=0), expected)
    with pytest.raises(ValueError, match="fewer than"):
        long_tailed_indices(labels, [60] * 10)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(str(root), "cifar10", full_size_labels(10, 5000), np.repeat(np.arange(10), 3))
    write_cifar(str(root), "cifar100", full_size_labels(100, 500), np.repeat(np.arange(100), 2))
    return str(root)


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_loader_reads_the_pickle_layout(cifar_root, name, classes):
    train_x, train_y, test_x, test_y, names = load_cifar(name, cifar_root, download=False)
    assert train_x.shape == (50000, 32, 32, 3) and train_x.dtype == np.uint8
    assert np.array_equal(train_y, full_size_labels(classes, 50000 // classes))
    # Rows are CHW planes: pixel (i, h, w, c) must hold (i + 7c) % 256 after the transpose.
    for i in (0, 123, 49999):
        assert np.array_equal(train_x[i], pixel_pattern(np.array([i]))[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert len(test_x) == len(test_y) == 3 * 10 if name == "cifar10" else 2 * 100
    assert len(names) == classes and names[0] in ("c0", "f0")


@pytest.mark.parametrize("name, imb", [("cifar10", 100), ("cifar10", 10), ("cifar100", 200), ("cifar100", 50)])
def test_cifar_lt_subset_counts(cifar_root, name, imb):
    train_x, train_y, _, _, _, counts = cifar_lt(name, cifar_root, False, imb)
    assert len(train_y) == sum(counts) == TOTALS[(name, imb)]
    assert np.array_equal(np.bincount(train_y), counts)


def test_build_data_cifar10_lt(cifar_root):
    splits = build_data(section("data", name="cifar10_lt", root=cifar_root, download=False), seed=0)
    assert splits.class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label.dtype == torch.int64
    assert len(splits.test) == 30


def test_missing_data_without_download(tmp_path):
    with pytest.raises(UserError) as e:
        load_cifar("cifar10", str(tmp_path / "nowhere"), download=False)
    msg = str(e.value)
    assert "cifar-10-batches-py/{data_batch_1" in msg and "data.root" in msg and "\n" not in msg


def test_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match=r"download failed \(URLError\); place the files as <data.root>/cifar-100-python"):
        load_cifar("cifar100", str(tmp_path), download=True)


def test_corrupt_pickle_names_the_file(tmp_path):
    folder = write_cifar(str(tmp_path), "cifar10", np.repeat(np.arange(10), 2), np.arange(10))
    with open(f"{folder}/data_batch_3", "wb") as f:
        f.write(b"\x80\x02garbage")
    with pytest.raises(UserError, match="data_batch_3"):
        load_cifar("cifar10", str(tmp_path), download=False)


def test_synthetic_is_deterministic_and_long_tailed():
    cfg = section("data", name="synthetic", num_classes=5, image_size=8, max_per_class=40, imb_factor=8, test_per_class=3)
    a, b = build_data(cfg, seed=0), build_data(cfg, seed=1)
    assert a.class_counts == long_tailed_counts(40, 5, 8) == [40, 23, 14, 8, 5]
    assert np.array_equal(a.train.images, b.train.images)  # data do not depend on the run seed
    assert np.array_equal(np.bincount(a.test.labels), [3] * 5)


def test_cifar_train_transform_is_a_padded_crop_and_flip():
    img = np.random.RandomState(0).randint(0, 256, (32, 32, 3)).astype(np.uint8)
    mean, std = np.array(CIFAR_MEAN), np.array(CIFAR_STD)
    seen_flip = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        top, left = rng.integers(0, 9, size=2)
        flip = rng.random() < 0.5
        padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
        expect = padded[top:top + 32, left:left + 32]
        expect = expect[:, ::-1] if flip else expect
        expect = ((expect / 255.0 - mean) / std).transpose(2, 0, 1)
        out = CifarTrain()(img, np.random.default_rng(seed))
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), expect, atol=1e-5)
        seen_flip.add(flip)
    assert seen_flip == {True, False}


def test_augmentation_is_keyed_on_seed_epoch_index():
    images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3)).astype(np.uint8)
    ds = ArrayDataset(images, np.arange(6), CifarTrain(), seed=5)
    first = ds[3][0]
    assert torch.equal(ds[3][0], first)          # same (seed, epoch, index): same image
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], first)      # next epoch: new crop
    test = ArrayDataset(images, np.arange(6), CifarTest())
    np.testing.assert_allclose(test[2][0].numpy().transpose(1, 2, 0), (images[2] / 255.0 - CIFAR_MEAN) / CIFAR_STD,
                               atol=1e-5)
