"""N models trained in one process as one StackedModels equal N models trained alone (issue 17).

The reference is the plain path: each model with its own optimizer, its own batches. float64
throughout, so the only difference is the order of floating-point sums (vmap runs the members'
convolutions as one grouped convolution): tolerance 1e-9 relative to each tensor's scale.
"""
import copy

import pytest
import torch
import torch.nn as nn

from models.resnet_cifar import CifarResNet
from models.stacked import StackedModels
from optim import SAM, SGD, FocalSAM, ImbSAM
from optim.members import member_norms

COUNTS = [40, 20, 10, 5]     # ImbSAM eta=10: classes 2, 3 are the tail
TOL = 1e-9


def make_models(n):
    models = []
    for k in range(n):
        torch.manual_seed(100 + k)
        models.append(CifarResNet(8, len(COUNTS), "linear").double())
    return models


def batches(n_models, steps, b=6, tail_free=()):
    """Per step: images (N, b, 3, 8, 8), targets (N, b). Members in `tail_free` get no tail sample
    in step 0 (ImbSAM then skips their perturbed pass)."""
    g = torch.Generator().manual_seed(7)
    out = []
    for s in range(steps):
        x = torch.randn(n_models, b, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, len(COUNTS), (n_models, b), generator=g)
        for k in tail_free:
            if s == 0:
                y[k] = torch.randint(0, 2, (b,), generator=g)
        out.append((x, y))
    return out


OPTIMIZERS = {
    "sgd": lambda p, **kw: SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, class_counts=COUNTS, **kw),
    "sam": lambda p, **kw: SAM(p, lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1, class_counts=COUNTS, **kw),
    "imbsam": lambda p, **kw: ImbSAM(p, lr=0.05, momentum=0.9, rho=0.1, eta=10, class_counts=COUNTS, **kw),
    "focal_sam": lambda p, **kw: FocalSAM(p, lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1, gamma=2.0,
                                          lam=0.7, class_counts=COUNTS, **kw),
}


def close(a, b):
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return float((a.double() - b.double()).abs().max()) <= TOL * scale if a.numel() else True


@pytest.mark.parametrize("name,extra", [("sgd", {}), ("sam", {}), ("imbsam", {}), ("focal_sam", {}),
                                        ("focal_sam", {"clean_backward": "batched"}),
                                        ("sam", {"bn_mode": "freeze"}), ("imbsam", {"bn_mode": "freeze"}),
                                        ("sam", {"exclude_bn_bias": True})])
def test_stacked_steps_equal_separate_runs(single_thread, name, extra):
    n, steps = 3, 3
    alone = make_models(n)
    stacked = StackedModels(copy.deepcopy(alone))
    data = batches(n, steps, tail_free=(1,))
    crit = nn.CrossEntropyLoss(reduction="none")
    opts = [OPTIMIZERS[name](m.parameters(), **extra) for m in alone]
    sopt = OPTIMIZERS[name](stacked.parameters(), **extra)
    for x, y in data:
        ref = [opt.step(m, x[k], y[k], crit) for k, (m, opt) in enumerate(zip(alone, opts))]
        loss, logits = sopt.step(stacked, x, y, crit)
        assert loss.shape == (n,) and logits.shape == (n, x.shape[1], len(COUNTS))
        for k, (l_ref, z_ref) in enumerate(ref):
            assert close(loss[k], l_ref) and close(logits[k], z_ref)
    for k, m in enumerate(alone):
        mine = stacked.member_state_dict(k)
        for key, t in m.state_dict().items():      # weights and BN running statistics
            assert close(mine[key], t), (name, k, key)
        momentum = [sopt.base_optimizer.state[p]["momentum_buffer"][k] for p in stacked.parameters()]
        for mb, p in zip(momentum, m.parameters()):
            assert close(mb, opts[k].base_optimizer.state[p]["momentum_buffer"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["sam", "imbsam", "focal_sam"])
def test_stacked_steps_on_cuda(name):
    """The same comparison on the GPU (cuDNN's grouped convolutions): float64, 1e-9."""
    n = 3
    alone = [m.cuda() for m in make_models(n)]
    stacked = StackedModels(copy.deepcopy(alone))
    crit = nn.CrossEntropyLoss(reduction="none")
    opts = [OPTIMIZERS[name](m.parameters()) for m in alone]
    sopt = OPTIMIZERS[name](stacked.parameters())
    for x, y in batches(n, 3, tail_free=(1,)):
        x, y = x.cuda(), y.cuda()
        for k, (m, opt) in enumerate(zip(alone, opts)):
            opt.step(m, x[k], y[k], crit)
        sopt.step(stacked, x, y, crit)
    for k, m in enumerate(alone):
        mine = stacked.member_state_dict(k)
        for key, t in m.state_dict().items():
            assert close(mine[key], t), (name, k, key)


def test_imbsam_member_without_tail_keeps_its_bn_statistics(single_thread):
    """Member 1 has no tail sample in the batch: alone, ImbSAM skips its perturbed pass, so its BN
    statistics see one forward; stacked, it must not see the second one either."""
    alone = make_models(2)
    stacked = StackedModels(copy.deepcopy(alone))
    (x, y), = batches(2, 1, tail_free=(1,))
    assert not bool((y[1] >= 2).any()) and bool((y[0] >= 2).any())
    crit = nn.CrossEntropyLoss(reduction="none")
    sopt = OPTIMIZERS["imbsam"](stacked.parameters())
    sopt.step(stacked, x, y, crit)
    opt1 = OPTIMIZERS["imbsam"](alone[1].parameters())
    opt1.step(alone[1], x[1], y[1], crit)
    assert int(stacked.member_state_dict(1)["bn1.num_batches_tracked"]) == 1
    assert int(stacked.member_state_dict(0)["bn1.num_batches_tracked"]) == 2
    assert close(stacked.member_state_dict(1)["bn1.running_mean"], alone[1].bn1.running_mean)


def test_member_norms_is_each_members_total_norm():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)]
    for k in range(3):
        direct = torch.sqrt(sum((t[k] ** 2).sum() for t in tensors))
        assert abs(float(member_norms(tensors)[k] - direct)) < 1e-12


