"""SSE-SAM (optim/ssesam.py) against a direct float64 autograd computation of its update in both
stages (tests/reference.py), its switch epoch against the authors' epoch counter written out, a
run resumed across the switch, and stacked seeds equal to separate runs."""
import copy

import pytest
import torch
import torch.nn as nn

from conftest import interrupt_in_epoch
from core.errors import OptionError
from engine import trainer
from engine.config import load_config, section
from models.stacked import StackedModels
from optim import SSESAM
from optim.ssesam import SSESAMOptions, head_rho_at, sse_sam_groups, switch_epoch
from reference import ConvBN, MLP, per_sample_ce, sgd_update, weighted_sam_grads

COUNTS = [400, 120, 99, 8]           # eta 100: classes 2 and 3 are the tail (n_k < 100)
TAIL = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
HEAD = 1.0 - TAIL
LR, WD, MOMENTUM, RHO_TAIL, RHO_HEAD = 0.1, 5e-4, 0.9, 0.3, 0.2


def batches(kind, steps=6, b=10):
    """Per stage of three steps: a mixed batch, one without a tail sample, one without a head sample."""
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(steps):
        x = torch.randn((b, 6) if kind == "mlp" else (b, 3, 5, 5), generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (b,), generator=g)
        y = y % 2 if s % 3 == 1 else 2 + y % 2 if s % 3 == 2 else y
        out.append((x, y))
    return out


def make_model(kind):
    torch.manual_seed(0)
    return (MLP() if kind == "mlp" else ConvBN()).double()


def reference_grads(model, params, x, y, head_rho):
    """Stage 1: grad L_h(w + eps_h) + grad L_t(w + eps_t), each eps along its own group's
    gradient; stage 2 (head_rho 0): grad L_h(w) + grad L_t(w + eps_t)."""
    zero = torch.zeros(4, dtype=torch.float64)
    tail = weighted_sam_grads(model, params, x, y, zero, TAIL, RHO_TAIL, len(y))
    if head_rho == 0:
        head = weighted_sam_grads(model, params, x, y, HEAD, zero, 0.0, len(y))
    else:
        head = weighted_sam_grads(model, params, x, y, zero, HEAD, head_rho, len(y))
    return {n: head[n] + tail[n] for n in params}


@pytest.mark.parametrize("kind", ["mlp", "convbn"])
@pytest.mark.parametrize("clean_backward", ["separate", "batched"])
def test_both_stages_equal_the_float64_formula(kind, clean_backward):
    """Epochs 0-2 in stage 1, 3-5 in stage 2 (gamma 0.5 of 6 epochs), one batch per epoch; each
    stage has a batch without a tail sample and one without a head sample."""
    model = make_model(kind)
    ref_model, params, bufs = copy.deepcopy(model), {n: p.detach().clone() for n, p in model.named_parameters()}, {}
    opt = SSESAM(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD, rho=RHO_TAIL, head_rho=RHO_HEAD,
                 gamma=0.5, eta=100, class_counts=COUNTS, clean_backward=clean_backward)
    for epoch, (x, y) in enumerate(batches(kind)):
        opt.set_stage(epoch, 6)
        head_rho = RHO_HEAD if epoch < 3 else 0.0
        assert [g["head_rho"] for g in opt.param_groups] == [head_rho]
        opt.step(model, x, y, per_sample_ce)
        params = sgd_update(params, reference_grads(ref_model, params, x, y, head_rho), bufs, LR, MOMENTUM, WD)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), params[n], rtol=0, atol=1e-10, msg=f"epoch {epoch}: {n}")


def test_the_stages_differ_and_stage1_is_not_sam():
    """Not vacuous: one stage-1 step differs from a stage-2 step and from one SAM perturbation
    of the whole loss at either radius."""
    x, y = batches("mlp")[0]
    outs = []
    for head_rho in (RHO_HEAD, 0.0):
        model = make_model("mlp")
        opt = SSESAM(model.parameters(), lr=LR, rho=RHO_TAIL, head_rho=head_rho, eta=100, class_counts=COUNTS)
        opt.step(model, x, y, per_sample_ce)
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    model = make_model("mlp")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for rho in (RHO_HEAD, RHO_TAIL):
        g = weighted_sam_grads(model, start, x, y, torch.zeros(4, dtype=torch.float64),
                               torch.ones(4, dtype=torch.float64), rho, len(y))
        sam = torch.cat([(start[n] - LR * g[n]).flatten() for n in start])
        assert float((sam - outs[0]).abs().max()) > 1e-6
    assert float((outs[0] - outs[1]).abs().max()) > 1e-6


def code_head_rho(head_rho, gamma, epochs):
    """The authors' counter (ssesam.py `update_rho`, called after each training epoch in
    utils/trainval.py): rho_head of each epoch as their loop sets it."""
    rho, count, cut, out = head_rho, 0, epochs * gamma, []
    for _ in range(epochs):
        out.append(rho)
        count += 1
        if cut > 0 and count >= cut:
            rho = 0
    return out


