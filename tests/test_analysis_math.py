"""analysis/ numerics against answers known in closed form or built independently: a quadratic
0.5 w^T A w with chosen eigenvalues, and a tiny network whose full Hessian is formed by autograd."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from analysis import measure
from analysis.density import density_on_grid, gaussian_density, slq
from analysis.directions import filter_normalize, random_direction
from analysis.eigen import lanczos, power_iteration, ritz
from analysis.groups import group_subset, per_class_subset, resolve_group
from analysis.hvp import BatchedLoss
from analysis.landscape import line, surface
from analysis.params import gaussian, generator, unflatten
from analysis.trace import hutchinson
from core.errors import UserError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("single_thread")

# Eigenvalue: multiplicity. d = 40, Tr = 47; a negative and a zero cluster test the support.
SPECTRUM = {10.0: 1, 5.0: 3, 2.0: 6, 1.0: 10, 0.5: 10, 0.0: 5, -1.0: 5}



def trapezoid(y, x):
    """The trapezoid rule (numpy.trapezoid is numpy 2 only; the requirements allow numpy 1.24)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)

def quadratic(spectrum=SPECTRUM, seed=0):
    """A = Q diag(lambda) Q^T with a random orthogonal Q: every entry is off-diagonal mass, so
    Hutchinson has a non-zero variance (for a diagonal A it is exact)."""
    eig = torch.tensor([lam for lam, m in spectrum.items() for _ in range(m)], dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(len(eig), len(eig), generator=generator(seed), dtype=F64))
    a = q @ torch.diag(eig) @ q.T
    return (a + a.T) / 2, eig


# ----------------------------------------------------------------------------- quadratic

def test_power_iteration_finds_lambda_max_of_quadratic():
    a, eig = quadratic()
    r = power_iteration(lambda v: a @ v, gaussian(len(eig), generator(1), F64), max_iter=500, tol=1e-12)
    assert r["eigenvalue"] == pytest.approx(10.0, abs=1e-8)
    assert r["converged"] and r["iterations"] < 500
    assert abs(float(r["vector"] @ a @ r["vector"]) - 10.0) < 1e-8


def test_lanczos_stops_on_invariant_subspace_with_exact_eigenvalues():
    a, _ = quadratic()
    alpha, beta = lanczos(lambda v: a @ v, gaussian(40, generator(2), F64), steps=30)
    assert len(alpha) == 7  # 7 distinct eigenvalues: the Krylov space is invariant after 7 steps
    np.testing.assert_allclose(ritz(alpha, beta)[0], sorted(SPECTRUM), atol=1e-9)


