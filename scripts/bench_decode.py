#!/usr/bin/env python
"""Images per second of decode + augmentation for the large sets, per loader worker.

    python scripts/bench_decode.py                 # makes its own tree of real-size JPEGs in a temp folder
    python scripts/bench_decode.py --images 256 --workers 1 2 4

It writes N JPEGs of ImageNet-like size (about 500 x 375, quality 90, ~100 KB) in the ImageNet-LT
folder layout with a split list, then times the dataset exactly as training reads it
(`data.listfile.ListDataset`): each decode mode (pil, torchvision, device) with the training
augmentation of ImageNet-LT (RandomResizedCrop 224 + flip + ColorJitter 0.4) and the test transform,
in one process (= one worker's rate), then whole DataLoaders with several workers. "device" runs
the decode and augmentation on the GPU when one is present (--device), else on the CPU.
A benchmark, not a test.
"""
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image


import _root  # noqa: F401  (the repository on the import path, without `pip install -e .`)
from core.args import ArgumentParser, at_least
from data.listfile import IMAGENET_MEAN, IMAGENET_STD, ListDataset, collate_encoded
from engine.cli import user_errors
from engine.distributed import pick_device


def make_tree(root: str, n: int, classes: int = 10) -> str:
    """n JPEGs with smooth structure plus noise (so that they compress like photos)."""
    rng = np.random.RandomState(0)
    lines = []
    for i in range(n):
        w, h = int(rng.randint(400, 600)), int(rng.randint(300, 450))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([np.sin(xx / rng.uniform(20, 80) + c) * np.cos(yy / rng.uniform(20, 80)) for c in range(3)], -1)
        img = np.clip(127 + 90 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        rel = f"train/n{i % classes:08d}/img_{i}.JPEG"
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        Image.fromarray(img).save(os.path.join(root, rel), quality=90)
        lines.append(f"{rel} {i % classes}")
    path = os.path.join(root, "list.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def dataset(root, list_path, train, decode):
    return ListDataset(root, list_path, 10, train, 224, IMAGENET_MEAN, IMAGENET_STD, 0.4 if train else 0.0, decode, 0)


def per_worker_rate(ds, device, batch: int = 32) -> float:
    """Images/s of one process reading the dataset in index order (device mode: batches)."""
    n = len(ds)
    ds[0]
    t0 = time.perf_counter()
    if ds.device_stage is None:
        for i in range(n):
            ds[i]
    else:
        for s in range(0, n, batch):
            out = ds.device_stage(collate_encoded([ds[i] for i in range(s, min(n, s + batch))]), device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return n / (time.perf_counter() - t0)


def loader_rate(ds, workers: int, batch: int = 32, device=torch.device("cpu")) -> float:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=ds.collate,
                                         persistent_workers=False)
    t0 = time.perf_counter()
    count = 0
    for b in loader:
        if ds.device_stage is not None:
            b = ds.device_stage(b, device)
        count += len(b[1])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - t0)


def main(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=at_least(1), default=128)
    ap.add_argument("--workers", type=at_least(0), nargs="*", default=[1, 2])
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU when visible), cpu, cuda or cuda:N")
    ap.add_argument("--root", help="reuse/keep the JPEG tree here (default: a temporary folder)")
    args = ap.parse_args(argv)
    with user_errors():
        run(args)


def run(args) -> None:
    device = pick_device(args.device, option="--device")
    torch.set_num_threads(1)   # one worker = one thread of decode work
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        list_path = os.path.join(root, "list.txt")
        if not os.path.isfile(list_path):
            list_path = make_tree(root, args.images)
        sizes = [os.path.getsize(os.path.join(root, l.split()[0])) for l in open(list_path).read().split("\n") if l]
        print(f"{len(sizes)} JPEGs, mean {np.mean(sizes) / 1024:.0f} KB; {os.cpu_count()} CPUs; "
              f"torch {torch.__version__}; device stage on {device}")
        print("| decode | transform | images/s per worker (1 thread) |")
        print("|---|---|---|")
        for decode in ("pil", "torchvision", "device"):
            for train in (True, False):
                rate = per_worker_rate(dataset(root, list_path, train, decode), device)
                print(f"| {decode} | {'train (RRC+flip+jitter)' if train else 'test (resize+crop)'} | {rate:.1f} |")
        print("\n| decode | loader workers | images/s (train transform) |")
        print("|---|---|---|")
        for decode in ("pil", "torchvision"):
            for w in args.workers:
                print(f"| {decode} | {w} | {loader_rate(dataset(root, list_path, True, decode), w):.1f} |")


if __name__ == "__main__":
    main()
