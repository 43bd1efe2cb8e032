"""Bad inputs and faults, as a new user meets them: every one ends with a non-zero exit and one
short `error: ...` line naming the problem, never a traceback; no file can run code; no run is
lost or mixed up.

The command-line entry points run in this process (`main(argv)`, SystemExit caught, stderr
captured): a case costs milliseconds, not a Python start-up. A real process is used only where
one is needed: a run holding its folder's lock while another launch tries it, and signals sent
to a process group with loader workers.
"""
import contextlib
import errno
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import engine.build
import engine.trainer as trainer
import eval as eval_cli
import train as train_cli
from conftest import interrupt_in_epoch, script, write_tree, ROOT, TINY, write_cifar
from engine.locks import folder_lock
from engine.loaders import quiet_worker

MAX_LINE = 500   # "short": one line a terminal shows whole, with two temporary paths in it


inat = script("make_inat2018_lists")
imagenet = script("get_imagenet_lt_list")
run_table = script("run_table")
bench_step = script("bench_step")


def call(main, argv, capsys):
    """-> (exit status, stderr) of `main(argv)` run here, as the command line would see them."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line(result, *fragments):
    code, err = result
    assert code not in (0, None), err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(("error: ", "interrupted", "stopped by SIGTERM")), lines[0]
    assert len(lines[0]) <= MAX_LINE, lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def write_yaml(path, tree) -> str:
    path.write_text(yaml.safe_dump(tree))
    return str(path)


@pytest.fixture
def tiny(tmp_path):
    return write_yaml(tmp_path / "tiny.yaml", TINY)


def train(capsys, *argv):
    return call(train_cli.main, argv, capsys)


# ---------------------------------------------------------------------------- config values (train.py --set)
CC_SAM = ["optim.name=cc_sam", "~optim.gamma", "~optim.lam"]
VALUE_CASES = [
    (["optim.lr=-0.1"], "optim.lr: must be > 0"),
    (["optim.lr=0"], "optim.lr: must be > 0"),
    (["optim.lr=.nan"], "optim.lr: must be a finite number"),
    (["optim.lr=.inf"], "optim.lr: must be a finite number"),
    (["optim.momentum=1.5"], "optim.momentum: must be in [0, 1)"),
    (["optim.momentum=-0.1"], "optim.momentum: must be in [0, 1)"),
    (["optim.weight_decay=-1e-4"], "optim.weight_decay: must be >= 0"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov: Nesterov needs momentum > 0"),
    (["seed=-1"], "seed: must be in 0..4294967295"),
    (["seed=4294967296"], "seed: must be in 0..4294967295"),
    (["seed=2020-13-01"], "seed: expected int"),
    (["data.imb_factor=0.5"], "data.imb_factor: must be >= 1"),
    (["data.imb_factor=1000"], "data.imb_factor: imbalance 1000 leaves class 2"),
    (["data.tail_threshold=-1"], "data.tail_threshold: must be >= 0"),
    (["loss.drw_epoch=1", "loss.drw_beta=1"], "loss.drw_beta: must be in (0, 1)"),
    (["loss.drw_epoch=1", "loss.drw_beta=0"], "loss.drw_beta: must be in (0, 1)"),
    (CC_SAM + ["optim.ratio=1.5"], "optim.ratio: must be in [0, 1]"),
    (["data.image_size=0"], "data.image_size: must be 8..1024"),
    (["data.num_classes=1"], "data.num_classes: must be >= 2"),
    (["data.num_workers=-2"], "data.num_workers: must be 0..128, or -1"),
    (["data.max_per_class=0"], "data.max_per_class: must be 1..100,000"),
    (["data.test_per_class=0"], "data.test_per_class: must be 1..100,000"),
    (["train.device=tpu"], "train.device: must be auto, cpu, cuda"),
    (["train.device=cuda:x"], "train.device: must be auto, cpu, cuda"),
    (["train.dist_timeout_minutes=0"], "train.dist_timeout_minutes: must be > 0"),
    (["train.epochs=0"], "train.epochs: must be >= 1"),
    (["optim.lam=-0.5"], "optim.lam: must be >= 0"),
    (["optim.gamma=-1"], "optim.gamma: must be >= 0"),
    (["optim.rho=-0.1"], "optim.rho: must be >= 0"),
    (["optim.rho_milestones=[[1, .nan]]"], "optim.rho_milestones[0]: rho must be a finite number"),
    (["optim.name=imbsam", "~optim.gamma", "~optim.lam", "optim.eta=-1"], "optim.eta: must be >= 0"),
    (["optim.name=sse_sam", "~optim.lam", "optim.gamma=1.5"], "optim.gamma: must be in [0, 1]"),
    (["optim.name=sse_sam", "~optim.lam", "optim.head_rho=-0.05"], "optim.head_rho: must be >= 0"),
    (["loss.name=vs", "loss.gamma=-1"], "loss.gamma: must be >= 0"),
    (["loss.name=ldam", "model.classifier=cosine", "loss.s=0"], "loss.s: must be > 0"),
    (["loss.name=ldam", "model.classifier=cosine", "loss.max_m=-0.5"], "loss.max_m: must be >= 0"),
    (["loss.tau=.inf"], "loss.tau: must be a finite number"),
    (["optim.lr=1e300"], "optim.lr: must be a finite number (float32 range)"),
    (["data.num_workers=1000"], "data.num_workers: must be 0..128"),
    (["data.loader_timeout_seconds=0"], "data.loader_timeout_seconds: must be in (0, 86,400] seconds"),
    (["data.loader_timeout_seconds=1e6"], "data.loader_timeout_seconds: must be in (0, 86,400] seconds"),
    (["data.loader_timeout_seconds=.inf"], "data.loader_timeout_seconds: must be a finite number"),
    (["data.loader_timeout_seconds=soon"], "data.loader_timeout_seconds: expected float"),
    (["train.compile=model", "optim.clean_backward=batched"], "optim.clean_backward: batched cannot run through a compiled"),
    (["data.image_size=100000"], "data.image_size: must be 8..1024"),
    (["data.max_per_class=1000000000"], "data.max_per_class: must be 1..100,000"),
    (["train.epochs=200000"], "train.epochs: must be <= 100,000"),
]


@pytest.mark.parametrize("sets, message", VALUE_CASES, ids=[" ".join(s) for s, _ in VALUE_CASES])
def test_config_values_are_checked_at_load(tiny, tmp_path, capsys, sets, message):
    argv = ["--config", tiny, "--out", tmp_path / "run"] + [a for s in sets for a in ("--set", s)]
    assert_one_line(train(capsys, *argv), "config error: " + message)
    assert not (tmp_path / "run").exists()          # nothing is created for a config that fails


# ---------------------------------------------------------------------------- config files (train.py --config)
PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(17))


def test_config_files_are_read_strictly(tmp_path, capsys):
    def check(text, *fragments, name="c.yaml"):
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return assert_one_line(train(capsys, "--config", path, "--out", tmp_path / "run"), str(path), *fragments)

    check("optim:\n  lr: 0.1\n  name: s\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 on line 3)")
    check(PNG, "is a binary file")
    check("optim:\n  lr: 0.1\n  momentum: 0.9\n  lr: 0.2\n", "line 4, column 3", "duplicate key 'lr' (first at line 2)")
    check("", "is empty")
    check("# only a comment\n\n", "is empty")
    check("inherit: [3]\n", "inherit[0]: expected a file path", "got 3")
    check("inherit: ['']\n", "inherit[0]: expected a file path")
    check("inherit: {a: b}\n", "inherit: expected a path or a list of paths")
    check("inherit: ../_base/nope.yaml\n", "inherits", "nope.yaml, which does not exist")
    check("optim:\n  lr: [0.1\nmodel: {}\n", "line 3, column 6", "not valid YAML")
    check("seed: 2020-13-01\n", "cannot read a value")
    check("optim:\n\tlr: 0.1\n", "line 2, column 1", "not valid YAML")
    (tmp_path / "folder.yaml").mkdir()
    assert_one_line(train(capsys, "--config", tmp_path / "folder.yaml"), "is a folder")
    assert not (tmp_path / "run").exists()


def test_a_yaml_tag_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    assert_one_line(train(capsys, "--config", path), "not valid YAML", "python/object/apply:os.system")
    assert not marker.exists()


# ---------------------------------------------------------------------------- command line and outputs
def test_command_line_mistakes(tiny, tmp_path, capsys):
    assert_one_line(train(capsys, "--bogus"), "unrecognized arguments: --bogus")
    assert_one_line(train(capsys), "give --config FILE")
    assert_one_line(call(eval_cli.main, [], capsys), "--checkpoint")
    assert_one_line(train(capsys, "--resume", tmp_path / "none"), "nothing to resume")
    assert_one_line(train(capsys, "--resume", tmp_path, "--set", "seed=1"), "drop --config, --set and --seeds")
    if not torch.backends.mps.is_available():
        assert_one_line(train(capsys, "--config", tiny, "--out", tmp_path / "r", "--set", "train.device=mps"),
                        "no Apple GPU")


def test_run_folder_is_checked_before_any_work(tiny, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert_one_line(train(capsys, "--config", tiny, "--out", tmp_path / "afile"), "afile is a file")
    assert_one_line(train(capsys, "--config", tiny, "--out", tmp_path / "afile" / "run"), "cannot write in",
                    "Not a directory")
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("x")
    assert_one_line(train(capsys, "--config", tiny, "--out", home), "holds other files (thesis.tex)")
    assert sorted(os.listdir(home)) == ["thesis.tex"]                  # not even a lock file left in it
    assert_one_line(train(capsys, "--config", tiny, "--out", "/sys/lt-sam-test"), "cannot write in",
                    "Operation not permitted")


def test_a_file_system_without_locks_is_named(tiny, tmp_path, capsys, monkeypatch):
    import engine.locks

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
    monkeypatch.setattr(engine.locks.fcntl, "flock", no_locks)
    assert_one_line(train(capsys, "--config", tiny, "--out", tmp_path / "run"), "cannot lock", ".lock",
                    "No locks available")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 1-epoch tiny run: (folder, config path)."""
    folder = tmp_path_factory.mktemp("finished")
    cfg = write_yaml(folder / "tiny.yaml", {**TINY, "train": {**TINY["train"], "epochs": 1}})
    try:
        train_cli.main(["--config", cfg, "--out", str(folder / "run")])
    except SystemExit as e:
        assert e.code == 0
    return folder / "run", cfg


