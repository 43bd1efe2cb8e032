"""Optimizer options: the fp16 GradScaler protocol, bf16, BN statistics in the perturbed pass,
excluding BN/bias from the perturbation, state_dict round trips, LR schedulers, rho schedules."""
import copy

import pytest
import torch

from engine.config import Config, TrainConfig, section
from engine.epoch_values import EpochValues
from losses import build_loss
from optim import CCSAM, SAM, FocalSAM, ImbSAM
from optim.schedules import cosine_lr, piecewise_rho
from reference import ConvBN, MLP, params_of, per_sample_ce, reference_copy, weighted_sam_reference

COUNTS = [400, 120, 30, 8]


def conv_batch(seed=0, b=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 5, 5, generator=g, dtype=dtype), torch.randint(0, 4, (b,), generator=g)


class PoisonOnCall:
    """A per-sample loss that returns inf on chosen calls (1-based) of one step, CE otherwise."""

    def __init__(self, bad_calls):
        self.bad_calls, self.calls = set(bad_calls), 0

    def __call__(self, logits, targets):
        self.calls += 1
        loss = per_sample_ce(logits, targets)
        return loss * float("inf") if self.calls in self.bad_calls else loss


@pytest.mark.parametrize("bad_call, where", [(1, "clean pass: u overflows"), (2, "perturbed pass")])
def test_fp16_inf_skips_the_step_and_backs_off_once(bad_call, where):
    torch.manual_seed(0)
    model = ConvBN()
    opt = FocalSAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.1, class_counts=COUNTS, amp="fp16")
    before = params_of(model)
    scale0 = opt.scaler.get_scale()
    x, y = conv_batch()
    opt.step(model, x, y, PoisonOnCall({bad_call}))
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), f"{where}: {n} changed"
    assert opt.scaler.get_scale() == scale0 * 0.5        # one update per step, with the inf found
    assert not opt.base_optimizer.state                   # no momentum written: the step was skipped
    # The next clean step goes through and counts once toward growth.
    opt.step(model, x, y, per_sample_ce)
    assert opt.scaler.get_scale() == scale0 * 0.5 and opt.scaler._get_growth_tracker() == 1
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("amp, tol", [("fp16", 5e-3), ("bf16", 6e-2)])
def test_mixed_precision_step_matches_fp32(amp, tol):
    torch.manual_seed(0)
    m32 = ConvBN()
    m16 = copy.deepcopy(m32)
    x, y = conv_batch(b=16)
    kw = dict(lr=0.5, momentum=0.0, rho=0.1, class_counts=COUNTS)
    FocalSAM(m32.parameters(), **kw).step(m32, x, y, per_sample_ce)
    start = params_of(m16)
    FocalSAM(m16.parameters(), amp=amp, **kw).step(m16, x, y, per_sample_ce)
    # Compare the whole update vector (the conv bias before BN has a zero gradient in exact arithmetic).
    d32 = torch.cat([(p.detach() - start[n]).flatten() for n, p in m32.named_parameters()])
    d16 = torch.cat([(p.detach() - start[n]).flatten() for n, p in m16.named_parameters()])
    assert d32.norm() > 0 and (d16 - d32).norm() <= tol * d32.norm(), (amp, float((d16 - d32).norm() / d32.norm()))


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("make_opt", [
    lambda m, mode: SAM(m.parameters(), lr=0.1, rho=0.5, bn_mode=mode),
    lambda m, mode: ImbSAM(m.parameters(), lr=0.1, rho=0.5, eta=100, class_counts=COUNTS, bn_mode=mode),
    lambda m, mode: CCSAM(m.parameters(), lr=0.1, rho=0.5, class_counts=COUNTS, scope="all", bn_mode=mode),
], ids=["sam", "imbsam", "ccsam-all"])
def test_bn_running_stats_frozen_in_perturbed_pass(make_opt):
    torch.manual_seed(0)
    model = ConvBN()
    x, y = conv_batch()
    y[:4] = 3                                  # a tail class in the batch: the perturbed pass runs
    clean_only = copy.deepcopy(model)
    clean_only(x)                              # what one clean forward does to the statistics
    frozen = copy.deepcopy(model)
    make_opt(frozen, "freeze").step(frozen, x, y, per_sample_ce)
    for k, v in bn_state(clean_only).items():
        assert torch.equal(bn_state(frozen)[k], v), k
    updated = copy.deepcopy(model)
    make_opt(updated, "update").step(updated, x, y, per_sample_ce)
    assert bn_state(updated)["bn.num_batches_tracked"].item() > 1      # the perturbed pass counted too
    assert not torch.equal(bn_state(updated)["bn.running_mean"], bn_state(frozen)["bn.running_mean"])


def test_exclude_bn_bias_from_perturbation():
    torch.manual_seed(0)
    model = ConvBN().double()
    ref_model, params, bufs = reference_copy(model), params_of(model), {}
    perturbed = [n for n in params if not n.startswith("bn.") and not n.endswith("bias")]
    assert perturbed == ["conv.weight", "classifier.weight"]
    opt = SAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.5, exclude_bn_bias=True)
    a, c = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    for seed in range(2):
        x, y = conv_batch(seed, dtype=torch.float64)
        opt.step(model, x, y, per_sample_ce)
        params = weighted_sam_reference(ref_model, params, bufs, x, y, a, c, 0.5, 0.1, 0.9, 5e-4, perturbed=perturbed)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[n], rtol=0, atol=1e-10, msg=n)


