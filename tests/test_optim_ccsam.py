"""CC-SAM against a brute-force per-class computation (a parameter copy per class, the official
radius written out), float64, tolerance 1e-10; the vectorised linear-head path and the generic
path agree with it on batches with one and with several classes."""
import math

import pytest
import torch

from optim import CCSAM
from optim.ccsam import radius_scales
from reference import MLP, ConvBN, ccsam_reference, params_of, per_sample_ce, reference_copy

COUNTS = [400, 120, 30, 1]   # a one-image class: (n_k - 1) must not divide by zero
LR, WD = 0.1, 5e-4


def data(kind, classes_per_batch, steps=3, b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        x = torch.randn((b, 6) if kind != "convbn" else (b, 3, 5, 5), generator=g, dtype=torch.float64)
        y = torch.randint(0, classes_per_batch, (b,), generator=g) if classes_per_batch > 1 else torch.full((b,), s % 4)
        out.append((x, y))
    return out


def model_of(kind, seed=0):
    torch.manual_seed(seed)
    return {"mlp": lambda: MLP(), "cosine": lambda: MLP(head="cosine"), "convbn": lambda: ConvBN()}[kind]().double()


def check(kind, classes_per_batch, rule, rho, ratio=0.3, momentum=0.9, scope="classifier", generic=False):
    model = model_of(kind)
    ref_model, params, bufs = reference_copy(model), params_of(model), {}
    opt = CCSAM(model.parameters(), lr=LR, momentum=momentum, weight_decay=WD, class_counts=COUNTS, rho=rho,
                ratio=ratio, radius=rule, scope=scope)
    opt.force_generic = generic
    for x, y in data(kind, classes_per_batch):
        opt.step(model, x, y, per_sample_ce)
        params = ccsam_reference(ref_model, params, bufs, x, y, COUNTS, rho, ratio, rule, LR, momentum, WD, scope)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[n], rtol=0, atol=1e-10, msg=n)


@pytest.mark.parametrize("generic", [False, True], ids=["closed-form", "generic"])
@pytest.mark.parametrize("classes_per_batch", [1, 4])
@pytest.mark.parametrize("rule, rho", [("official", 0.5), ("plain", 0.5)])
def test_linear_head(generic, classes_per_batch, rule, rho):
    check("mlp", classes_per_batch, rule, rho, generic=generic)


@pytest.mark.parametrize("classes_per_batch", [1, 4])
def test_cosine_head_generic_path(classes_per_batch):
    check("cosine", classes_per_batch, "official", 2.0)


def test_with_batchnorm_and_no_momentum():
    check("convbn", 4, "official", 0.5, momentum=0.0)


def test_scope_all_perturbs_every_parameter_per_class():
    check("mlp", 4, "plain", 0.2, scope="all")


def test_ratio_zero_is_plain_sgd():
    model, sgd_model = model_of("mlp"), model_of("mlp")
    opt = CCSAM(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD, class_counts=COUNTS, rho=0.5, ratio=0.0)
    ref = torch.optim.SGD(sgd_model.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
    for x, y in data("mlp", 4):
        opt.step(model, x, y, per_sample_ce)
        ref.zero_grad()
        per_sample_ce(sgd_model(x), y).mean().backward()
        ref.step()
    for p, q in zip(model.parameters(), sgd_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_radius_rules_by_hand():
    g = torch.tensor([[4.0, 1.0], [0.0, 9.0]], dtype=torch.float64)       # 2 classes x 2 tensors
    theta = torch.tensor([16.0, 4.0], dtype=torch.float64)
    counts = torch.tensor([17.0, 2.0], dtype=torch.float64)
    s = radius_scales(g, theta, 81, counts, rho=0.1, n_min=2.0, rule="official")
    # class 0, tensor 0: r = 0.1 * 4 * 3 / (sqrt2 * 2 * 2) = 0.3/sqrt2; scale = r / ||g|| = r / 4
    assert s[0, 0].item() == pytest.approx(0.3 / math.sqrt(2) / 4)
    assert s[1, 0].item() == 0.0                                          # zero gradient: no perturbation
    # class 1: n_k - 1 = 1; tensor 1: r = 0.1 * 2 * 3 / (sqrt2 * 1 * 3) = 0.2/sqrt2; scale = r / 9
    assert s[1, 1].item() == pytest.approx(0.2 / math.sqrt(2) / 9)
    p = radius_scales(g, theta, 81, counts, rho=0.1, n_min=2.0, rule="plain")
    assert p[0, 0].item() == pytest.approx(0.1 * (2 / 17) ** 0.25 / math.sqrt(17))   # ||g_0|| = sqrt(16 + 1)
    assert p[1, 1].item() == pytest.approx(0.1 / 9)                                   # rarest class: rho


def test_bad_arguments():
    model = model_of("mlp")
    with pytest.raises(ValueError, match="ratio must be in"):
        CCSAM(model.parameters(), lr=0.1, class_counts=COUNTS, ratio=1.5)
    with pytest.raises(ValueError, match="radius"):
        CCSAM(model.parameters(), lr=0.1, class_counts=COUNTS, radius="huge")
    with pytest.raises(ValueError, match="scope"):
        CCSAM(model.parameters(), lr=0.1, class_counts=COUNTS, scope="backbone")