def test_member_state_round_trip_and_bad_inputs():
    models = make_models(2)
    stacked = StackedModels(models)
    assert stacked.members == 2
    assert [n for n, _ in stacked.named_parameters()] == [f"stack.{n}" for n, _ in models[0].named_parameters()]
    other = CifarResNet(8, len(COUNTS), "linear").double()
    stacked.load_member_state_dict(1, other.state_dict())
    for key, t in other.state_dict().items():
        assert torch.equal(stacked.member_state_dict(1)[key], t)
        assert torch.equal(stacked.member_state_dict(0)[key], models[0].state_dict()[key])
    with pytest.raises(RuntimeError, match="size mismatch"):
        stacked.load_member_state_dict(0, CifarResNet(8, 3, "linear").double().state_dict())
    with pytest.raises(ValueError, match="architecture"):
        StackedModels([models[0], CifarResNet(20, len(COUNTS), "linear").double()])
    with pytest.raises(ValueError, match="one batch per member"):
        stacked(torch.zeros(3, 2, 3, 8, 8, dtype=torch.float64))
    assert stacked.forward_shared(torch.zeros(2, 3, 8, 8, dtype=torch.float64)).shape == (2, 2, len(COUNTS))
    with pytest.raises(ValueError, match="fp16"):
        SAM(stacked.parameters(), lr=0.1, amp="fp16").step(
            stacked, torch.zeros(2, 2, 3, 8, 8, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.long),
            nn.CrossEntropyLoss(reduction="none"))


# ---------------------------------------------------------------------------------- the trainer
# Whole trainings are compared in float64. In float32 the stacked run and the runs alone round
# differently (vmap turns the members' convolutions into one grouped convolution: about 1e-7
# after the first step), and training amplifies any rounding difference: on the tiny config two
# plain models 2.4e-7 apart are 1.5e-4 apart one Focal-SAM step later (BatchNorm over a 2x2 map,
# ReLU inputs near zero). Whether two float32 trainings stay within a tolerance after a few
# epochs therefore depends on the CPU's kernels, not on the code: this comparison, made in
# float32 with rtol 1e-4, failed on some machines and passed on others. In float64 the same
# rounding differences are ~1e-16 and stay far below the tolerance, so the comparison checks what
# it means to check: the data order, augmentation, initial weights, BN statistics, optimizer
# state, metrics and files of each member are those of its run alone.
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

from conftest import interrupt_in_epoch, assert_one_line_error, run_cli, run_clis  # noqa: E402
from data.arrays import ArrayDataset  # noqa: E402
from engine import group as group_module  # noqa: E402
from engine import trainer  # noqa: E402
from engine.config import load_config  # noqa: E402

RTOL = 1e-9


