"""The perturbation rules (optim/perturbations.py: asam, friendly, random) composed with every
per-class weighting, and m-RWP (optim/sharpness.py RWP), against the papers' updates written out
in float64 (tests/reference_sam_family.py); their options, state, stacked models and precision."""
import copy

import pytest
import torch

from engine.config import section
from losses import build_loss
from models.stacked import StackedModels, member_optimizer_state
from optim import RWP, SAM, FocalSAM, ImbSAM
from optim.class_weights import focal_sam_weights, imbsam_weights
from optim.perturbations import RULES, RuleOptions, filter_norms, rule_default
from reference import float64_model, random_batches, params_of, per_sample_ce, reference_copy
from reference_sam_family import FriendlyEMA, RWPNoise, asam_eps, sam_eps, weighted_step

COUNTS = [400, 120, 30, 8]
LR, WD, RHO = 0.1, 5e-4, 0.3
KW = dict(lr=LR, momentum=0.9, weight_decay=WD)
ONES, ZEROS = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)


def batches(kind, n=3, b=10, dtype=torch.float64, seed=0):
    return random_batches(kind, n, b, seed, dtype, tail_first=True)


make_model = float64_model


WEIGHTINGS = {
    "sam": (lambda p, **kw: SAM(p, rho=RHO, **KW, **kw), (ZEROS, ONES)),
    "imbsam": (lambda p, **kw: ImbSAM(p, rho=RHO, eta=100, class_counts=COUNTS, **KW, **kw),
               imbsam_weights(COUNTS, 100)),
    "focal_sam": (lambda p, **kw: FocalSAM(p, rho=RHO, gamma=3.0, lam=0.8, class_counts=COUNTS, **KW, **kw),
                  focal_sam_weights(COUNTS, 3.0, 0.8)),
}
RULE_CASES = {
    "asam": (dict(perturb="asam", asam_eta=0.05), lambda: lambda p, u, rho: asam_eps(p, u, rho, 0.05)),
    "friendly": (dict(perturb="friendly", friendly_sigma=0.8, friendly_momentum=0.7), lambda: FriendlyEMA(0.8, 0.7)),
    "random": (dict(perturb="random", random_seed=5), lambda: RWPNoise(5)),
}


def compare(kind, make_opt, a, c, perturbation, data=None, loss=per_sample_ce, head="linear"):
    """Three steps of the optimizer against the reference update with the same perturbation."""
    model = make_model(kind, head=head)
    ref, params, bufs = reference_copy(model), params_of(model), {}
    opt = make_opt(model.parameters())
    for x, y in data or batches(kind):
        opt.step(model, x, y, loss)
        params = weighted_step(ref, params, bufs, x, y, a, c, RHO, perturbation, LR, 0.9, WD, loss)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[n], rtol=0, atol=1e-10, msg=n)
    return opt


@pytest.mark.parametrize("rule", sorted(RULE_CASES))
@pytest.mark.parametrize("weighting, kind", [("sam", "convbn"), ("imbsam", "mlp"), ("focal_sam", "mlp")])
def test_rule_with_weighting_equals_the_formula(rule, weighting, kind):
    """Every rule with every per-class weighting: `optim.name: focal_sam` + `optim.perturb: asam`
    is a configuration, and its steps are the formula's (ASAM Eq. 9, F-SAM Alg. 1, RWP)."""
    make, (a, c) = WEIGHTINGS[weighting]
    options, perturbation = RULE_CASES[rule]
    compare(kind, lambda p: make(p, **options), a, c, perturbation())


def test_rwp_is_the_mixed_loss_with_random_noise():
    """m-RWP: (1 - alpha) grad L(w) + alpha grad L(w + eps), eps filter-wise Gaussian (rho = its gamma)."""
    alpha = 0.3
    compare("convbn", lambda p: RWP(p, rho=RHO, alpha=alpha, random_seed=2, class_counts=COUNTS, **KW),
            (1 - alpha) * ONES, alpha * ONES, RWPNoise(2))


def test_a_rule_without_gradient_runs_no_ascent_backward(monkeypatch):
    """random reads no u: no autograd.grad call at w (RWP: 2 forward, 1 backward with SAM's weights)."""
    from optim.base import SharpnessOptimizer
    monkeypatch.setattr(SharpnessOptimizer, "gradient", lambda *a, **k: pytest.fail("ascent backward ran"))
    compare("mlp", lambda p: SAM(p, rho=RHO, perturb="random", random_seed=1, **KW), ZEROS, ONES, RWPNoise(1))