@pytest.mark.parametrize("make_opt", [
    lambda m: FocalSAM(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, rho=0.2, class_counts=COUNTS),
    lambda m: FocalSAM(m.parameters(), lr=0.1, momentum=0.9, rho=0.2, class_counts=COUNTS, amp="fp16"),
    lambda m: CCSAM(m.parameters(), lr=0.1, momentum=0.9, rho=0.5, class_counts=COUNTS),
], ids=["focal", "focal-fp16", "ccsam"])
def test_state_dict_round_trip_mid_training(make_opt, tmp_path):
    torch.manual_seed(0)
    model = MLP()
    opt = make_opt(model)
    batches = [(torch.randn(8, 6), torch.randint(0, 4, (8,))) for _ in range(4)]
    for x, y in batches[:2]:
        opt.step(model, x, y, per_sample_ce)
    for g in opt.param_groups:
        g["lr"], g["rho"] = 0.05, 0.3           # values a schedule would have set
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ck.pt")
    for x, y in batches[2:]:
        opt.step(model, x, y, per_sample_ce)

    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    model2 = MLP()
    model2.load_state_dict(state["model"])
    opt2 = make_opt(model2)
    opt2.load_state_dict(state["opt"])
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[0]["rho"] == 0.3
    assert opt2.param_groups is opt2.base_optimizer.param_groups          # still shared after loading
    assert all("momentum_buffer" in s for s in opt2.base_optimizer.state.values())
    assert opt2.scaler.get_scale() == opt.scaler.get_scale() or not opt.scaler.is_enabled()
    for x, y in batches[2:]:
        opt2.step(model2, x, y, per_sample_ce)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_torch_lr_scheduler_drives_the_wrapper():
    model = MLP()
    opt = SAM(model.parameters(), lr=0.1, rho=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(model, torch.randn(4, 6), torch.tensor([0, 1, 2, 3]), per_sample_ce)
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.05 and opt.base_optimizer.param_groups[0]["lr"] == 0.05


def test_rho_schedules():
    assert piecewise_rho(0.2, [], 4) == [0.2] * 4                                         # constant
    assert piecewise_rho(0.1, [(160, 0.2)], 200)[159:161] == [0.1, 0.2]                   # ImageNet-LT step
    sched = piecewise_rho(0.05, [(160, 0.5), (180, 0.6)], 200)                            # breakpoints
    assert sched[0] == 0.05 and sched[160] == 0.5 and sched[179] == 0.5 and sched[180:] == [0.6] * 20


def test_cosine_lr_matches_torch_cosine_annealing():
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    expected = []
    for _ in range(10):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert cosine_lr(0.1, 10) == pytest.approx(expected, abs=1e-12)
    assert cosine_lr(0.1, 10, warmup_epochs=2)[:2] == [0.05, 0.1]


def test_epoch_schedule_sets_lr_rho_and_drw():
    cfg = Config(optim=section("optim", name="focal_sam", lr=0.1, rho=0.1, rho_milestones=((3, 0.2),)),
                 loss=section("loss", name="ce", drw_epoch=4), train=TrainConfig(epochs=6))
    model = MLP()
    opt = FocalSAM(model.parameters(), lr=0.1, class_counts=COUNTS)
    crit = build_loss(cfg.loss, COUNTS)
    sched = EpochValues(cfg, COUNTS)
    logged = [sched.apply(e, opt, crit) for e in range(6)]
    assert [v["rho"] for v in logged] == [0.1, 0.1, 0.1, 0.2, 0.2, 0.2]
    assert opt.param_groups[0]["rho"] == 0.2 and opt.param_groups[0]["lr"] == cosine_lr(0.1, 6)[5]
    assert [v["drw"] for v in logged] == [False] * 4 + [True] * 2
    assert not torch.equal(crit.class_weight, torch.ones(4))


def test_rho_set_after_load_state_dict_reaches_the_perturbation():
    """load_state_dict replaces the param-group dicts: a rho set on the new groups afterwards must
    act, also for an optimizer that had stepped (and so looked at its groups) before the load."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    model_a = MLP()
    opt_a = SAM(model_a.parameters(), lr=0.1, rho=0.05)
    opt_a.step(model_a, x, y, per_sample_ce)                  # the optimizer has seen its groups
    state, weights = copy.deepcopy(opt_a.state_dict()), copy.deepcopy(model_a.state_dict())
    model_b = MLP()
    model_b.load_state_dict(weights)
    opt_b = SAM(model_b.parameters(), lr=0.1, rho=0.05)
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        opt.load_state_dict(copy.deepcopy(state))
        for g in opt.param_groups:
            g["rho"] = 0.7
        opt.step(model, x, y, per_sample_ce)
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(model_a.parameters(), MLP().parameters()))
