"""GSAM (optim/gsam.py) against its Algorithm 1 written out in float64
(tests/reference_sam_family.py), its lr-tied radius, the weighting and rules it composes with,
stacked models and precision."""
import copy

import pytest
import torch

from core.errors import ConfigError
from engine.config import Config, TrainConfig, section
from engine.epoch_values import EpochValues
from losses import build_loss
from models.stacked import StackedModels
from optim import GSAM, SAM
from optim.class_weights import focal_sam_weights
from optim.schedules import cosine_lr
from reference import float64_model, random_batches, MLP, params_of, per_sample_ce, reference_copy, sgd_update
from reference_sam_family import asam_eps, gsam_grads, sam_eps

COUNTS = [400, 120, 30, 8]
LR, WD, RHO, ALPHA = 0.1, 5e-4, 0.3, 0.6
KW = dict(lr=LR, momentum=0.9, weight_decay=WD)
ONES, ZEROS = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)


def batches(kind, n=3, b=10, dtype=torch.float64):
    return random_batches(kind, n, b, 1, dtype)


make_model = float64_model


def compare(kind, make_opt, a=ZEROS, c=ONES, perturbation=sam_eps, loss=per_sample_ce, head="linear"):
    model = make_model(kind, head=head)
    ref, params, bufs = reference_copy(model), params_of(model), {}
    opt = make_opt(model.parameters())
    for x, y in batches(kind):
        opt.step(model, x, y, loss)
        g = gsam_grads(ref, params, x, y, a, c, RHO, ALPHA, perturbation, loss)
        params = sgd_update(params, g, bufs, LR, 0.9, WD)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[n], rtol=0, atol=1e-10, msg=n)


@pytest.mark.parametrize("kind", ["mlp", "convbn"])
def test_gsam_equals_algorithm_1(kind):
    compare(kind, lambda p: GSAM(p, rho=RHO, alpha=ALPHA, **KW))


def test_gsam_with_asam_rule_is_the_adaptive_variant():
    """GSAM's authors' code has an adaptive option; here it is `perturb: asam` (u_perp from the raw u)."""
    compare("convbn", lambda p: GSAM(p, rho=RHO, alpha=ALPHA, perturb="asam", asam_eta=0.02, **KW),
            perturbation=lambda p, u, rho: asam_eps(p, u, rho, 0.02))


def test_gsam_with_focal_weights_from_the_library():
    """The correction composes with a per-class weighting: u = grad L_c(w), g_p the whole step."""
    a, c = focal_sam_weights(COUNTS, 2.0, 0.7)
    compare("mlp", lambda p: GSAM(p, rho=RHO, alpha=ALPHA, clean_weight=a, sharp_weight=c, class_counts=COUNTS, **KW),
            a, c)


@pytest.mark.parametrize("loss", ["la", "vs", "ldam_drw"])
def test_gsam_with_every_loss(loss):
    if loss == "ldam_drw":
        crit = build_loss(section("loss", name="ldam", drw_epoch=1), COUNTS).double()
        crit.set_class_weight(torch.tensor([0.3, 0.6, 1.2, 1.9]))
    else:
        crit = build_loss(section("loss", name=loss), COUNTS).double()
    compare("mlp", lambda p: GSAM(p, rho=RHO, alpha=ALPHA, class_counts=COUNTS, **KW), loss=crit,
            head="cosine" if loss == "ldam_drw" else "linear")


def test_alpha_zero_is_sam():
    data = batches("convbn")
    m1, m2 = make_model("convbn"), make_model("convbn")
    o1, o2 = GSAM(m1.parameters(), rho=RHO, alpha=0.0, **KW), SAM(m2.parameters(), rho=RHO, **KW)
    for x, y in data:
        o1.step(m1, x, y, per_sample_ce)
        o2.step(m2, x, y, per_sample_ce)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_radius_follows_the_lr():
    """rho_t = rho_min + (rho_max - rho_min) lr_t / lr_max, applied per epoch by the engine."""
    cfg = Config(optim=section("optim", name="gsam", lr=0.2, rho=0.3, rho_min=0.1), train=TrainConfig(epochs=5,
                                                                                                       warmup_epochs=2))
    lrs = cosine_lr(0.2, 5, 2)
    expected = [0.1 + 0.2 * lr / max(lrs) for lr in lrs]
    assert [v["rho"] for v in cfg.optim.group_values(lrs)] == pytest.approx(expected, abs=1e-15)
    assert expected[0] < 0.3 and expected[1] == pytest.approx(0.3)        # warm-up, then the peak lr
    model = MLP()
    opt = GSAM(model.parameters(), lr=0.2, class_counts=COUNTS)
    values, crit = EpochValues(cfg, COUNTS), build_loss(section("loss", name="ce"), COUNTS)
    assert [values.apply(e, opt, crit)["rho"] for e in range(5)] == pytest.approx(expected, abs=1e-15)
    assert opt.param_groups[0]["rho"] == pytest.approx(expected[-1])