def test_reductions_to_sam():
    """friendly with sigma = 0 is SAM; asam with w = 0 and eta = 1 is SAM (T = I on weights and biases)."""
    compare("mlp", lambda p: SAM(p, rho=RHO, perturb="friendly", friendly_sigma=0.0, **KW), ZEROS, ONES, sam_eps)
    model = make_model("mlp")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.0)                                    # |w| + eta = eta everywhere at the first step
    sam_model = copy.deepcopy(model)
    x, y = batches("mlp", 1)[0]
    SAM(model.parameters(), rho=RHO, perturb="asam", asam_eta=1.0, **KW).step(model, x, y, per_sample_ce)
    SAM(sam_model.parameters(), rho=RHO, **KW).step(sam_model, x, y, per_sample_ce)
    for p, q in zip(model.parameters(), sam_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


LOSSES = ["ce", "la", "vs", "ldam_drw"]


def criterion(name):
    if name == "ldam_drw":
        loss = build_loss(section("loss", name="ldam", drw_epoch=1), COUNTS).double()
        loss.set_class_weight(torch.tensor([0.3, 0.6, 1.2, 1.9]))   # DRW's class weights in force
        return loss
    return build_loss(section("loss", name=name), COUNTS).double()


@pytest.mark.parametrize("loss", LOSSES)
def test_every_rule_with_every_loss(loss):
    """CE, LA, VS and LDAM (cosine head) with DRW weights: each rule's steps are the formula's."""
    crit, head = criterion(loss), "cosine" if loss == "ldam_drw" else "linear"
    make, (a, c) = WEIGHTINGS["focal_sam"]
    for rule, (options, perturbation) in RULE_CASES.items():
        compare("mlp", lambda p: make(p, **options), a, c, perturbation(), data=batches("mlp", 2), loss=crit,
                head=head)


def test_filter_norms_per_filter_and_per_member():
    w = torch.randn(3, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(filter_norms(w, 0).flatten(), w.reshape(3, -1).norm(dim=1))
    torch.testing.assert_close(filter_norms(w[0, 0], 0), w[0, 0].norm().reshape(1))        # 1-D: the whole tensor
    torch.testing.assert_close(filter_norms(w, 1), w.norm(dim=2, keepdim=True))            # stacked (N, d): per row
    stacked = torch.randn(2, 3, 4, dtype=torch.float64)                      # 2 members of a (3, 4) weight
    torch.testing.assert_close(filter_norms(stacked, 1), stacked.norm(dim=2, keepdim=True))


# ------------------------------------------------------------------------------- options
def test_option_defaults_are_the_rules_defaults():
    fields = RuleOptions()
    for key in ("asam_eta", "friendly_sigma", "friendly_momentum", "random_seed"):
        assert getattr(fields, key) == rule_default(key)
    assert set(RULES) == {"sam", "asam", "friendly", "random"}


@pytest.mark.parametrize("values, key, words", [
    (dict(name="focal_sam", asam_eta=0.1), "optim.asam_eta", "is read only with perturb: asam (perturb is sam)"),
    (dict(name="sam", perturb="asam", friendly_sigma=0.5), "optim.friendly_sigma", "read only with perturb: friendly"),
    (dict(name="imbsam", perturb="friendly", random_seed=3), "optim.random_seed", "read only with perturb: random"),
    (dict(name="sam", perturb="asam", asam_eta=-1.0), "optim.asam_eta", "must be >= 0"),
    (dict(name="sam", perturb="friendly", friendly_momentum=1.0), "optim.friendly_momentum", "[0, 1)"),
    (dict(name="sam", perturb="friendly", perturbation="local"), "optim.perturb", "needs perturbation: global"),
    (dict(name="sam", perturb="rwp"), "optim.perturb", "expected one of"),
    (dict(name="rwp", perturb="random"), "optim.perturb", "is not used by optimizer 'rwp'"),
    (dict(name="rwp", alpha=1.5), "optim.alpha", "must be in [0, 1]"),
])
def test_bad_rule_options_are_one_config_error(values, key, words):
    from core.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        section("optim", **values)
    assert key in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_library_refuses_an_option_of_another_rule():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="asam_eta is read only with perturb: asam"):
        FocalSAM(model.parameters(), lr=0.1, class_counts=COUNTS, asam_eta=0.2)
    with pytest.raises(ValueError, match="perturb must be one of"):
        SAM(model.parameters(), lr=0.1, perturb="gsam")
    SAM(model.parameters(), lr=0.1, perturb="sam", asam_eta=0.01)     # another rule's default: nothing ignored


# ------------------------------------------------------------------------------- state, stacking, precision
@pytest.mark.parametrize("options", [dict(perturb="friendly"), dict(perturb="random", random_seed=4)],
                         ids=["friendly-ema", "random-count"])
def test_resume_is_bitwise(options, tmp_path):
    """The rule's state (F-SAM's EMA, the noise count) goes through a weights_only checkpoint:
    2 + 2 steps with a save and load in between equal 4 steps."""
    data = batches("convbn", 4)

    def run(model, opt, part):
        for x, y in part:
            opt.step(model, x, y, per_sample_ce)

    model, opt = make_model("convbn"), None
    opt = FocalSAM(model.parameters(), rho=RHO, class_counts=COUNTS, **KW, **options)
    run(model, opt, data[:2])
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ck.pt")
    run(model, opt, data[2:])
    state = torch.load(tmp_path / "ck.pt", weights_only=True)
    resumed = make_model("convbn", seed=9)
    resumed.load_state_dict(state["model"])
    opt2 = FocalSAM(resumed.parameters(), rho=RHO, class_counts=COUNTS, **KW, **options)
    opt2.load_state_dict(state["opt"])
    run(resumed, opt2, data[2:])
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    fresh = make_model("convbn")
    opt3 = FocalSAM(fresh.parameters(), rho=RHO, class_counts=COUNTS, **KW, **options)
    run(fresh, opt3, data[2:])                  # without the state: another trajectory
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))