def test_float32_spectrum_is_exact_to_float64_normalisation():
    """A float32 operator of 500,000 dimensions, eigenvalue 3 on half of the coordinates (so the
    top eigenvector is spread over all of them, as a network's is): lambda_max and the top Ritz
    value within 5e-7 of 3. Normalising with float32 norms put both about 1e-5 too high."""
    n = 500_000
    d = torch.rand(n, generator=generator(0), dtype=torch.float64)
    d[: n // 2] = 3.0
    d32 = d.float()
    v0 = torch.randn(n, generator=generator(1))
    top = power_iteration(lambda v: d32 * v, v0, max_iter=10, tol=0)["eigenvalue"]
    alpha, beta = lanczos(lambda v: d32 * v, v0, 8)
    assert abs(top / 3 - 1) < 5e-7 and abs(ritz(alpha, beta)[0][-1] / 3 - 1) < 5e-7


def test_slq_density_support_and_mass_of_quadratic():
    a, eig = quadratic()
    d, runs = len(eig), 200
    res = slq(lambda v: a @ v, d, runs=runs, steps=20, generator=generator(3), dtype=F64)
    nodes, weights = np.concatenate(res["nodes"]), np.concatenate(res["weights"])
    assert nodes.min() >= -1.0 - 1e-9 and nodes.max() <= 10.0 + 1e-9           # support = [lambda_min, lambda_max]
    for w in res["weights"]:
        assert sum(w) == pytest.approx(1.0, abs=1e-12)
    for lam, mult in SPECTRUM.items():                                           # mass of each cluster = mult / d
        assert weights[np.abs(nodes - lam) < 1e-6].sum() / runs == pytest.approx(mult / d, abs=0.02), lam
    dens = density_on_grid(res, points=4000, sigma_rel=0.01)
    grid, y, s = np.asarray(dens["grid"]), np.asarray(dens["density"]), dens["sigma"]
    assert trapezoid(y, grid) == pytest.approx(1.0, abs=1e-4)
    assert grid[0] == pytest.approx(-1 - 5 * s) and grid[-1] == pytest.approx(10 + 5 * s)
    gap = (grid > 6.0) & (grid < 9.0)                                            # no eigenvalue between 5 and 10 (9 sigma off)
    assert y[gap].max() < 1e-6
    near_top = np.abs(grid - 10.0) < 3 * s
    assert trapezoid(y[near_top], grid[near_top]) == pytest.approx(1 / d, abs=0.01)
    # The quadrature's mean is v^T A v: d times it estimates the trace.
    est = d * np.mean([np.dot(n, w) for n, w in zip(res["nodes"], res["weights"])])
    assert est == pytest.approx(float(eig.sum()), rel=0.05)


def test_gaussian_density_of_single_node_is_the_normal_pdf():
    grid = np.linspace(-1, 3, 9)
    got = gaussian_density([[1.0]], [[1.0]], grid, 0.5)
    np.testing.assert_allclose(got, np.exp(-0.5 * ((grid - 1) / 0.5) ** 2) / (0.5 * math.sqrt(2 * math.pi)))


def test_hutchinson_trace_variance_and_shrinking_error():
    a, eig = quadratic()
    mv, d, true = (lambda v: a @ v), len(eig), float(eig.sum())
    big = hutchinson(mv, d, 4000, generator(5), F64)
    assert abs(big["trace"] - true) < 4 * big["stderr"]
    # Rademacher probes: Var(z^T A z) = 2 sum_{i != k} A_ik^2.
    off = float((a ** 2).sum() - (torch.diag(a) ** 2).sum())
    assert np.var(big["values"], ddof=1) == pytest.approx(2 * off, rel=0.15)
    small, large = (hutchinson(mv, d, s, generator(6), F64) for s in (16, 1024))
    assert small["stderr"] / large["stderr"] == pytest.approx(8.0, rel=0.35)   # 1 / sqrt(samples)
    rms = {s: math.sqrt(np.mean([(hutchinson(mv, d, s, generator(100 + r), F64)["trace"] - true) ** 2
                                 for r in range(30)])) for s in (8, 128)}
    assert rms[128] < rms[8] / 2.5                                               # sqrt(16) = 4 expected


def test_hutchinson_is_exact_for_a_diagonal_matrix():
    diag = torch.tensor([3.0, -1.0, 0.5, 7.0], dtype=F64)
    r = hutchinson(lambda v: diag * v, 4, 5, generator(0), F64)
    assert r["trace"] == pytest.approx(9.5) and r["stderr"] == pytest.approx(0.0, abs=1e-12)


def test_batched_loss_weights_batches_by_size():
    """l_i = 0.5 w^T A_i w over batches of 3, 3 and 4 samples: H = mean_i A_i, not a mean of batch means."""
    d, n = 5, 10
    g = generator(7)
    mats = [(m + m.T) / 2 for m in torch.randn(n, d, d, generator=g, dtype=F64)]
    w = torch.randn(d, generator=g, dtype=F64, requires_grad=True)
    batches = [list(range(0, 3)), list(range(3, 6)), list(range(6, 10))]
    per_sample = lambda b: torch.stack([0.5 * w @ mats[i] @ w for i in b])
    loss = BatchedLoss([w], [[b] for b in batches], lambda b: per_sample(b[0]))
    mean_a = torch.stack(mats).mean(0)
    v = torch.randn(d, generator=g, dtype=F64)
    assert torch.allclose(loss.hvp(v), mean_a @ v, atol=1e-12)
    assert torch.allclose(loss.gradient(), mean_a @ w.detach(), atol=1e-12)
    assert loss.value() == pytest.approx(float(0.5 * w.detach() @ mean_a @ w.detach()))
    assert loss.total == n


# ----------------------------------------------------------------------------- a tiny network

class TinyNet(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, classes)

    def forward(self, x):
        return self.fc(F.softplus(self.bn(self.conv(x))).mean((2, 3)))


def tiny_setup(seed=0):
    torch.manual_seed(seed)
    model = TinyNet().double()
    with torch.no_grad():  # running statistics away from (0, 1), so eval mode is not train mode
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(12, 2, 4, 4, dtype=F64)
    y = torch.arange(12) % 3
    batches = [(x[:5], y[:5]), (x[5:9], y[5:9]), (x[9:], y[9:])]
    return model, batches


def full_hessian(model, batches, train_mode):
    """The Hessian of (1/N) sum_i CE_i as a dense matrix, by autograd on a flat parameter vector."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in shapes])
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    n_total = sum(len(b[1]) for b in batches)
    model.train(train_mode)

    def f(flat):
        params = dict(zip(names, unflatten(flat, shapes)))
        total = 0.0
        for x, y in batches:
            logits = functional_call(model, ({**params, **{k: v.clone() for k, v in buffers.items()}},), (x,))
            total = total + F.cross_entropy(logits, y, reduction="sum")
        return total / n_total

    h = torch.autograd.functional.hessian(f, flat0)
    model.eval()
    return h


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_hvp_power_lanczos_trace_match_full_hessian_of_tiny_network(mode):
    model, batches = tiny_setup()
    h = full_hessian(model, batches, mode == "train")
    eig = torch.linalg.eigvalsh(h)
    buffers = [b.clone() for b in model.buffers()]
    params = list(model.parameters())
    with measure.bn_mode(model, mode):
        loss = BatchedLoss(params, batches, lambda b: F.cross_entropy(model(b[0]), b[1], reduction="none"))
        v = gaussian(loss.dim, generator(1), F64)
        assert torch.allclose(loss.hvp(v), h @ v, atol=1e-10)
        top = power_iteration(loss.hvp, gaussian(loss.dim, generator(2), F64), max_iter=3000, tol=1e-13)
        alpha, beta = lanczos(loss.hvp, gaussian(loss.dim, generator(3), F64), steps=loss.dim)
        trace = hutchinson(loss.hvp, loss.dim, 100, generator(4), F64)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))   # running stats untouched
    largest = eig[eig.abs().argmax()]
    assert top["eigenvalue"] == pytest.approx(float(largest), rel=1e-6)
    assert ritz(alpha, beta)[0].max() == pytest.approx(float(eig.max()), rel=1e-8)
    assert ritz(alpha, beta)[0].min() == pytest.approx(float(eig.min()), abs=1e-8 * float(eig.abs().max()))
    assert abs(trace["trace"] - float(torch.trace(h))) < 4 * trace["stderr"]


# ----------------------------------------------------------------------------- directions, landscape

def test_filter_normalisation_keeps_each_filter_norm():
    g = generator(0)
    params = [torch.randn(4, 3, 3, 3, generator=g), torch.randn(5, 4, generator=g),
              torch.randn(5, generator=g), torch.zeros(2, 3)]
    raw = [torch.randn(p.shape, generator=g) * 7 for p in params]
    out = filter_normalize(raw, params)
    for t in (0, 1):
        d, w, r = out[t], params[t], raw[t]
        for i in range(len(w)):
            assert float(d[i].norm()) == pytest.approx(float(w[i].norm()), rel=1e-6)
            cos = float((d[i] * r[i]).sum() / (d[i].norm() * r[i].norm()))
            assert cos == pytest.approx(1.0, abs=1e-6)                      # same direction, new length
    assert torch.count_nonzero(out[2]) == 0                                 # 1-D: zero by default
    assert torch.count_nonzero(out[3]) == 0                                 # zero filters stay zero
    per_entry = filter_normalize(raw, params, one_d="filter")[2]
    assert torch.allclose(per_entry.abs(), params[2].abs())
    assert torch.equal(torch.sign(per_entry), torch.sign(raw[2]))


def test_random_direction_is_seeded():
    params = [torch.randn(3, 2, 2), torch.randn(4)]
    a = random_direction(params, generator(5))
    b = random_direction(params, generator(5))
    c = random_direction(params, generator(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_landscape_of_quadratic_matches_closed_form_and_restores_weights():
    a, _ = quadratic({3.0: 2, 1.0: 2, -0.5: 2})
    w = torch.randn(6, generator=generator(1), dtype=F64)
    d1, d2 = torch.randn(6, generator=generator(2), dtype=F64), torch.randn(6, generator=generator(3), dtype=F64)
    f = lambda u: float(0.5 * u @ a @ u)
    params = [w.clone()]
    alphas = np.linspace(-1, 1, 5)
    got = line(params, [d1], alphas, lambda: f(params[0]))
    np.testing.assert_allclose(got[:, 0], [f(w + t * d1) for t in alphas], rtol=1e-12)
    betas = np.linspace(-0.5, 0.5, 3)
    surf = surface(params, [d1], [d2], alphas, betas, lambda: [f(params[0]), 2 * f(params[0])])
    assert surf.shape == (3, 5, 2)
    for j, b in enumerate(betas):
        for i, t in enumerate(alphas):
            assert surf[j, i, 0] == pytest.approx(f(w + t * d1 + b * d2), rel=1e-12)
            assert surf[j, i, 1] == pytest.approx(2 * surf[j, i, 0])
    assert torch.equal(params[0], w)


def fake_run(model, x, y, counts):
    """The part of analysis.run.LoadedRun that measure.py reads."""
    labels = y.numpy()
    return SimpleNamespace(model=model, labels=labels, class_counts=counts,
                           criterion=lambda logits, t: F.cross_entropy(logits, t, reduction="none"),
                           images=lambda idx: (x[list(idx)], y[list(idx)]))


def test_landscape_at_origin_equals_the_models_loss():
    model, batches = tiny_setup()
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    run = fake_run(model, x, y, [4, 4, 4])
    with torch.no_grad():
        expected = {"a": float(F.cross_entropy(model.eval()(x[y < 2]), y[y < 2])),
                    "b": float(F.cross_entropy(model(x[y == 2]), y[y == 2]))}
    before = [p.clone() for p in model.parameters()]
    opts = measure.LandscapeOptions(samples=100, batch_size=3, points_1d=5, points_2d=3, span=0.5)
    res = measure.landscape(run, [("a", [0, 1]), ("b", [2])], opts, dtype=F64)
    for g, value in expected.items():
        assert res["origin"][g] == pytest.approx(value, rel=1e-12)
        assert res["line"][g][2] == pytest.approx(value, rel=1e-12)         # alpha = 0
        assert res["surface"][g][1][1] == pytest.approx(value, rel=1e-12)   # (0, 0)
        assert res["line"][g][0] != pytest.approx(value)                     # it does move
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


# ----------------------------------------------------------------------------- class-wise sharpness

@pytest.mark.parametrize("definition", ["mean", "paper"])
@pytest.mark.parametrize("direction", ["sam", "class"])
def test_classwise_sharpness_matches_autograd(direction, definition):
    """Eq. 4 by autograd: the class-mean loss rise ("mean"), or the paper's L_S^k = (1/n) sum over
    class k = pi_k x the class mean ("paper")."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(15, 4, dtype=F64)
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    counts, rho = [70, 50, 30], 0.3
    pi = torch.tensor(counts, dtype=F64) / sum(counts)
    names = [n for n, _ in model.named_parameters()]
    w0 = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}

    def class_loss(params, k):
        return F.cross_entropy(functional_call(model, params, (x[y == k],)), y[y == k])

    def shift(u):
        norm = torch.sqrt(sum((g ** 2).sum() for g in u))
        return {n: w0[n].detach() + rho * g / norm for n, g in zip(names, u)}

    if direction == "sam":
        u = torch.autograd.grad(sum(pi[k] * class_loss(w0, k) for k in range(3)), list(w0.values()))
        expected = [float((class_loss(shift(u), k) - class_loss(w0, k)).detach()) for k in range(3)]
    else:
        expected = [float((class_loss(shift(torch.autograd.grad(class_loss(w0, k), list(w0.values()))), k)
                           - class_loss(w0, k)).detach()) for k in range(3)]
    if definition == "paper":
        expected = [float(pi[k]) * e for k, e in enumerate(expected)]
    run = fake_run(model, x, y, counts)
    opts = measure.SharpnessOptions(per_class=10, batch_size=2, rho=rho, direction=direction, definition=definition)
    res = measure.sharpness(run, [0, 1, 2], opts, dtype=F64)
    np.testing.assert_allclose(res["sharpness"], expected, rtol=1e-9)
    assert res["definition"] == definition
    if direction == "class":  # each class's own ascent step raises its loss (not so for a shared one)
        assert all(s > 0 for s in res["sharpness"])


