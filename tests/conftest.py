"""Shared test helpers: CIFAR pickles in the real on-disk format, tiny configs, CLI runner."""
import concurrent.futures
import importlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One CPU thread for the tests and the processes they start: their models are tiny, so threads
# cost more than they give, and on a busy machine OpenMP's waiting threads make them far slower
# (a ResNet-32 test took 21 s with two threads beside four busy processes, 3.4 s with one). A test
# that needs several threads sets them itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    import torch
    torch.set_num_threads(1)


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


# ImageNet-style JPEG trees (ImageNet-LT / iNaturalist layout) of assorted image sizes
SIZES = [(40, 30), (50, 64), (33, 33), (70, 45)]


def write_tree(root, counts=(6, 4, 2, 1), test_per_class=2):
    """root/train/n0000k/k_i.JPEG and root/val/n0000k/v_i.JPEG, plus the two list files."""
    rng = np.random.RandomState(0)
    lines = {"train": [], "val": []}
    for split, per_class in (("train", counts), ("val", [test_per_class] * len(counts))):
        for k, n in enumerate(per_class):
            folder = os.path.join(root, split, f"n{k:05d}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                w, h = SIZES[(k + i) % len(SIZES)]
                base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3) * (k + 1) / len(counts)
                img = np.clip(base + rng.randint(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                rel = f"{split}/n{k:05d}/{split[0]}_{i}.JPEG"
                Image.fromarray(img).save(os.path.join(root, rel), quality=90)
                lines[split].append(f"{rel} {k}")
    paths = {}
    for split, name in (("train", "train.txt"), ("val", "test.txt")):
        paths[split] = os.path.join(root, name)
        with open(paths[split], "w") as f:
            f.write("\n".join(lines[split]) + "\n")
    return paths


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


def run_clis(*cases, **kwargs):
    """`run_cli(*case)` for each case, side by side; their CompletedProcesses in order. A refused
    command is seconds of imports, so independent cases take the time of the slowest."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(lambda case: run_cli(*case, **kwargs), cases))


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


# ------------------------------------------------------------------ CUDA graphs, stood in on the CPU
def stand_in_record(fn, model, optimizer):
    """A stand-in for engine.capture.record_cuda_graph on the CPU: 'records' by running the step
    on a snapshot that it then puts back (recording trains nothing, as with a CUDA graph) and
    'replays' by running the closure again on the static input tensors, writing into the outputs
    it returned. A static input not refreshed, a batch trained twice or skipped, or a stale
    epoch's values would change the weights."""
    import copy
    saved = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    outputs = fn()
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])

    def replay():
        for o, n in zip(outputs, fn()):
            o.copy_(n)
    return replay, outputs


class NoSideStream:
    """The warm-up steps' side stream, stood in on the CPU."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def cuda_graphs_on_cpu(monkeypatch):
    """train.capture=step accepted on the CPU, with the stand-in recorder (engine/capture.py's
    only device-specific parts replaced)."""
    import engine.capture
    import engine.trainer
    real = engine.capture.why_not_capturable
    import torch
    monkeypatch.setattr(engine.trainer, "why_not_capturable",
                        lambda opt, amp, device, distributed: real(opt, amp, torch.device("cuda"), distributed))
    monkeypatch.setattr(engine.capture, "record_cuda_graph", stand_in_record)
    monkeypatch.setattr(engine.capture, "_cuda_side_stream", NoSideStream)


def script(name: str):
    """scripts/<name>.py as a module (pytest.ini puts scripts/ on the path), so that CLI checks
    call main(argv) in this process: a new Python process costs seconds of imports."""
    return importlib.import_module(name)


def counts_for(cfg):
    """The config's training counts; for ImageNet-LT / iNaturalist without their (unshipped) train
    list, a long-tailed profile with the right number of classes (enough to build and step)."""
    from data import class_counts_only
    from data.arrays import long_tailed_counts
    from data.large import PRESETS as LIST_PRESETS
    if cfg.data.name in LIST_PRESETS and not os.path.isfile(os.path.join(ROOT, cfg.data.train_list)):
        return long_tailed_counts(1280, cfg.data.num_classes, 256)
    return class_counts_only(cfg.data)


def interrupt_in_epoch(monkeypatch, epoch: int, error=KeyboardInterrupt):
    """The trainer stops with `error` when it starts 0-based epoch `epoch` (after the previous
    epoch's checkpoint): Ctrl-C, a crash. Returns the real train_one_epoch, to put back."""
    import engine.trainer as trainer
    real = trainer.train_one_epoch

    def stop(*args, **kwargs):
        if args[4] == epoch:
            raise error()
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer, "train_one_epoch", stop)
    return real


def call_script(name: str, argv, capsys):
    """-> (exit code, stdout, stderr) of scripts/<name>.py main(argv), in this process."""
    try:
        code = script(name).main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err