@pytest.mark.parametrize("make", [
    lambda p: SAM(p, rho=RHO, perturb="asam", **KW),
    lambda p: FocalSAM(p, rho=RHO, class_counts=COUNTS, perturb="friendly", **KW),
    lambda p: ImbSAM(p, rho=RHO, eta=100, class_counts=COUNTS, perturb="random", random_seed=3, **KW),
    lambda p: ImbSAM(p, rho=RHO, eta=100, class_counts=COUNTS, perturb="friendly", **KW),
    lambda p: RWP(p, rho=RHO, alpha=0.5, class_counts=COUNTS, **KW),
], ids=["sam-asam", "focal-friendly", "imbsam-random", "imbsam-friendly", "rwp"])
def test_stacked_members_equal_runs_alone(make):
    """Three models stacked: each member's weights and rule state are those of its run alone,
    also when member 1 has no tail sample in the first two batches (ImbSAM: its perturbation,
    EMA and noise count must stand still while the others' move)."""
    alone = [make_model("convbn", seed=s) for s in range(3)]
    stacked = StackedModels(copy.deepcopy(alone))
    opts, sopt = [make(m.parameters()) for m in alone], make(stacked.parameters())
    g = torch.Generator().manual_seed(3)
    for step in range(4):
        x = torch.randn(3, 8, 3, 5, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (3, 8), generator=g)
        y[:, 0] = 3
        if step < 2:
            y[1] %= 2                           # head classes only
        for k, (m, o) in enumerate(zip(alone, opts)):
            o.step(m, x[k], y[k], per_sample_ce)
        sopt.step(stacked, x, y, per_sample_ce)
    for k, (m, o) in enumerate(zip(alone, opts)):
        for key, t in m.state_dict().items():
            torch.testing.assert_close(stacked.member_state_dict(k)[key], t, rtol=0, atol=1e-9, msg=key)
        mine, own = member_optimizer_state(sopt.state_dict(), k)["rule"], o.state_dict()["rule"]
        assert mine.keys() == own.keys()
        for key in own:                         # F-SAM's EMA and flag, the random rule's count
            ours = mine[key].values() if key == "ema" else [mine[key]]
            theirs = own[key].values() if key == "ema" else [own[key]]
            for t, u in zip(ours, theirs):
                torch.testing.assert_close(t.reshape(u.shape), u, rtol=0, atol=1e-9)