@pytest.fixture
def float64_runs():
    """Models, images and losses in float64 for the trainings of one test (every tensor the
    trainer creates without an explicit dtype; forked loader workers inherit the setting)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def slow_random_loader(monkeypatch):
    """Every training or test image takes a random 0-10 ms to load (drawn from the OS, not from
    a seeded stream), so loader workers finish their batches in another order in every run, as
    on a busy machine."""
    real = ArrayDataset.__getitem__

    def slow(self, i):
        time.sleep(random.SystemRandom().uniform(0.0, 0.01))
        return real(self, i)
    monkeypatch.setattr(ArrayDataset, "__getitem__", slow)


def _ckpt(folder):
    return torch.load(folder / "last.pt", weights_only=True)


def _assert_same_run(mine, ref):
    """Two run folders: weights, BN statistics, momentum, per-epoch losses, final metrics."""
    a, b = _ckpt(mine), _ckpt(ref)
    assert a["epoch"] == b["epoch"]
    for key, t in b["model"].items():
        if t.is_floating_point():
            torch.testing.assert_close(a["model"][key], t, rtol=RTOL, atol=RTOL, msg=key)
        else:
            assert torch.equal(a["model"][key], t), key          # num_batches_tracked: exactly
    for i, st in b["optimizer"]["base"]["state"].items():
        torch.testing.assert_close(a["optimizer"]["base"]["state"][i]["momentum_buffer"], st["momentum_buffer"],
                                   rtol=RTOL, atol=RTOL)
    assert a["optimizer"]["base"]["param_groups"] == b["optimizer"]["base"]["param_groups"]
    rows = [[json.loads(l) for l in (f / "metrics.jsonl").read_text().splitlines()] for f in (mine, ref)]
    assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]]
    for r0, r1 in zip(*rows):
        assert r0["train_loss"] == pytest.approx(r1["train_loss"], rel=RTOL)
        assert r0["train_acc"] == r1["train_acc"] and r0["top1"] == r1["top1"]
    f0, f1 = (json.loads((f / "final.json").read_text()) for f in (mine, ref))
    for key in ("top1", "head", "medium", "tail", "per_class_acc"):
        assert f0[key] == f1[key], key
    assert f0["ece"] == pytest.approx(f1["ece"], rel=RTOL)
    assert f0["run"] == f1["run"]


def _threads(n):
    """Another thread count changes how the CPU kernels split their sums (another rounding)."""
    torch.set_num_threads(max(1, min(n, os.cpu_count() or 1)))


@pytest.mark.parametrize("optim,workers", [(None, 2), ({"name": "imbsam", "lr": 0.05, "rho": 0.05, "eta": 10}, 0)],
                         ids=["focal_sam-workers", "imbsam"])
def test_seeds_in_one_process_equal_separate_runs(tiny_config, tmp_path, float64_runs, monkeypatch, optim, workers):
    """Two seeds trained together equal each seed trained alone, whatever the loader workers'
    timing and the thread count; the members' checkpoints are ordinary runs (resumable alone)."""
    if workers:
        slow_random_loader(monkeypatch)
    path = tiny_config({"data": {"num_workers": workers}}, replace={"optim": optim} if optim else None)
    cfgs = [load_config(path, [f"seed={s}", "train.epochs=2"]) for s in (0, 1)]
    threads = torch.get_num_threads()
    try:
        _threads(1)
        for cfg, s in zip(cfgs, (0, 1)):
            trainer.fit(cfg, str(tmp_path / f"alone{s}"))
        _threads(2)
        finals = trainer.fit_members(cfgs, [str(tmp_path / f"group{s}") for s in (0, 1)])
    finally:
        torch.set_num_threads(threads)
    assert [f["run"]["seed"] for f in finals] == [0, 1] and finals[0]["trained_with_seeds"] == [0, 1]
    for s in (0, 1):
        _assert_same_run(tmp_path / f"group{s}", tmp_path / f"alone{s}")


def test_same_run_check_sees_a_member_with_the_wrong_data(tiny_config, tmp_path, float64_runs, monkeypatch):
    """The comparison above is not vacuous: a group whose member 0 draws its batches from the
    wrong seed's loader (a plausible bug of the stacked mode) is caught."""
    cfgs = [load_config(tiny_config(), [f"seed={s}", "train.epochs=1"]) for s in (0, 1)]
    trainer.fit(cfgs[0], str(tmp_path / "alone0"))
    real = group_module.train_loader
    monkeypatch.setattr(group_module, "train_loader", lambda ds, b, info, seed, *a: real(ds, b, info, seed + 1, *a))
    trainer.fit_members(cfgs, [str(tmp_path / f"group{s}") for s in (0, 1)])
    with pytest.raises(AssertionError):
        _assert_same_run(tmp_path / "group0", tmp_path / "alone0")


def test_interrupted_seeds_resume_together_or_alone(tiny_config, tmp_path, monkeypatch, float64_runs):
    cfgs = [load_config(tiny_config(), [f"seed={s}", "train.epochs=2"]) for s in (3, 4)]
    full = [str(tmp_path / f"full{s}") for s in (3, 4)]
    trainer.fit_members(cfgs, full)
    cut = [str(tmp_path / f"cut{s}") for s in (3, 4)]
    real = interrupt_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit_members(cfgs, cut)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    import shutil
    shutil.copytree(cut[1], tmp_path / "alone4")
    saved = [load_config(str(tmp_path / f"cut{s}" / "config.yaml")) for s in (3, 4)]
    trainer.fit_members(saved, cut, resume=True)
    for s in (3, 4):                       # together: bit for bit the uninterrupted group
        a, b = _ckpt(tmp_path / f"cut{s}"), _ckpt(tmp_path / f"full{s}")
        for key in a["model"]:
            assert torch.equal(a["model"][key], b["model"][key]), key
    trainer.fit(saved[1], str(tmp_path / "alone4"), resume=True)     # alone: an ordinary run
    _assert_same_run(tmp_path / "alone4", tmp_path / "full4")


