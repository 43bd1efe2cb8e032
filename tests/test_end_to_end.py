"""User paths end to end on the synthetic set: train, eval, resume, and the bad-input errors."""
import json

import pytest
import torch
import yaml

import engine.build
import engine.trainer as trainer
from conftest import interrupt_in_epoch, assert_one_line_error, run_cli, run_clis
from engine.config import load_config


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_train_then_eval_via_cli(tiny_config, tmp_path):
    cfg = tiny_config()
    out = tmp_path / "run"
    proc = run_cli("train.py", "--config", cfg, "--out", str(out), "--set", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr
    for name in ("config.yaml", "metrics.jsonl", "summary.csv", "final.json", "last.pt"):
        assert (out / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1]
    final = read_json(out / "final.json")
    for key in ("top1", "head", "medium", "tail", "per_class_acc", "ece", "class_counts", "epochs", "wall_seconds"):
        assert key in final, key
    assert final["class_counts"] == [24, 15, 9, 6] and final["epochs"] == 2
    assert final["top1"] == pytest.approx(sum(final["per_class_acc"]) / 4)
    # The paper's selection beside the headline: from the per-epoch log, the first epoch with the
    # best top-1 and its groups, and each group's own best.
    best = max(lines, key=lambda l: (l["top1"], -l["epoch"]))
    assert final["best_on_test"] == {"epoch": best["epoch"], **{k: best[k] for k in ("top1", "head", "medium", "tail")}}
    for k in ("top1", "head", "medium", "tail"):
        top = max(lines, key=lambda l: (l[k], -l["epoch"]))
        assert final["best_per_group"][k] == {"value": top[k], "epoch": top["epoch"]}
    assert "top1" in proc.stdout and "epoch 2/2" in proc.stdout
    # eval.py on the checkpoint reproduces the final report.
    proc = run_cli("eval.py", "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "e.json"))
    assert proc.returncode == 0, proc.stderr
    ev = read_json(tmp_path / "e.json")
    for key in ("top1", "head", "medium", "tail", "per_class_acc", "ece"):
        assert ev[key] == final[key], key
    # The same folder again refuses to overwrite the run.
    proc = run_cli("train.py", "--config", cfg, "--out", str(out))
    assert_one_line_error(proc, "already holds a run", "--resume")


LDAM_DRW_CCSAM = {"model": {"name": "resnet8", "classifier": "cosine"},
                  "loss": {"name": "ldam", "drw_epoch": 1},
                  "optim": {"name": "cc_sam", "lr": 0.05, "rho": 0.5, "radius": "plain"}}


@pytest.mark.parametrize("replace", [None, LDAM_DRW_CCSAM], ids=["la-focal_sam", "ldam_drw-cc_sam"])
def test_resume_equals_uninterrupted_run(tiny_config, tmp_path, monkeypatch, replace):
    """Interrupted in epoch 2 (after DRW switched on at epoch 1 in the second case), resumed."""
    cfg = load_config(tiny_config({"data": {"num_workers": 1}}, replace=replace), ["train.epochs=3"])
    full = trainer.fit(cfg, str(tmp_path / "full"))

    real = interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(cfg, str(tmp_path / "cut"))
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["epoch"] == 2
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    resumed = trainer.fit(load_config(str(tmp_path / "cut" / "config.yaml")), str(tmp_path / "cut"), resume=True)

    for key in ("top1", "head", "medium", "tail", "per_class_acc", "ece"):
        assert resumed[key] == full[key], key
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["optimizer"]["base"]["state"].items():   # momentum buffers too
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["base"]["state"][k]["momentum_buffer"])
    lines = [json.loads(l) for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    full_lines = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1, 2]
    assert [l["train_loss"] for l in lines] == [l["train_loss"] for l in full_lines]


def test_resume_via_cli_and_its_errors(tiny_config, tmp_path):
    out = tmp_path / "r"
    assert run_cli("train.py", "--config", tiny_config(), "--out", str(out), "--set", "train.epochs=1").returncode == 0
    proc = run_cli("train.py", "--resume", str(out))
    assert proc.returncode == 0, proc.stderr   # a finished run: evaluates again, rewrites final.json
    assert_one_line_error(run_cli("train.py", "--resume", str(tmp_path / "none")), "nothing to resume")
    assert_one_line_error(run_cli("train.py", "--resume", str(out), "--set", "train.epochs=3"), "drop --config, --set and --seeds")


def test_bad_inputs_give_one_line(tiny_config, tmp_path):
    missing = tmp_path / "c.yaml"
    missing.write_text(yaml.safe_dump({"data": {"name": "cifar10_lt", "root": str(tmp_path / "nodata"),
                                                "download": False}, "model": {"name": "resnet8"}}))
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    cfg = tiny_config()
    cases = {  # command: what its one error line names
        ("train.py", "--config", cfg, "--set", "loss.name=focal"): ("loss.name", "unknown loss 'focal'", "ce"),
        ("train.py", "--config", str(missing), "--out", str(tmp_path / "m")):
            ("cifar10 not found", "cifar-10-batches-py", "data.root"),
        ("eval.py", "--config", cfg, "--checkpoint", str(corrupt)): ("cannot load checkpoint", "corrupt"),
        ("eval.py", "--checkpoint", str(tmp_path / "nope.pt"), "--config", cfg): ("checkpoint not found",),
        ("train.py", "--config", str(tmp_path / "missing.yaml")): ("config file not found",)}
    for proc, fragments in zip(run_clis(*cases), cases.values()):
        assert_one_line_error(proc, *fragments)


def test_non_finite_loss_stops_with_the_step_range_and_keeps_the_checkpoint(tiny_config, tmp_path, monkeypatch):
    real_build = engine.build.build_loss

    def poisoned(cfg, counts):
        loss = real_build(cfg, counts)
        calls = {"n": 0}

        def forward(logits, targets):
            calls["n"] += 1
            out = loss(logits, targets)
            return out * float("nan") if calls["n"] > 8 else out   # epoch 0 (4 steps x 2 passes) is clean
        return type("Poisoned", (), {"__call__": staticmethod(forward), "to": lambda self, d: self,
                                     "set_class_weight": staticmethod(loss.set_class_weight)})()
    monkeypatch.setattr(engine.build, "build_loss", poisoned)
    cfg = load_config(tiny_config(), ["train.epochs=3"])
    with pytest.raises(trainer.NonFiniteLoss, match=r"non-finite training loss in epoch 1, steps 0-3; the last good "
                                                    r"checkpoint is .*last.pt \(epoch 1\)"):
        trainer.fit(cfg, str(tmp_path / "nan"))
    assert torch.load(tmp_path / "nan" / "last.pt", weights_only=True)["epoch"] == 1


def test_eval_refuses_a_checkpoint_of_other_class_counts(tiny_config, tmp_path):
    """Head / Medium / Tail are groups of the training counts: evaluating a checkpoint against a
    config of another imbalance would regroup the classes silently."""
    out = tmp_path / "run"
    assert run_cli("train.py", "--config", tiny_config(), "--out", str(out), "--set", "train.epochs=1").returncode == 0
    other = tiny_config({"data": {"imb_factor": 2}}, name="other.yaml")
    assert_one_line_error(run_cli("eval.py", "--config", other, "--checkpoint", str(out / "last.pt")),
                          "other class counts", "data.imb_factor")