@pytest.mark.parametrize("amp, tol", [("bf16", 6e-2), ("fp16", 5e-3)])
@pytest.mark.parametrize("rule", ["asam", "friendly", "random"])
def test_mixed_precision_is_close_to_fp32(amp, tol, rule):
    """Two steps (F-SAM's EMA in use) under autocast: the update within tol of fp32's, in norm."""
    if not torch.amp.is_autocast_available("cpu"):
        pytest.skip("no CPU autocast in this torch build")
    deltas = []
    for precision in ("none", amp):
        model = make_model("convbn").float()
        start = [p.detach().clone() for p in model.parameters()]
        opt = FocalSAM(model.parameters(), lr=0.5, momentum=0.0, rho=0.1, class_counts=COUNTS, perturb=rule,
                       amp=precision)
        for x, y in batches("convbn", 2, b=16, dtype=torch.float32):
            opt.step(model, x, y, per_sample_ce)
        deltas.append(torch.cat([(p.detach() - s).flatten() for p, s in zip(model.parameters(), start)]))
    d32, d16 = deltas
    assert d32.norm() > 0 and (d16 - d32).norm() <= tol * d32.norm(), float((d16 - d32).norm() / d32.norm())



@pytest.mark.parametrize("rule", ["asam", "friendly"])
def test_capturable_rules_replay_like_eager(rule):
    """The rules that say `capturable` under the CUDA-graph step's CPU stand-in (conftest): the
    captured step, replayed per epoch with partial batches eager, trains as the eager one, bit for
    bit (F-SAM's EMA is updated in place, so a graph's replays update it too)."""
    from conftest import NoSideStream, stand_in_record
    from engine.capture import CapturedStep

    def train(captured):
        model = make_model("convbn").float()
        opt = FocalSAM(model.parameters(), rho=0.2, class_counts=COUNTS, perturb=rule, **KW)
        assert opt.capturable
        step = CapturedStep(opt, warmup=2, record=stand_in_record, side_stream=NoSideStream) if captured else opt
        data = batches("convbn", 5, b=8, dtype=torch.float32) + batches("convbn", 1, b=3, dtype=torch.float32)
        for epoch in range(2):
            for g in opt.param_groups:
                g["lr"], g["rho"] = 0.1 / (1 + epoch), 0.2 * (1 + epoch)
            if captured:
                step.reset()
            for x, y in data:
                step.step(model, x, y, per_sample_ce)
        return model
    for p, q in zip(train(False).parameters(), train(True).parameters()):
        assert torch.equal(p, q)
    assert not ImbSAM(make_model("mlp").parameters(), lr=0.1, class_counts=COUNTS, perturb="random").capturable


def test_seeds_trained_together_save_each_members_rule_state(tiny_config, tmp_path):
    """train.py --seeds: two seeds of ImbSAM with F-SAM's rule in one process (float64) end as the
    runs alone, and each member's checkpoint holds its own EMA and flag, as the run alone saves
    them (so that it resumes alone or together)."""
    from engine import trainer
    from engine.config import load_config
    optim = {"name": "imbsam", "lr": 0.05, "rho": 0.05, "eta": 10, "perturb": "friendly"}
    path = tiny_config(replace={"optim": optim})
    cfgs = [load_config(path, [f"seed={s}", "train.epochs=2", "train.max_steps_per_epoch=3"]) for s in (0, 1)]
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for cfg, s in zip(cfgs, (0, 1)):
            trainer.fit(cfg, str(tmp_path / f"alone{s}"))
        trainer.fit_members(cfgs, [str(tmp_path / f"group{s}") for s in (0, 1)])
    finally:
        torch.set_default_dtype(before)
    for s in (0, 1):
        a, b = (torch.load(tmp_path / f"{run}{s}" / "last.pt", weights_only=True) for run in ("group", "alone"))
        for key, t in b["model"].items():
            torch.testing.assert_close(a["model"][key], t, rtol=1e-9, atol=1e-9, msg=key)
        rule_a, rule_b = a["optimizer"]["rule"], b["optimizer"]["rule"]
        assert torch.equal(rule_a["seen"].reshape(-1), rule_b["seen"].reshape(-1))
        for i, t in rule_b["ema"].items():
            torch.testing.assert_close(rule_a["ema"][i], t, rtol=1e-9, atol=1e-9)