def evil_pickle_file(path, marker) -> None:
    """A torch.save file whose unpickling would run a shell command creating `marker`."""
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    torch.save({"format": "lt-sam/1", "model": Evil()}, str(path))


def test_eval_outputs_and_checkpoints(finished_run, tmp_path, capsys):
    run, cfg = finished_run
    ckpt = run / "last.pt"

    def evaluate(*argv):
        return call(eval_cli.main, ["--checkpoint", *argv], capsys)
    assert_one_line(evaluate(ckpt, "--out", tmp_path), "is a folder", "eval.json")
    assert_one_line(evaluate(ckpt, "--out", ckpt), "would overwrite a file of the run")
    assert_one_line(evaluate(ckpt, "--out", run / "config.yaml"), "would overwrite a file of the run")
    (tmp_path / "afile").write_text("x")
    assert_one_line(evaluate(ckpt, "--out", tmp_path / "afile" / "e.json"), "afile is a file, not a folder")
    assert_one_line(evaluate(ckpt, "--out", tmp_path / "afile" / "sub" / "e.json"), "Not a directory")
    assert_one_line(evaluate(tmp_path / "nope.pt", "--config", cfg), "checkpoint not found")
    assert_one_line(evaluate(tmp_path / "lonely.pt"), "no --config given and no config.yaml beside")
    assert_one_line(evaluate(ckpt, "--config", tmp_path / "missing.yaml"), f"config file not found: "
                    f"{tmp_path / 'missing.yaml'}")               # the file given, not config.yaml beside
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert_one_line(evaluate(tmp_path / "text.pt", "--config", cfg), "cannot load checkpoint", "corrupt")
    torch.save({"format": "lt-sam/1"}, str(tmp_path / "empty.pt"))
    assert_one_line(evaluate(tmp_path / "empty.pt", "--config", cfg), "lacks 'model'")
    torch.save({"format": "lt-sam/1", "model": torch.zeros(3)}, str(tmp_path / "tensor.pt"))
    assert_one_line(evaluate(tmp_path / "tensor.pt", "--config", cfg), "'model' holds a Tensor")
    # A checkpoint of another head: the message names the tensor and both shapes.
    assert_one_line(evaluate(ckpt, "--config", cfg, "--set", "data.num_classes=5", "--out", tmp_path / "e.json"),
                    "other class counts", "4 classes there, 5 here")
    assert_one_line(evaluate(ckpt, "--config", cfg, "--set", "model.classifier=cosine", "--out", tmp_path / "e.json"),
                    "does not match model", "classifier.bias")
    marker = tmp_path / "pwned"
    evil_pickle_file(tmp_path / "evil.pt", marker)
    assert_one_line(evaluate(tmp_path / "evil.pt", "--config", cfg, "--out", tmp_path / "e.json"),
                    "cannot load checkpoint", "objects other than tensors")
    assert not marker.exists()