@pytest.mark.parametrize("direction", ["sam", "class"])
def test_classwise_sharpness_classes_select_what_is_reported(direction):
    """Asking for class 2 alone, or for classes 1 and 2, reports exactly what the run over every
    class reports for them: the same per-class subsets (2 of 7, 5, 3 samples) and, for the shared
    perturbation, the gradient of every class."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(15, 4, dtype=F64), torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    run = fake_run(model, x, y, [70, 50, 30])
    opts = measure.SharpnessOptions(per_class=2, batch_size=2, rho=0.3, direction=direction)
    every = measure.sharpness(run, [0, 1, 2], opts, dtype=F64)
    for subset in ([2], [1, 2]):
        part = measure.sharpness(run, subset, opts, dtype=F64)
        assert part["sharpness"] == [every["sharpness"][k] for k in subset]
        assert part["loss"] == [every["loss"][k] for k in subset]


# ----------------------------------------------------------------------------- groups and subsets

def test_groups_and_subsets():
    masks = {"head": np.array([1, 1, 0, 0, 0], bool), "medium": np.array([0, 0, 1, 0, 0], bool),
             "tail": np.array([0, 0, 0, 1, 1], bool)}
    names = ["cat", "dog", "emu", "fox", "gnu"]
    assert resolve_group("head", masks, names) == [0, 1]
    assert resolve_group("tail", masks, names) == [3, 4]
    assert resolve_group("all", masks, names) == [0, 1, 2, 3, 4]
    assert resolve_group("4,emu", masks, names) == [2, 4]
    for bad, fragment in (("0,,1", "bad class list"), ("7", "out of range"), ("cow", "unknown group or class"),
                          ("1,dog", "twice")):
        with pytest.raises(UserError, match=fragment):
            resolve_group(bad, masks, names)
    empty = {**masks, "medium": np.zeros(5, bool)}
    with pytest.raises(UserError, match="holds no class"):
        resolve_group("medium", empty, names)
    labels = np.repeat(np.arange(5), [40, 30, 20, 10, 5])
    a = group_subset(labels, [0, 1], 35, seed=1)
    assert len(a) == 35 and len(set(a)) == 35 and set(labels[a]) <= {0, 1}
    assert np.array_equal(a, group_subset(labels, [0, 1], 35, seed=1))
    assert not np.array_equal(a, group_subset(labels, [0, 1], 35, seed=2))
    assert np.array_equal(group_subset(labels, [3, 4], 100, seed=0), np.flatnonzero(labels >= 3))
    per = per_class_subset(labels, [0, 4], 8, seed=0)
    assert len(per[0]) == 8 and len(per[4]) == 5 and set(labels[per[0]]) == {0}
