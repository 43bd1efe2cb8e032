"""Independent float64 reference computations of the SAM family's updates (ASAM, F-SAM, RWP /
m-RWP, GSAM, LookSAM), written from the papers' formulas with torch.func.functional_call and
autograd on dictionaries of tensors. They share no code with optim/ (the one convention taken from
its documentation is how the random rule seeds its noise, which a reference must reproduce)."""
import math

import torch
from torch.func import functional_call

from reference import per_sample_ce, sgd_update


def grad_at(model, params, x, y, v, loss=per_sample_ce, total=None):
    """grad of sum_i v[y_i] l_i / total at `params` (a dict), zeros where a parameter is unused."""
    p = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
    value = (v[y] * loss(functional_call(model, p, (x,)), y)).sum() / (total or len(y))
    g = torch.autograd.grad(value, list(p.values()), allow_unused=True)
    return {n: torch.zeros_like(p[n]) if gi is None else gi for n, gi in zip(p, g)}


def norm(d):
    return math.sqrt(sum(float((t ** 2).sum()) for t in d.values()))


def dot(a, b):
    return sum(float((a[n] * b[n]).sum()) for n in a)


def moved(params, eps):
    return {n: params[n] + eps[n] for n in params}


# ------------------------------------------------------------------------------- perturbations
def sam_eps(params, u, rho):
    n = norm(u)
    return {k: rho * u[k] / (n + 1e-12) for k in u}


def asam_eps(params, u, rho, eta):
    """Kwon et al. 2021, Eq. 9: rho T^2 u / ||T u||, T = |w| + eta on the weights, 1 on the biases
    (the authors' code scales the parameters named "weight" only)."""
    t = {k: torch.ones_like(w) if k.endswith("bias") else w.abs() + eta for k, w in params.items()}
    tu = {k: t[k] * u[k] for k in u}
    n = norm(tu)
    return {k: rho * t[k] * tu[k] / (n + 1e-12) for k in u}


class FriendlyEMA:
    """F-SAM's perturbation with its EMA m (the official order: d = u - sigma m_{t-1}, then the
    EMA update; m starts at the first u)."""

    def __init__(self, sigma, lam):
        self.sigma, self.lam, self.m = sigma, lam, None

    def __call__(self, params, u, rho):
        if self.m is None:
            self.m = {k: v.clone() for k, v in u.items()}
            return sam_eps(params, u, rho)
        d = {k: u[k] - self.sigma * self.m[k] for k in u}
        self.m = {k: self.lam * self.m[k] + (1 - self.lam) * u[k] for k in u}
        return sam_eps(params, d, rho)


class RWPNoise:
    """RWP's filter-wise noise: N(0, (rho ||w_f||)^2) per row of a weight's first axis, the whole
    tensor's norm for 1-D parameters. z: standard normals in parameter order from a CPU generator
    seeded with seed * 1_000_003 + (perturbations so far), the documented convention."""

    def __init__(self, seed):
        self.seed, self.count = seed, 0

    def __call__(self, params, u, rho):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.count)
        self.count += 1
        eps = {}
        for k, w in params.items():
            z = torch.randn(w.shape, generator=g, dtype=w.dtype)
            if w.dim() > 1:
                f = w.reshape(w.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (w.dim() - 1))
            else:
                f = w.norm()
            eps[k] = z * (rho * f)
        return eps


# ------------------------------------------------------------------------------- whole steps
def weighted_grads(model, params, x, y, a, c, rho, perturbation, loss=per_sample_ce, total=None):
    """(g, u) with g = grad L_a(w) + grad L_c(w + eps), eps = perturbation(params, u, rho),
    u = grad L_c(w); L_v = sum_i v[y_i] l_i / total (total: the global batch, len(y) by default)."""
    u = grad_at(model, params, x, y, c, loss, total)
    eps = perturbation(params, u, rho)
    g_a = grad_at(model, params, x, y, a, loss, total)
    g_c = grad_at(model, moved(params, eps), x, y, c, loss, total)
    return {k: g_a[k] + g_c[k] for k in params}, u


def weighted_step(model, params, bufs, x, y, a, c, rho, perturbation, lr, momentum, wd, loss=per_sample_ce):
    g, _ = weighted_grads(model, params, x, y, a, c, rho, perturbation, loss)
    return sgd_update(params, g, bufs, lr, momentum, wd)


def gsam_grads(model, params, x, y, a, c, rho, alpha, perturbation=sam_eps, loss=per_sample_ce, total=None):
    """GSAM, Alg. 1: g_p - alpha u_perp, u_perp = u - (<u, g_p>/||g_p||^2) g_p, g_p the whole
    perturbed gradient grad L_a(w) + grad L_c(w + eps), u = grad L_c(w)."""
    g_p, u = weighted_grads(model, params, x, y, a, c, rho, perturbation, loss, total)
    coef = dot(u, g_p) / norm(g_p) ** 2
    return {k: g_p[k] - alpha * (u[k] - coef * g_p[k]) for k in params}


class LookSAMReference:
    """LookSAM, Alg. 1 (SAM's loss): every k-th step the SAM gradient g_s and the stored
    g_v = g_s - (<g_s, g>/||g||^2) g; in between g + alpha (||g||/||g_v||) g_v."""

    def __init__(self, k, alpha, rho, perturbation=sam_eps):
        self.k, self.alpha, self.rho, self.perturbation = k, alpha, rho, perturbation
        self.t, self.g_v = 0, None

    def grads(self, model, params, x, y, loss=per_sample_ce):
        ones = torch.ones(64, dtype=torch.float64)            # every class weighted 1: SAM's loss
        g = grad_at(model, params, x, y, ones, loss)
        if self.t % self.k == 0:
            eps = self.perturbation(params, g, self.rho)
            g_s = grad_at(model, moved(params, eps), x, y, ones, loss)
            coef = dot(g_s, g) / norm(g) ** 2
            self.g_v = {k: g_s[k] - coef * g[k] for k in g}
            out = g_s
        else:
            f = self.alpha * norm(g) / norm(self.g_v)
            out = {k: g[k] + f * self.g_v[k] for k in g}
        self.t += 1
        return out
