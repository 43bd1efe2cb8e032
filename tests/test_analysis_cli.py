"""analyze.py end to end on a tiny trained run: outputs, numbers against an independent loss
computation and finite differences, determinism, and one `error:` line for each bad input."""
import argparse
import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import analyze
from analysis import commands, measure
from analysis.hvp import BatchedLoss
from analysis.params import displaced, gaussian, generator, unflatten
from analysis.run import load_run
from conftest import run_cli
from engine.config import load_config


pytestmark = pytest.mark.usefixtures("single_thread")


def independent_losses(run_dir):
    """Per-sample LA losses of every training image, written from the checkpoint and the raw data:
    CE(z + log pi), BN in eval mode, no augmentation, float64."""
    from data import build_data
    from models import build_model
    cfg = load_config(os.path.join(run_dir, "config.yaml"))
    splits = build_data(dataclasses.replace(cfg.data, augment=False), cfg.seed)
    model = build_model(cfg.model, 4)
    model.load_state_dict(torch.load(os.path.join(run_dir, "last.pt"), weights_only=True)["model"])
    model.double().eval()
    x = torch.stack([splits.train[i][0] for i in range(len(splits.train))]).double()
    y = torch.as_tensor(splits.train.targets)
    prior = torch.tensor(splits.class_counts, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x) + (prior / prior.sum()).log()
        return F.cross_entropy(logits, y, reduction="none"), y.numpy()


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_hessian_command_writes_numbers_and_pictures(tiny_run, tmp_path):
    out = tmp_path / "h"
    proc = run_cli("analyze.py", "hessian", tiny_run, "--out", str(out), "--samples", "20", "--batch-size", "8",
                   "--power-iters", "4", "--trace-samples", "3", "--slq-steps", "4", "--groups", "head", "tail", "1,2",
                   "--progress", "off", "--device", "cpu", env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "lambda_max" in proc.stdout and "Tr(H)" in proc.stdout
    doc = read_json(out / "hessian.json")
    assert [g["group"] for g in doc["groups"]] == ["head", "tail", "1,2"]
    head, tail, mid = doc["groups"]
    assert head["samples_per_class"] == {"0": 20} and tail["samples_per_class"] == {"3": 6}   # all 6 tail images
    assert sum(mid["samples_per_class"].values()) == 20 and set(mid["samples_per_class"]) == {"1", "2"}
    for g in doc["groups"]:
        assert math.isfinite(g["lambda_max"]) and g["trace_stderr"] is not None and len(g["hutchinson"]["values"]) == 3
        assert len(g["density"]["grid"]) == len(g["density"]["density"]) == 1000
        assert g["power_iteration"]["iterations"] <= 4
    assert doc["settings"]["bn"] == "eval" and doc["run"]["epochs_trained"] == 1
    with open(out / "hessian_summary.csv") as f:
        assert [r["group"] for r in csv.DictReader(f)] == ["head", "tail", "1,2"]
    assert os.path.getsize(out / "hessian.png") > 10_000


def test_loaded_run_hvp_matches_finite_differences_and_loss(tiny_run):
    run = load_run(tiny_run, device="cpu")
    run.model.double()
    run.criterion.double()
    expected, labels = independent_losses(tiny_run)
    idx = np.flatnonzero(labels == 3)
    batches = measure.batches_of(run, idx, 4, torch.float64)
    params = [p for p in run.model.parameters() if p.requires_grad]
    loss = BatchedLoss(params, batches, measure.per_sample_fn(run))
    assert loss.value() == pytest.approx(float(expected[idx].mean()), rel=1e-7)
    v, u = gaussian(loss.dim, generator(0), torch.float64), gaussian(loss.dim, generator(1), torch.float64)
    hv, hu = loss.hvp(v), loss.hvp(u)
    assert float(u @ hv) == pytest.approx(float(v @ hu), rel=1e-8)              # a Hessian is symmetric
    # Central differences of the gradient along a unit vector; ReLU kinks are crossed only by
    # steps far larger than h (checked: 1e-3 crosses one, 1e-4 to 1e-7 agree to 1e-8).
    v = v / v.norm()
    hv = loss.hvp(v)
    h = 1e-5
    with displaced(params) as s:
        s.shift(unflatten(h * v, params))
        plus = loss.gradient()
        s.shift(unflatten(-h * v, params))
        minus = loss.gradient()
    fd = (plus - minus) / (2 * h)
    assert float((fd - hv).norm() / hv.norm()) < 1e-6


def test_landscape_origin_is_the_group_loss(tiny_run, tmp_path):
    out = tmp_path / "l"
    analyze.main(["landscape", tiny_run, "--out", str(out), "--samples", "1000", "--points-1d", "3", "--points-2d", "3",
                  "--groups", "head", "tail", "--progress", "off", "--device", "cpu", "--dtype", "float64"])
    doc = read_json(out / "landscape.json")
    expected, labels = independent_losses(tiny_run)
    for group, k in (("head", 0), ("tail", 3)):
        want = float(expected[labels == k].mean())
        assert doc["origin"][group] == pytest.approx(want, rel=1e-7)
        assert doc["line"][group][1] == pytest.approx(want, rel=1e-7)
        assert doc["surface"][group][1][1] == pytest.approx(want, rel=1e-7)
    for name in ("landscape_line.png", "landscape_contour.png", "landscape_surface.png", "landscape_line.csv",
                 "landscape_surface.csv"):
        assert (out / name).stat().st_size > 0, name


def test_sharpness_command_per_class(tiny_run, tmp_path, capsys):
    out = tmp_path / "s"
    analyze.main(["sharpness", tiny_run, "--out", str(out), "--per-class", "100", "--rho", "0.05",
                  "--direction", "class", "--definition", "paper", "--progress", "off", "--device", "cpu",
                  "--dtype", "float64"])
    doc = read_json(out / "sharpness.json")
    expected, labels = independent_losses(tiny_run)
    assert doc["classes"] == [0, 1, 2, 3] and doc["samples_per_class"] == {"0": 24, "1": 15, "2": 9, "3": 6}
    # Eq. 4's L_S^k = (1/n) sum over class k: the class mean times pi_k = n_k / n (24, 15, 9, 6 of 54).
    np.testing.assert_allclose(doc["loss"], [float(expected[labels == k].sum()) / 54 for k in range(4)], rtol=1e-7)
    assert doc["definition"] == "paper" and doc["settings"]["definition"] == "paper"
    np.testing.assert_allclose(doc["sharpness"], np.subtract(doc["perturbed_loss"], doc["loss"]), atol=1e-12)
    with open(out / "sharpness.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["group"] for r in rows] == ["head", "medium", "medium", "tail"]
    assert (out / "sharpness.png").stat().st_size > 0
    assert "mean sharpness" in capsys.readouterr().out


def test_hessian_is_deterministic_for_a_seed(tiny_run):
    args = commands.build_parser().parse_args(
        ["hessian", tiny_run, "--samples", "12", "--power-iters", "3", "--trace-samples", "2", "--slq-steps", "3",
         "--groups", "tail", "--progress", "off", "--device", "cpu"])
    run = commands.open_run(args)
    a, b = commands.hessian_report(args, run)["groups"][0], commands.hessian_report(args, run)["groups"][0]
    c = commands.hessian_report(argparse.Namespace(**{**vars(args), "seed": 1}), run)["groups"][0]
    for key in ("lambda_max", "trace", "loss"):
        assert a[key] == b[key], key
    assert a["density"]["density"] == b["density"]["density"]
    assert c["trace"] != a["trace"]


BAD_INPUTS = [
    (["hessian", "{missing}"], "run folder or checkpoint not found"),
    (["hessian", "{empty}"], "no checkpoint in"),
    (["hessian", "{run}", "--groups", "middle"], "unknown group or class 'middle'"),
    (["sharpness", "{run}", "--classes", "0,,2"], "bad class list"),
    (["landscape", "{run}", "--groups", "9"], "out of range"),
    (["hessian", "{run}", "--groups", "tail", "tail"], "given twice"),
    (["hessian", "{run}", "--out", "{file}/sub"], "(--out): Not a directory"),
    (["hessian", "{run}", "--samples", "0"], "--samples must be > 0"),
    (["landscape", "{run}", "--points-2d", "4"], "--points-2d must be an odd number >= 3"),
    (["landscape", "{run}", "--points-1d", "1", "--points-2d", "1"], "--points-1d must be an odd number >= 3"),
    (["hessian", "{run}", "--bn", "batch"], "invalid choice"),
    (["hessian", "{run}", "--device", "tpu"], "not a device"),
    (["hessian", "{run}", "--sigma", "inf"], "argument --sigma: expected a finite number, got 'inf'"),
    (["hessian", "{run}", "--sigma", "nan"], "argument --sigma: expected a finite number, got 'nan'"),
    (["hessian", "{run}", "--power-tol", "nan"], "argument --power-tol: expected a finite number"),
    (["sharpness", "{run}", "--rho", "nan"], "argument --rho: expected a finite number"),
    (["sharpness", "{run}", "--rho=-inf"], "argument --rho: expected a finite number"),
    (["landscape", "{run}", "--span", "inf"], "argument --span: expected a finite number"),
    (["hessian", "{run}", "--seed", "-1"], "argument --seed: expected an integer in 0..4294967295, got -1"),
    (["hessian", "{run}", "--seed", "4294967296"], "argument --seed: expected an integer in 0..4294967295"),
    (["hessian", "{run}", "--config", "{missing}.yaml"], "--config {missing}.yaml: file not found"),
    (["hessian", "{ckpt}", "--config", "{empty}"], "--config {empty}: a folder, not a file"),
    # finite options whose results are not: refused before a file is written
    (["landscape", "{run}", "--span", "1e30", "--samples", "4", "--points-1d", "3", "--points-2d", "3"],
     "the landscape is not finite at line.head[0]; choose a smaller --span (now 1e+30); nothing was written"),
    (["sharpness", "{run}", "--rho", "1e30", "--per-class", "2", "--classes", "0"],
     "the sharpness is not finite at perturbed_loss[0]; choose a smaller --rho"),
]


@pytest.mark.parametrize("argv, fragment", BAD_INPUTS, ids=[" ".join(a[:3]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line(tiny_run, tmp_path, capsys, argv, fragment):
    """Each: exit 2, one `error:` line naming the option; nothing written into the output folder."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    names = {"missing": str(tmp_path / "nope"), "empty": str(tmp_path / "empty"), "run": tiny_run,
             "file": str(tmp_path / "file"), "ckpt": os.path.join(tiny_run, "last.pt")}
    out = tmp_path / "out"
    argv = [a.format(**names) for a in argv] + ["--progress", "off"] + ([] if "--device" in argv else ["--device", "cpu"])
    argv += [] if "--out" in argv else ["--out", str(out)]
    with pytest.raises(SystemExit) as e:
        analyze.main(argv)
    assert e.value.code == 2
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and fragment.format(**names) in err[0], err
    assert not (tmp_path / "nope").exists()
    assert not out.exists() or os.listdir(out) == []             # nothing written


def test_a_checkpoint_of_another_architecture_names_the_tensor_and_shapes(tiny_run, tmp_path, capsys):
    state = torch.load(os.path.join(tiny_run, "last.pt"), weights_only=True)
    state["model"]["conv1.weight"] = torch.zeros(8, 3, 3, 3)        # a narrower first convolution
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(SystemExit) as e:
        analyze.main(["sharpness", str(tmp_path / "other.pt"), "--config", os.path.join(tiny_run, "config.yaml"),
                      "--out", str(tmp_path / "out"), "--device", "cpu", "--progress", "off"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert e.value.code == 2 and len(err) == 1, err
    assert "size mismatch for conv1.weight" in err[0] and "torch.Size([8, 3, 3, 3])" in err[0], err
    assert "torch.Size([16, 3, 3, 3])" in err[0], err
