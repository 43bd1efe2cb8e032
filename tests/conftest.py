"""Shared test helpers: CIFAR pickles in the real on-disk format, tiny configs, CLI runner."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pixel_pattern(index: np.ndarray) -> np.ndarray:
    """Row i of a fake CIFAR batch: channel c holds (i + 7c) % 256, so layout errors show."""
    rows = (index[:, None, None] + 7 * np.arange(3)[None, :, None]) % 256
    return np.broadcast_to(rows, (len(index), 3, 1024)).reshape(len(index), 3072).astype(np.uint8)


def write_cifar(root: str, name: str, labels_train: np.ndarray, labels_test: np.ndarray) -> str:
    """Write CIFAR-10 (`cifar-10-batches-py`) or CIFAR-100 (`cifar-100-python`) pickles as the
    originals are: bytes keys, uint8 (N, 3072) data in CHW row order, protocol 2."""
    def dump(obj, path):
        with open(path, "wb") as f:
            pickle.dump({k.encode(): v for k, v in obj.items()}, f, protocol=2)

    if name == "cifar10":
        folder = os.path.join(root, "cifar-10-batches-py")
        os.makedirs(folder, exist_ok=True)
        for b, part in enumerate(np.array_split(np.arange(len(labels_train)), 5)):
            dump({"data": pixel_pattern(part), "labels": [int(x) for x in labels_train[part]],
                  "batch_label": b"training batch"}, os.path.join(folder, f"data_batch_{b + 1}"))
        dump({"data": pixel_pattern(np.arange(len(labels_test))), "labels": [int(x) for x in labels_test]},
             os.path.join(folder, "test_batch"))
        dump({"label_names": [f"c{k}".encode() for k in range(10)]}, os.path.join(folder, "batches.meta"))
    else:
        folder = os.path.join(root, "cifar-100-python")
        os.makedirs(folder, exist_ok=True)
        dump({"data": pixel_pattern(np.arange(len(labels_train))), "fine_labels": [int(x) for x in labels_train],
              "coarse_labels": [0] * len(labels_train)}, os.path.join(folder, "train"))
        dump({"data": pixel_pattern(np.arange(len(labels_test))), "fine_labels": [int(x) for x in labels_test],
              "coarse_labels": [0] * len(labels_test)}, os.path.join(folder, "test"))
        dump({"fine_label_names": [f"f{k}".encode() for k in range(100)]}, os.path.join(folder, "meta"))
    return folder


def full_size_labels(num_classes: int, per_class: int, seed: int = 1) -> np.ndarray:
    """Labels of a full-size CIFAR training set, shuffled like the original files."""
    labels = np.repeat(np.arange(num_classes), per_class)
    np.random.RandomState(seed).shuffle(labels)
    return labels


TINY = {
    "seed": 0,
    "data": {"name": "synthetic", "num_classes": 4, "image_size": 8, "max_per_class": 24, "imb_factor": 4,
             "test_per_class": 6, "head_threshold": 15, "tail_threshold": 8, "num_workers": 0},
    "model": {"name": "resnet8"},
    "loss": {"name": "la"},
    "optim": {"name": "focal_sam", "lr": 0.05, "rho": 0.05, "gamma": 2.0, "lam": 0.8},
    "train": {"epochs": 3, "batch_size": 16, "eval_batch_size": 32, "progress": "off"},
}


@pytest.fixture
def tiny_config(tmp_path):
    """Write the tiny synthetic config and return its path: `update` merges into it key by key,
    `replace` swaps whole sections (e.g. another optimizer with its own options)."""
    def make(update=None, name="tiny.yaml", replace=None):
        from engine.config import deep_merge
        path = tmp_path / name
        path.write_text(yaml.safe_dump({**deep_merge(TINY, update or {}), **(replace or {})}))
        return str(path)
    return make


def run_cli(*args, cwd=ROOT, env_extra=None, timeout=300):
    """Run `python <args>` from the repository root; return the CompletedProcess."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: thread start-up costs more than the work, and on a busy machine far more.
    Modules of tiny analysis cases use it with `pytestmark = pytest.mark.usefixtures(...)`."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One trained epoch of the tiny synthetic config, as a run folder: counts [24, 15, 9, 6];
    head = class 0, tail = class 3."""
    import engine.trainer
    from engine.config import deep_merge, load_config
    root = tmp_path_factory.mktemp("tiny_run")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(deep_merge(TINY, {"train": {"epochs": 1}})))
    engine.trainer.fit(load_config(str(path)), str(root / "run"))
    return str(root / "run")