def test_resume_of_damaged_runs(finished_run, tmp_path, capsys):
    import shutil
    run, _ = finished_run
    for case in ("corrupt", "partial", "evil", "log"):
        copy = tmp_path / case
        shutil.copytree(run, copy)
        if case == "corrupt":
            (copy / "last.pt").write_bytes(b"\x00" * 64)
            assert_one_line(train(capsys, "--resume", copy), "cannot load checkpoint")
        elif case == "partial":
            state = torch.load(copy / "last.pt", weights_only=True)
            del state["optimizer"]
            torch.save(state, str(copy / "last.pt"))
            assert_one_line(train(capsys, "--resume", copy), "lacks 'optimizer'")
        elif case == "evil":
            evil_pickle_file(copy / "last.pt", tmp_path / "pwned")
            assert_one_line(train(capsys, "--resume", copy), "cannot load checkpoint")
            assert not (tmp_path / "pwned").exists()
        else:  # a damaged line in the middle of the log (not a torn last line)
            lines = (copy / "metrics.jsonl").read_text().splitlines()
            (copy / "metrics.jsonl").write_text("garbage\n" + "\n".join(lines) + "\n")
            state = torch.load(copy / "last.pt", weights_only=True)
            torch.save({**state, "epoch": 0}, str(copy / "last.pt"))
            assert_one_line(train(capsys, "--resume", copy), "metrics.jsonl: line 1 is not an epoch record")


# ---------------------------------------------------------------------------- data
def cifar_config(tmp_path, **data):
    return write_yaml(tmp_path / "c.yaml", {**TINY, "data": {"name": "cifar10_lt", "root": str(tmp_path / "d"),
                                                               "download": False, "num_workers": 0, **data}})


@pytest.fixture
def cifar(tmp_path):
    labels = np.repeat(np.arange(10), 6)
    return write_cifar(str(tmp_path / "d"), "cifar10", labels, np.arange(20) % 10)