@pytest.mark.parametrize("gamma, epochs", [(0.7, 200), (0.7, 3), (0.5, 4), (0.5, 3), (0.1, 7), (0.99, 10),
                                           (1 / 3, 9), (0.7, 2)])
def test_switch_epoch_is_the_authors_counter(gamma, epochs):
    assert head_rho_at(0.05, gamma, epochs) == code_head_rho(0.05, gamma, epochs)
    assert switch_epoch(0.7, 200) == 140


def test_group_values_and_range_checks():
    o = section("optim", name="sse_sam", rho=0.1, head_rho=0.05, gamma=0.5, rho_milestones=[[3, 0.2]])
    assert o.group_values([0.1] * 4) == [{"rho": 0.1, "head_rho": 0.05}, {"rho": 0.1, "head_rho": 0.05},
                                         {"rho": 0.1, "head_rho": 0.0}, {"rho": 0.2, "head_rho": 0.0}]
    assert [v["head_rho"] for v in SSESAMOptions(gamma=0.0).group_values([0.1] * 2)] == [0.0, 0.0]
    head, tail = sse_sam_groups([400, 100, 99], eta=100)          # strictly below eta, as the code's `<`
    assert head.tolist() == [1, 1, 0] and tail.tolist() == [0, 0, 1]
    assert [v["head_rho"] for v in SSESAMOptions(gamma=1.0).group_values([0.1] * 2)] == [0.05, 0.05]
    for bad, key in (({"gamma": 1.5}, "gamma"), ({"gamma": -0.1}, "gamma"), ({"head_rho": -1.0}, "head_rho"),
                     ({"eta": -1.0}, "eta")):
        with pytest.raises(OptionError) as e:
            SSESAMOptions(**bad)
        assert e.value.key == key
        with pytest.raises(OptionError):          # the library constructor calls the same check
            SSESAM(MLP().parameters(), lr=0.1, class_counts=COUNTS, **bad)
    with pytest.raises(ValueError, match="perturb must be 'sam'"):
        SSESAM(MLP().parameters(), lr=0.1, class_counts=COUNTS, perturb="asam")


def test_resume_across_the_switch_equals_the_uninterrupted_run(tiny_config, tmp_path, monkeypatch):
    """3 epochs, gamma 0.5: stage 2 from epoch 2; interrupted in epoch 2, resumed: bit for bit."""
    sse = {"name": "sse_sam", "lr": 0.05, "rho": 0.1, "head_rho": 0.05, "gamma": 0.5, "eta": 10}
    cfg = load_config(tiny_config(replace={"optim": sse}), ["train.epochs=3"])
    full = trainer.fit(cfg, str(tmp_path / "full"))
    real = interrupt_in_epoch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(cfg, str(tmp_path / "cut"))
    cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert cut["epoch"] == 2 and cut["optimizer"]["base"]["param_groups"][0]["head_rho"] == 0.05   # stage 1 saved
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    resumed = trainer.fit(load_config(str(tmp_path / "cut" / "config.yaml")), str(tmp_path / "cut"), resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert b["optimizer"]["base"]["param_groups"][0]["head_rho"] == 0.0                             # stage 2 ran
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, v in a["optimizer"]["base"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["base"]["state"][k]["momentum_buffer"])
    for key in ("top1", "head", "medium", "tail", "per_class_acc"):
        assert resumed[key] == full[key], key


@pytest.mark.parametrize("head_rho", [RHO_HEAD, 0.0], ids=["stage1", "stage2"])
def test_stacked_seeds_equal_separate_runs(single_thread, head_rho):
    """Three members with BatchNorm; in the first step member 1 has no tail sample and member 2
    no head sample (their perturbed pass of that group rides along with eps = 0 and keeps
    their BN statistics)."""
    models = []
    for k in range(3):
        torch.manual_seed(10 + k)
        models.append(ConvBN().double())
    stacked = StackedModels(copy.deepcopy(models))
    g = torch.Generator().manual_seed(3)
    kw = dict(lr=LR, momentum=MOMENTUM, weight_decay=WD, rho=RHO_TAIL, head_rho=head_rho, eta=100,
              class_counts=COUNTS)
    opts, sopt = [SSESAM(m.parameters(), **kw) for m in models], SSESAM(stacked.parameters(), **kw)
    crit = nn.CrossEntropyLoss(reduction="none")
    for step in range(2):
        x = torch.randn(3, 6, 3, 5, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (3, 6), generator=g)
        if step == 0:
            y[1], y[2] = y[1] % 2, 2 + y[2] % 2
        ref = [opt.step(m, x[k], y[k], crit)[0] for k, (m, opt) in enumerate(zip(models, opts))]
        loss, _ = sopt.step(stacked, x, y, crit)
        torch.testing.assert_close(loss, torch.stack(ref), rtol=1e-9, atol=1e-12)
    for k, m in enumerate(models):
        mine = stacked.member_state_dict(k)
        for key, t in m.state_dict().items():          # weights and BN running statistics
            torch.testing.assert_close(mine[key], t, rtol=1e-9, atol=1e-12, msg=f"member {k}: {key}")