def test_seeds_cli_and_its_errors(tiny_config, tmp_path):
    cfg = tiny_config({"train": {"epochs": 1}})
    out = str(tmp_path / "r-{seed}")
    cc = tiny_config(replace={"optim": {"name": "cc_sam", "lr": 0.05, "rho": 0.5}}, name="cc.yaml")
    # the run, and the refusals that touch no folder of it, side by side
    proc, *refused = run_clis(
        ("train.py", "--config", cfg, "--seeds", "5", "6", "--out", out),
        ("train.py", "--config", cfg, "--seeds", "1", "2", "--out", str(tmp_path / "x")),
        ("train.py", "--config", cfg, "--seeds", "1", "1", "--out", str(tmp_path / "d{seed}")),
        ("train.py", "--config", cfg, "--seeds", "1", "2", "--set", "seed=3"),
        ("train.py", "--config", cc, "--seeds", "1", "2", "--out", str(tmp_path / "c{seed}")),
        ("train.py", "--config", cfg, "--seeds", "1", "2", "--set", "model.channels_last=true",
         "--out", str(tmp_path / "l{seed}")),
        ("train.py", "--config", cfg, "--seeds", "1", "2", "--set", "train.amp=fp16",
         "--out", str(tmp_path / "f{seed}")))
    assert proc.returncode == 0, proc.stderr
    assert "[seed 5] final: top1" in proc.stdout and "[seed 6] final: top1" in proc.stdout
    for s in (5, 6):
        assert json.loads((tmp_path / f"r-{s}" / "final.json").read_text())["run"]["seed"] == s
    for p, fragments in zip(refused, [("pattern holding {seed}",), ("seed twice",), ("--seeds only",),
                                      ("optim.name=cc_sam", "one run per seed"),
                                      ("model.channels_last=true", "one run per seed"), ("train.amp", "bf16")]):
        assert_one_line_error(p, *fragments)
    assert_one_line_error(run_cli("train.py", "--config", cfg, "--seeds", "5", "7", "--out", out),
                          "already holds a run", "r-5")
    assert_one_line_error(run_cli("train.py", "--resume", str(tmp_path / "r-5"), str(tmp_path / "r-5")), "twice")
    state = torch.load(tmp_path / "r-6" / "last.pt", weights_only=True)
    state["epoch"] = 0                       # as if seed 6 had stopped an epoch earlier
    torch.save(state, tmp_path / "r-6" / "last.pt")
    assert_one_line_error(run_cli("train.py", "--resume", str(tmp_path / "r-5"), str(tmp_path / "r-6")),
                          "stopped after different epochs", "one by one")


def test_optimizer_state_of_each_member_round_trips():
    """models/stacked.py: the stacked optimizer's state sliced per member loads into each member's
    own optimizer, and the members' states stack back into the stacked one."""
    from models.stacked import member_optimizer_state, stacked_optimizer_state
    alone = make_models(2)
    stacked = StackedModels(copy.deepcopy(alone))
    data = batches(2, 2)
    crit = nn.CrossEntropyLoss(reduction="none")
    opts = [OPTIMIZERS["focal_sam"](m.parameters()) for m in alone]
    sopt = OPTIMIZERS["focal_sam"](stacked.parameters())
    for x, y in data:
        for k, (m, opt) in enumerate(zip(alone, opts)):
            opt.step(m, x[k], y[k], crit)
        sopt.step(stacked, x, y, crit)
    for k, opt in enumerate(opts):
        mine, theirs = member_optimizer_state(sopt.state_dict(), k), opt.state_dict()
        assert mine["base"]["param_groups"] == theirs["base"]["param_groups"]
        for i, st in theirs["base"]["state"].items():
            assert close(mine["base"]["state"][i]["momentum_buffer"], st["momentum_buffer"])
    back = stacked_optimizer_state([o.state_dict() for o in opts])
    for i, st in sopt.state_dict()["base"]["state"].items():
        assert close(back["base"]["state"][i]["momentum_buffer"], st["momentum_buffer"])
    broken = opts[1].state_dict()
    broken["base"]["state"].pop(0)
    with pytest.raises(ValueError, match="differs in structure"):
        stacked_optimizer_state([opts[0].state_dict(), broken])