@pytest.mark.parametrize("values, key, words", [
    (dict(name="gsam", rho_milestones=[[3, 0.2]]), "optim.rho_milestones", "radius follows the lr"),
    (dict(name="gsam", perturb="random"), "optim.perturb", "GSAM needs it"),
    (dict(name="gsam", rho=0.1, rho_min=0.2), "optim.rho_min", "must be in [0, rho=0.1]"),
    (dict(name="gsam", alpha=-0.1), "optim.alpha", "must be >= 0"),
])
def test_bad_options_are_one_config_error(values, key, words):
    with pytest.raises(ConfigError) as e:
        section("optim", **values)
    assert key in str(e.value) and words in str(e.value)


def test_stacked_members_equal_runs_alone():
    alone = [make_model("convbn", seed=s) for s in range(3)]
    stacked = StackedModels(copy.deepcopy(alone))
    make = lambda p: GSAM(p, rho=RHO, alpha=ALPHA, class_counts=COUNTS, **KW)
    opts, sopt = [make(m.parameters()) for m in alone], make(stacked.parameters())
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, y = torch.randn(3, 8, 3, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (3, 8), generator=g)
        for k, (m, o) in enumerate(zip(alone, opts)):
            o.step(m, x[k], y[k], per_sample_ce)
        sopt.step(stacked, x, y, per_sample_ce)
    for k, m in enumerate(alone):
        for key, t in m.state_dict().items():
            torch.testing.assert_close(stacked.member_state_dict(k)[key], t, rtol=0, atol=1e-9, msg=key)


@pytest.mark.parametrize("amp, tol", [("bf16", 6e-2), ("fp16", 5e-3)])
def test_mixed_precision_is_close_to_fp32(amp, tol):
    """fp16: .grad carries the loss scale and u does not; the correction is scaled to match."""
    if not torch.amp.is_autocast_available("cpu"):
        pytest.skip("no CPU autocast in this torch build")
    deltas = []
    for precision in ("none", amp):
        model = make_model("convbn").float()
        start = [p.detach().clone() for p in model.parameters()]
        opt = GSAM(model.parameters(), lr=0.5, rho=0.1, alpha=1.0, amp=precision)
        for x, y in batches("convbn", 2, b=16, dtype=torch.float32):
            opt.step(model, x, y, per_sample_ce)
        deltas.append(torch.cat([(p.detach() - s).flatten() for p, s in zip(model.parameters(), start)]))
    d32, d16 = deltas
    assert d32.norm() > 0 and (d16 - d32).norm() <= tol * d32.norm(), float((d16 - d32).norm() / d32.norm())


def test_capturable_step_replays_like_eager():
    """GSAM reads nothing back to the host (fp16 aside): under the CUDA-graph step's CPU stand-in
    (conftest) the captured step trains as the eager one, bit for bit."""
    from conftest import NoSideStream, stand_in_record
    from engine.capture import CapturedStep

    def train(captured):
        model = make_model("convbn").float()
        opt = GSAM(model.parameters(), rho=0.2, alpha=ALPHA, **KW)
        assert opt.capturable
        step = CapturedStep(opt, warmup=2, record=stand_in_record, side_stream=NoSideStream) if captured else opt
        for x, y in batches("convbn", 5, b=8, dtype=torch.float32):
            step.step(model, x, y, per_sample_ce)
        return model
    for p, q in zip(train(False).parameters(), train(True).parameters()):
        assert torch.equal(p, q)


def test_training_logs_the_lr_tied_radius(tiny_config, tmp_path):
    """train.py's path: each epoch's rho (in metrics.jsonl) is rho_min + (rho - rho_min) lr / lr_max."""
    import json

    from engine import trainer
    from engine.config import load_config
    cfg = load_config(tiny_config(replace={"optim": {"name": "gsam", "lr": 0.05, "rho": 0.2, "rho_min": 0.05}}),
                      ["train.epochs=2", "train.max_steps_per_epoch=2"])
    trainer.fit(cfg, str(tmp_path / "run"))
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = cosine_lr(0.05, 2)
    assert [l["rho"] for l in lines] == pytest.approx([0.05 + 0.15 * lr / 0.05 for lr in lrs], abs=1e-12)