def dump(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_a_crafted_cifar_pickle_cannot_run_code(cifar, tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    dump(os.path.join(cifar, "data_batch_1"), {b"data": Evil(), b"labels": [0]})
    out = assert_one_line(train(capsys, "--config", cifar_config(tmp_path, imb_factor=1), "--out", tmp_path / "r"),
                          "data_batch_1 is not a CIFAR pickle", "system, which a CIFAR pickle never holds")
    assert not marker.exists(), out


@pytest.mark.parametrize("case, message", [
    ("a list", "holds a list, not the dict"),
    ("no names", "'label_names' must list 10 class names"),
    ("label 12", "labels must be 0..9, found 0..12"),
    ("truncated", "cannot read"),
    ("too few", "class 0 has 6 images, fewer than the 5000 asked for"),
    ("empty class", "config error: data.imb_factor: imbalance 10000 leaves class 9 of cifar10_lt with no training image"),
])
def test_damaged_cifar_files(cifar, tmp_path, capsys, case, message):
    imb = {"too few": 100, "empty class": 10000}.get(case, 1)
    if case == "a list":
        dump(os.path.join(cifar, "test_batch"), [1, 2, 3])
    elif case == "no names":
        dump(os.path.join(cifar, "batches.meta"), {b"num_cases_per_batch": 10})
    elif case == "label 12":
        dump(os.path.join(cifar, "test_batch"), {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]})
    elif case == "truncated":
        data = open(os.path.join(cifar, "data_batch_2"), "rb").read()
        open(os.path.join(cifar, "data_batch_2"), "wb").write(data[:len(data) // 2])
    assert_one_line(train(capsys, "--config", cifar_config(tmp_path, imb_factor=imb), "--out", tmp_path / "r"),
                    message)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imagenet_lt"
    return root, write_tree(str(root))


def list_config(tmp_path, root, lists, **data):
    return write_yaml(tmp_path / "l.yaml", {
        **TINY, "data": {"name": "imagenet_lt", "root": str(root), "train_list": lists["train"],
                         "test_list": lists["val"], "num_classes": 4, "image_size": 32, "head_threshold": 5,
                         "tail_threshold": 2, "num_workers": 0, **data},
        "train": {**TINY["train"], "epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2}})


@pytest.mark.parametrize("case, decode, message", [
    ("png", "device", "t_0.JPEG (line 1 of"),
    ("truncated", "device", "cannot decode image train/n00000/t_0.JPEG"),
    ("empty", "device", "it is an empty file, not a JPEG"),
    ("garbage", "pil", "not an image file that PIL can read"),
    ("truncated", "torchvision", "t_0.JPEG"),
])
def test_unreadable_images_name_their_file(tree, tmp_path, capsys, case, decode, message):
    root, lists = tree
    image = root / "train" / "n00000" / "t_0.JPEG"
    data = image.read_bytes()
    if case == "png":
        Image.open(image).save(image, format="PNG")          # a PNG named .JPEG
    else:
        scan = data.index(b"\xff\xda") + 40               # the headers whole, the image data cut short
        image.write_bytes({"truncated": data[:scan], "empty": b"", "garbage": b"nothing"}[case])
    cfg = list_config(tmp_path, root, lists, decode=decode)
    line = assert_one_line(train(capsys, "--config", cfg, "--out", tmp_path / "r", "--set", "train.batch_size=16",
                                 "--set", "train.max_steps_per_epoch=1"), message)
    if case == "png":
        assert "it is a PNG image, not a JPEG" in line


def test_list_files_and_class_names(tree, tmp_path, capsys):
    root, lists = tree
    cfg = lambda **kw: list_config(tmp_path, root, lists, **kw)
    out = ["--out", tmp_path / "r"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes("train/n00000/t_0.JPEG 0\ntrain/caf\u00e9.JPEG 1\n".encode("latin-1"))
    assert_one_line(train(capsys, "--config", cfg(), "--set", f"data.train_list={bad}", *out),
                    "bad.txt is not UTF-8 text (byte 0xe9 on line 2)")
    bad.write_bytes(PNG)
    assert_one_line(train(capsys, "--config", cfg(), "--set", f"data.train_list={bad}", *out), "is a binary file")
    names = tmp_path / "categories.json"
    names.write_text('[{"id": 0, "nom": "x"}]')
    assert_one_line(train(capsys, "--config", cfg(class_names=str(names)), *out), "data.class_names", "KeyError")
    names.write_text("{not json")
    assert_one_line(train(capsys, "--config", cfg(class_names=str(names)), *out), "data.class_names")
    assert_one_line(train(capsys, "--config", cfg(), "--set", "train.drop_last=true", "--set", "train.batch_size=64",
                          *out), "train.batch_size: 64 with train.drop_last=true leaves no full batch of the 13")


def test_device_decode_with_loader_workers_trains(tree, tmp_path, capsys):
    """It used to hang forever: a worker could not hand over torchvision.io.read_file's tensor."""
    root, lists = tree
    cfg = list_config(tmp_path, root, lists, decode="device", num_workers=2)
    code, err = train(capsys, "--config", cfg, "--out", tmp_path / "r")
    assert code in (0, None), err
    assert json.loads((tmp_path / "r" / "final.json").read_text())["epochs"] == 1


# ---------------------------------------------------------------------------- scripts
def inat_json(images, annotations=None, categories=(0, 1)):
    annotations = [{"image_id": i["id"], "category_id": 0} for i in images] if annotations is None else annotations
    return json.dumps({"images": images, "annotations": annotations, "categories": [{"id": c} for c in categories]})


def test_inat_converter_mistakes(tmp_path, capsys):
    def convert(text, *extra):
        (tmp_path / "a.json").write_bytes(text if isinstance(text, bytes) else text.encode())
        return call(inat.main, ["--train-json", tmp_path / "a.json", "--skip-official-checks", "--out-dir",
                                tmp_path / "out", *extra], capsys)
    assert_one_line(convert(inat_json([])), "'images' is empty")
    two = [{"id": 7, "file_name": "a/1.jpg"}, {"id": 7, "file_name": "a/2.jpg"}]
    assert_one_line(convert(inat_json(two, [{"image_id": 7, "category_id": 0}])),
                    "images[1]: image id 7 is also the id of images[0]")
    assert_one_line(convert(b'{"images": "\xff"}'), "is not UTF-8 JSON")
    assert_one_line(convert("[" * 100000), "nests too deeply")
    assert_one_line(call(inat.main, ["--fetch", "--timeout", "0"], capsys), "--timeout", "expected seconds > 0")
    assert_one_line(call(inat.main, ["--fetch", "--timeout", "nan"], capsys), "expected seconds > 0")
    assert_one_line(call(inat.main, ["--frobnicate"], capsys), "unrecognized arguments")
    assert not (tmp_path / "out").exists()


def test_written_lists_respect_the_umask(tmp_path, capsys):
    images = [{"id": 1, "file_name": "a/1.jpg"}, {"id": 2, "file_name": "b/2.jpg"}]
    (tmp_path / "a.json").write_text(inat_json(images))
    old = os.umask(0o022)
    try:
        code, err = call(inat.main, ["--train-json", tmp_path / "a.json", "--skip-official-checks",
                                     "--out-dir", tmp_path / "out"], capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert os.stat(tmp_path / "out" / "iNaturalist18_train.txt").st_mode & 0o777 == 0o644


def test_imagenet_list_mistakes(tmp_path, capsys):
    shipped = os.path.join(ROOT, "data_txt", "ImageNet_LT", "ImageNet_LT_test.txt")
    line = assert_one_line(call(imagenet.main, ["--check", shipped], capsys), "ships with the repository",
                           "--check " + imagenet.DEFAULT_OUT)
    assert "--out" not in line                    # following the advice must never overwrite the shipped list
    assert_one_line(call(imagenet.main, ["--out", shipped], capsys), "would overwrite a list that ships")
    assert_one_line(call(imagenet.main, ["--out", tmp_path], capsys), "is a folder")
    assert_one_line(call(imagenet.main, ["--timeout", "-1"], capsys), "expected seconds > 0")
    (tmp_path / "l.txt").write_bytes(b"train/a.JPEG 0\n\xff\n")
    assert_one_line(call(imagenet.main, ["--check", tmp_path / "l.txt"], capsys), "not UTF-8 text")


def test_table_runner_checks_everything_before_launching(tmp_path, capsys):
    out = tmp_path / "tables"
    base = ["--table", "2", "--smoke", "--seeds", "0", "--gpus", "cpu", "--out-root", out]
    assert_one_line(call(run_table.main, base + ["--set", "optim.lr=-1"], capsys), "optim.lr: must be > 0",
                    "nothing was launched")
    assert_one_line(call(run_table.main, base + ["--set", "optim.lrr=1"], capsys), "did you mean 'lr'")
    assert_one_line(call(run_table.main, base[:4] + ["-1"] + base[5:], capsys), "seed: must be in 0..")
    assert_one_line(call(run_table.main, base + ["--runs-per-gpu", "-1"], capsys), "--runs-per-gpu")
    gpus = base[:6] + ["0 0"] + base[7:]
    assert_one_line(call(run_table.main, gpus, capsys), "distinct GPU ids")
    assert not out.exists()


def test_benchmark_mistakes(tmp_path, capsys):
    assert_one_line(call(bench_step.main, ["--steps", "0"], capsys), "--steps", "expected an integer >= 1")
    assert_one_line(call(bench_step.main, ["--optimizers", "sgd,adam"], capsys), "--optimizers")
    assert_one_line(call(bench_step.main, ["--optimizers", "sam/../x"], capsys), "--optimizers", "expected comma-separated")
    assert_one_line(call(bench_step.main, ["--baseline", "sgd,sam"], capsys), "--baseline", "expected one optimizer")
    assert_one_line(call(bench_step.main, ["--baseline", "adam"], capsys), "--baseline adam", "no registered optimizer")
    assert_one_line(call(bench_step.main, ["--config-dir", tmp_path / "none"], capsys), "--config-dir", "is not a folder")
    assert_one_line(call(bench_step.main, ["--device", "tpu"], capsys), "--device 'tpu': unknown device")
    assert_one_line(call(bench_step.main, ["--json", tmp_path], capsys), "--json", "is a folder")
    assert_one_line(call(bench_step.main, ["--set", "optim.lr=-1"], capsys), "optim.lr: must be > 0")


# ---------------------------------------------------------------------------- faults during a run
def test_resume_command_only_when_a_checkpoint_exists(tiny, tmp_path, capsys, monkeypatch):
    interrupt_in_epoch(monkeypatch, 0)
    line = assert_one_line(train(capsys, "--config", tiny, "--out", tmp_path / "a"), "interrupted",
                           "no checkpoint was written yet")
    assert "--resume" not in line
    monkeypatch.undo()
    interrupt_in_epoch(monkeypatch, 1)
    assert_one_line(train(capsys, "--config", tiny, "--out", tmp_path / "b"), "interrupted",
                    f"continue with: python train.py --resume {tmp_path / 'b'}")


@pytest.mark.parametrize("names", [("config.yaml", "summary.csv"), ("metrics.jsonl",), ("tb",), ("final.json",)])
def test_a_users_files_named_like_a_runs_are_never_overwritten(tiny, tmp_path, capsys, names):
    """A folder of the user's holding (say) their own config.yaml and summary.csv is not a run of
    ours: refused, every file as it was, nothing added (not even the lock file)."""
    home = tmp_path / "results"
    home.mkdir()
    for name in names:
        (home / name).write_text(f"the user's own {name}\n")
    before = {n: (home / n).read_bytes() for n in os.listdir(home)}
    assert_one_line(train(capsys, "--config", tiny, "--out", home), f"--out {home} holds {', '.join(sorted(names))} "
                    "but is not a run folder of train.py (no .lt-sam-run)", "choose a new or empty folder")
    assert {n: (home / n).read_bytes() for n in os.listdir(home)} == before


def test_runs_of_ours_start_again_or_resume_with_or_without_the_marker(tiny, tmp_path, capsys, monkeypatch):
    """What scripts/run_table.py relies on: a folder holding only its log files takes a new run; an
    attempt stopped before its first checkpoint starts again; a run from before the marker existed
    (last.pt + metrics.jsonl, no .lt-sam-run) resumes and is marked."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("train.log", "command.json"):          # the runner writes these before train.py starts
        (out / name).write_text("the runner's\n")
    interrupt_in_epoch(monkeypatch, 0)
    assert_one_line(train(capsys, "--config", tiny, "--out", out), "interrupted", "no checkpoint was written yet")
    assert (out / ".lt-sam-run").is_file() and (out / "config.yaml").is_file() and not (out / "last.pt").exists()
    (out / "FAILED").write_text("exit 130\n")
    monkeypatch.undo()
    interrupt_in_epoch(monkeypatch, 1)                   # the retry: starts again, checkpoints epoch 0
    assert_one_line(train(capsys, "--config", tiny, "--out", out), f"--resume {out}")
    monkeypatch.undo()
    (out / ".lt-sam-run").unlink()                       # as a run written before this marker existed
    code, err = train(capsys, "--resume", out)
    assert code in (0, None), err
    assert (out / ".lt-sam-run").is_file() and json.loads((out / "final.json").read_text())["epochs"] == 3
    assert (out / "train.log").read_text() == "the runner's\n"


def test_a_torn_last_metrics_line_does_not_block_resume(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupt_in_epoch(monkeypatch, 1)
    assert_one_line(train(capsys, "--config", tiny, "--out", out, "--set", "train.epochs=2"), "--resume")
    monkeypatch.undo()
    with open(out / "metrics.jsonl", "a") as f:   # killed while appending epoch 1's line
        f.write('{"epoch": 1, "lr": 0.02')
    code, err = train(capsys, "--resume", out)
    assert code in (0, None), err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    import engine.checkpoint
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:                         # epoch 1's checkpoint: half written, then ENOSPC
            f.write(b"\x00" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    monkeypatch.setattr(engine.checkpoint.torch, "save", save)
    assert_one_line(train(capsys, "--config", tiny, "--out", out), f"cannot write {out / 'last.pt'}",
                    "No space left on device", f"continue with: python train.py --resume {out}")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1     # epoch 0's checkpoint, intact
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]             # no temporary file left


class FillingDisk:
    """A file on a disk with `room` bytes left, as Python's buffered file meets it: the write that
    crosses the end fails with ENOSPC, later writes land in the buffer and fail at flush."""

    def __init__(self, f, room: int):
        self.file, self.room, self.full = f, room, False

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if self.full:
            return len(data)
        if len(data) > self.room:
            self.file.write(data[:self.room])
            self.full = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.file.flush()

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_a_disk_that_fills_inside_torch_save_stops_with_one_line(tiny, tmp_path, capsys, monkeypatch):
    """The real torch.save on a filling disk: its zip writer reports the ENOSPC of a write as
    RuntimeError "unexpected pos" when it closes the archive (37 lines of traceback before)."""
    import engine.checkpoint
    out = tmp_path / "run"
    real_write, calls = engine.checkpoint.atomic_write, []

    def atomic_write(path, write):      # the disk fills while epoch 1's checkpoint is written
        calls.append(1)
        return real_write(path, (lambda f: write(FillingDisk(f, 100_000))) if len(calls) == 2 else write)
    monkeypatch.setattr(engine.checkpoint, "atomic_write", atomic_write)
    assert_one_line(train(capsys, "--config", tiny, "--out", out), f"cannot write {out / 'last.pt'}: No space left "
                    "on device", f"the last checkpoint is kept, continue with: python train.py --resume {out}")
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1     # epoch 0's checkpoint, intact
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_a_file_size_limit_stops_a_real_process_with_one_line(tiny, tmp_path, capsys, monkeypatch):
    """`ulimit -f` below a checkpoint's size on --resume: EFBIG (Python ignores SIGXFSZ), one line,
    the earlier checkpoint intact."""
    out = tmp_path / "run"
    interrupt_in_epoch(monkeypatch, 1)
    assert_one_line(train(capsys, "--config", tiny, "--out", out), f"--resume {out}")
    good = (out / "last.pt").read_bytes()
    limit = 400 * 1024            # `ulimit -f 400`: torch's zip writer then failed with "unexpected pos"
    assert len(good) > limit
    # The limit is set by a small Python that then execs train.py (limits survive exec), not by
    # preexec_fn: that runs Python between fork and exec, unsafe in this threaded process.
    limited = (f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
               f"os.execv(sys.executable, [sys.executable, 'train.py', '--resume', {str(out)!r}])")
    proc = subprocess.run([sys.executable, "-c", limited], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert_one_line((proc.returncode, proc.stderr), f"cannot write {out / 'last.pt'}: File too large",
                    f"continue with: python train.py --resume {out}")
    assert (out / "last.pt").read_bytes() == good
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_a_full_disk_while_logging(tiny, tmp_path, capsys, monkeypatch):
    import engine.report
    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.jsonl"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(engine.report.os, "fsync", fsync)
    assert_one_line(train(capsys, "--config", tiny, "--out", tmp_path / "run"), "metrics.jsonl",
                    "No space left on device", "no checkpoint was written yet")


def test_nan_weights_are_never_saved_or_called_good(tiny, tmp_path, capsys, monkeypatch):
    """The last update of epoch 1 overflows the weights while the loss was still finite."""
    real = trainer.train_one_epoch

    def overflow(*args, **kwargs):
        stats = real(*args, **kwargs)
        if args[4] == 1:
            next(args[0].parameters()).data.fill_(float("nan"))
        return stats
    monkeypatch.setattr(trainer, "train_one_epoch", overflow)
    out = tmp_path / "run"
    assert_one_line(train(capsys, "--config", tiny, "--out", out), "non-finite values in model.conv1.weight after "
                    "epoch 1", "not saved", f"the last good checkpoint is {out / 'last.pt'} (epoch 1)")
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1     # the NaN epoch is not logged


def test_nan_metrics_never_end_with_exit_0(tiny, tmp_path, capsys, monkeypatch):
    real = trainer.train_one_epoch

    def poison_bn(*args, **kwargs):   # finite buffers, NaN outputs: a negative running variance
        stats = real(*args, **kwargs)
        if args[4] == 2:
            next(m for m in args[0].modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(-1.0)
        return stats
    monkeypatch.setattr(trainer, "train_one_epoch", poison_bn)
    assert_one_line(train(capsys, "--config", tiny, "--out", tmp_path / "run"), "the evaluation gives", "not finite")
    assert not (tmp_path / "run" / "final.json").exists()


def test_non_finite_loss_names_drw_as_the_likely_cause(tiny, tmp_path, capsys, monkeypatch):
    real_build = engine.build.build_loss

    def nan_when_weighted(cfg, counts):
        loss = real_build(cfg, counts)
        forward = loss.forward

        def weighted(logits, targets):   # NaN as soon as DRW weights are not all ones
            out = forward(logits, targets)
            return out * float("nan") if (loss.class_weight != 1).any() else out
        loss.forward = weighted
        return loss
    monkeypatch.setattr(engine.build, "build_loss", nan_when_weighted)
    assert_one_line(train(capsys, "--config", tiny, "--out", tmp_path / "run", "--set", "loss.drw_epoch=2"),
                    "non-finite training loss in epoch 2", "DRW class weights are on since epoch 2",
                    "loss.drw_epoch=2", "loss.drw_beta=0.9999")


# ---------------------------------------------------------------------------- real processes: lock, signals
def default_ctrl_c():
    """Ctrl-C as a terminal gives it. A suite started in the background by a non-interactive shell
    (CI, `cmd &`) inherits SIGINT ignored, and a Python started so never installs its handler:
    the signal tests would then test nothing (they failed that way, in CI's way of running)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_training(cfg, out):
    return subprocess.Popen([sys.executable, "train.py", "--config", cfg, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=default_ctrl_c,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})


def wait_for_line(proc, text, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return
        assert line or proc.poll() is None, proc.stderr.read()
    raise AssertionError(f"no '{text}' within {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_live_run_holds_its_folder_and_stops_cleanly_with_its_workers(tmp_path, capsys, sig):
    """A second launch into the folder of a live run is refused; the run, stopped with its loader
    workers by a signal to the process group, prints one line with the resume command."""
    cfg = write_yaml(tmp_path / "w.yaml", {**TINY, "data": {**TINY["data"], "num_workers": 2, "max_per_class": 200},
                                           "train": {**TINY["train"], "epochs": 100}})
    out = tmp_path / "run"
    proc = start_training(cfg, out)
    try:
        wait_for_line(proc, "epoch 2/100")      # epoch 1's checkpoint is written by now
        assert_one_line(train(capsys, "--config", cfg, "--out", out), f"{out} is in use by another run (process "
                        f"{proc.pid})")
        assert_one_line(train(capsys, "--resume", out), "is in use by another run")
        os.killpg(proc.pid, sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert_one_line((proc.returncode, err), f"continue with: python train.py --resume {out}")
    with folder_lock(str(out)):     # the kernel released the lock with the process: no stale lock
        pass


class HungUpListener:
    """multiprocessing's resource sharer listener, as a worker's sharer thread meets it after the
    main process stopped: the first hand-over fails (the main process hung up), then a real bug,
    then the stop message."""

    def __init__(self):
        self.calls = 0

    def accept(self):
        self.calls += 1
        if self.calls == 1:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))
        if self.calls == 2:
            raise ValueError("a real bug")
        return contextlib.nullcontext(types.SimpleNamespace(recv=lambda: None))


def test_a_worker_whose_main_process_hung_up_prints_no_traceback():
    """Ctrl-C while a worker hands a batch over: its resource sharer thread reports the broken pipe
    through sys.excepthook (not threading.excepthook), one traceback per worker under the
    'interrupted' line; quiet_worker silences that case only. Runs the sharer's own loop in a
    forked worker, so the race that showed it on a busy machine is not needed."""
    from multiprocessing import resource_sharer
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:   # the worker
        try:
            os.close(read_end)
            sys.stderr = os.fdopen(write_end, "w")
            quiet_worker(0)
            sharer = resource_sharer._ResourceSharer()
            sharer._listener = HungUpListener()
            sharer._serve()
            sys.stderr.flush()
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        err = f.read()
    os.waitpid(pid, 0)
    assert "ValueError: a real bug" in err and "BrokenPipeError" not in err, err


class StalledDataset(torch.utils.data.Dataset):
    """Items that wait for the test, not for a clock: a loader worker blocks reading a pipe inside
    `__getitem__` until `release()`, however busy the machine is."""

    def __init__(self):
        self.gate, self.opener = os.pipe()
        self.started, self.starting = os.pipe()

    def __len__(self):
        return 2

    def __getitem__(self, i):
        os.write(self.starting, b"s")
        os.read(self.gate, 1)
        return i

    def wait_started(self) -> None:
        """Return once a worker is inside __getitem__ (the bound only turns a hang into a failure)."""
        assert select.select([self.started], [], [], 600)[0], "no loader worker started"
        os.read(self.started, 1)

    def release(self) -> None:
        os.write(self.opener, b"x" * len(self))
        for fd in (self.gate, self.opener, self.started, self.starting):
            os.close(fd)


def test_loader_workers_do_not_keep_the_run_folder_locked(tmp_path):
    """A worker forked while the lock is held must not keep it after the main process lets go
    (a killed main process's workers live up to 5 s; torchrun's restart would find the folder locked)."""
    data = StalledDataset()
    held = folder_lock(str(tmp_path))
    held.__enter__()
    batches = iter(torch.utils.data.DataLoader(data, num_workers=1, worker_init_fn=quiet_worker))   # forks now
    data.wait_started()
    held.__exit__(None, None, None)
    with folder_lock(str(tmp_path)):        # free although the worker is alive (blocked in __getitem__)
        assert all(w.is_alive() for w in batches._workers)
    data.release()
    del batches


def test_a_stalled_loader_stops_after_data_loader_timeout_seconds(tmp_path, capsys):
    """The worker never delivers: after the configured wait, one line and how to go on."""
    from engine.cli import user_errors
    from engine.config import section
    from engine.distributed import DistInfo
    from engine.loaders import eval_loader
    data = StalledDataset()
    cfg = section("data", name="synthetic", loader="workers", num_workers=1, loader_timeout_seconds=0.5)
    loader = eval_loader(data, 1, DistInfo(), cfg)

    def first_batch(argv):
        with user_errors(resume_hint=str(tmp_path)):
            next(iter(loader))
    assert_one_line(call(first_batch, [], capsys), "no batch from the data loader in 0.5 s "
                    "(data.loader_timeout_seconds)", "no checkpoint was written yet")
    data.release()          # the persistent workers finish their items and stop with the loader
    del loader


@pytest.fixture
def ctrl_c_raises():
    """Python's own Ctrl-C handler for the test, whatever the suite inherited (see default_ctrl_c)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_during_a_write_waits_until_the_file_is_in_place(tmp_path, ctrl_c_raises):
    """Ctrl-C or SIGTERM inside torch.save broke its C++ zip writer ("unexpected pos", or an
    abort writing to the closed file); now the signal takes effect after the file is complete."""
    from core.files import atomic_write
    before = signal.getsignal(signal.SIGINT)

    def write(f):
        f.write(b"first half, ")
        signal.raise_signal(signal.SIGINT)        # Ctrl-C in the middle of the write
        torch.save({"w": torch.arange(3)}, f)

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(tmp_path / "ckpt"), write)
    data = (tmp_path / "ckpt").read_bytes()
    assert data.startswith(b"first half, ") and len(data) > 100
    assert signal.getsignal(signal.SIGINT) is before
    assert [n for n in os.listdir(tmp_path) if n != "ckpt"] == []    # no temporary file left
