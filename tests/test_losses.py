"""Every loss against its formula on hand-made logits and counts, DRW weights and reductions."""
import math

import pytest
import torch
import torch.nn.functional as F

from engine.config import section
from losses import LOSSES, build_loss
from losses.drw import class_balanced_weights, drw_weights
from models.heads import CosineClassifier

COUNTS = [16, 4, 1]
Z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
Y = torch.tensor([0, 2, 1, 2])


def nll(logits_row, y):
    """-log softmax(logits_row)[y], written out."""
    return -(float(logits_row[y]) - math.log(sum(math.exp(v) for v in logits_row.tolist())))


def build(name, **kw):
    return build_loss(section("loss", name=name, **kw), COUNTS)


def test_ce_by_hand():
    out = build("ce")(Z, Y)
    assert out.shape == (4,)
    for i in range(4):
        assert out[i].item() == pytest.approx(nll(Z[i], Y[i]))


def test_la_adds_tau_log_prior():
    out = build("la", tau=1.5)(Z, Y)
    log_pi = [math.log(n / 21) for n in COUNTS]
    for i in range(4):
        assert out[i].item() == pytest.approx(nll(Z[i] + 1.5 * torch.tensor(log_pi, dtype=torch.float64), Y[i]))


def test_vs_formula_and_gamma0_is_la():
    out = build("vs", gamma=0.5, tau=0.75)(Z, Y)
    scale = torch.tensor([(n / 16) ** 0.5 for n in COUNTS], dtype=torch.float64)
    shift = torch.tensor([0.75 * math.log(n / 21) for n in COUNTS], dtype=torch.float64)
    for i in range(4):
        assert out[i].item() == pytest.approx(nll(Z[i] * scale + shift, Y[i]))
    torch.testing.assert_close(build("vs", gamma=0.0, tau=1.2)(Z, Y), build("la", tau=1.2)(Z, Y))


def test_ldam_margins_by_hand():
    # n^(-1/4) = [1/2, 1/sqrt(2), 1]; scaled so the largest is 0.5: [0.25, 0.3536, 0.5].
    loss = build("ldam", max_m=0.5, s=30.0)
    torch.testing.assert_close(loss.margins.double(), torch.tensor([0.25, 0.5 / math.sqrt(2), 0.5], dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)
    cos = torch.tanh(Z)   # any values in [-1, 1]
    out = loss(cos, Y)
    margins = [0.25, 0.5 / math.sqrt(2), 0.5]
    for i in range(4):
        row = cos[i].clone()
        row[Y[i]] -= margins[Y[i]]
        assert out[i].item() == pytest.approx(nll(30.0 * row, Y[i]), rel=1e-5)


def test_ldam_with_the_cosine_head():
    torch.manual_seed(0)
    head = CosineClassifier(5, 3).double()
    feats = torch.randn(4, 5, dtype=torch.float64)
    cos = head(feats)
    expected = F.normalize(feats, dim=1) @ F.normalize(head.weight, dim=1).t()
    torch.testing.assert_close(cos, expected)
    assert cos.abs().max() <= 1.0
    out = build("ldam")(cos, Y)
    assert torch.isfinite(out).all() and out.shape == (4,)


def test_class_balanced_weights_by_hand():
    w = class_balanced_weights([10, 2], beta=0.9)
    raw = [0.1 / (1 - 0.9 ** 10), 0.1 / (1 - 0.81)]
    assert w.tolist() == pytest.approx([2 * r / sum(raw) for r in raw])
    assert w.sum().item() == pytest.approx(2.0)


def test_drw_switches_on_at_its_epoch():
    assert drw_weights(159, COUNTS, 160, 0.9999).tolist() == [1.0, 1.0, 1.0]
    assert drw_weights(160, COUNTS, 160, 0.9999).tolist() == pytest.approx(class_balanced_weights(COUNTS, 0.9999).tolist())
    assert drw_weights(199, COUNTS, None, 0.9999).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_both_drw_reductions(name):
    kw = {"ldam": {}, "vs": {"gamma": 0.3}}.get(name, {})
    w = class_balanced_weights(COUNTS, 0.9999)
    logits = torch.tanh(Z)
    plain = build(name, **kw)(logits, Y)
    batch = build(name, drw_reduction="batch", **kw)
    batch.set_class_weight(w)
    weights = build(name, drw_reduction="weights", **kw)
    weights.set_class_weight(w)
    wy = w[Y].to(plain.dtype)
    # "batch" (official Focal-SAM): sum_i w_{y_i} l_i / b ; "weights" (PyTorch): sum_i w_{y_i} l_i / sum_i w_{y_i}
    assert batch(logits, Y).mean().item() == pytest.approx(((wy * plain).sum() / 4).item(), rel=1e-6)
    assert weights(logits, Y).mean().item() == pytest.approx(((wy * plain).sum() / wy.sum()).item(), rel=1e-6)


def test_weights_reduction_is_pytorchs_weighted_mean():
    w = class_balanced_weights(COUNTS, 0.99).float()
    loss = build("ce", drw_reduction="weights")
    loss.set_class_weight(w)
    z = Z.float()
    assert loss(z, Y).mean().item() == pytest.approx(F.cross_entropy(z, Y, weight=w).item(), rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_per_sample_and_keeps_float64(name):
    out = build(name)(torch.tanh(Z), Y)
    assert out.shape == (4,) and out.dtype == torch.float64


@pytest.mark.parametrize("name, kw", [("la", {"tau": 1.0}), ("vs", {"tau": 1.2, "gamma": 0.2}), ("ldam", {})])
def test_float64_losses_are_exact(name, kw):
    """The class constants (log prior, VS scales, LDAM margins) are kept in float64: a float64
    run matches the formula to rounding (float32 constants were off by ~1e-8 relative)."""
    counts = torch.tensor([5000.0, 1234.0, 321.0, 77.0, 50.0], dtype=torch.float64)
    z = torch.linspace(-1.0, 1.0, 5 * 3, dtype=torch.float64).reshape(3, 5) * 0.9
    y = torch.tensor([0, 3, 4])
    out = build_loss(section("loss", name=name, **kw), counts.tolist())(z, y)
    log_pi = (counts / counts.sum()).log()
    if name == "la":
        adjusted = z + log_pi
    elif name == "vs":
        adjusted = z * (counts / counts.max()) ** 0.2 + 1.2 * log_pi
    else:
        m = counts ** -0.25
        adjusted = 30.0 * (z - F.one_hot(y, 5).double() * (0.5 * m / m.max()))
    expected = torch.logsumexp(adjusted, 1) - adjusted.gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=0)
