"""Independent reference computations of the optimizer formulas (each paper's equations), written
directly with torch.func.functional_call and autograd in float64. They share no code with optim/."""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from models.heads import Classifier, CosineClassifier


class MLP(Classifier):
    """No BatchNorm: a two-layer feature map and a linear (or cosine) head."""

    def __init__(self, d_in=6, width=8, classes=4, head="linear"):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.classifier = nn.Linear(width, classes) if head == "linear" else CosineClassifier(width, classes)

    def forward_features(self, x):
        return self.body(x)


class ConvBN(Classifier):
    """With BatchNorm (running statistics and affine parameters)."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.classifier = nn.Linear(4, classes)

    def forward_features(self, x):
        return F.relu(self.bn(self.conv(x))).mean((2, 3))


class ConvGN(Classifier):
    """ConvBN with GroupNorm: normalises each sample on its own, so a batch split over ranks
    computes exactly what the whole batch computes (BatchNorm does not: ConvBN)."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.classifier = nn.Linear(4, classes)

    def forward_features(self, x):
        return F.relu(self.gn(self.conv(x))).mean((2, 3))


def per_sample_ce(logits, targets):
    return F.cross_entropy(logits, targets, reduction="none")


def sgd_update(params, grads, bufs, lr, momentum, weight_decay):
    """torch.optim.SGD without dampening or Nesterov, written out."""
    out = {}
    for n, w in params.items():
        if grads.get(n) is None:
            out[n] = w
            continue
        d = grads[n] + weight_decay * w
        bufs[n] = d.clone() if n not in bufs or momentum == 0 else momentum * bufs[n] + d
        out[n] = w - lr * (bufs[n] if momentum else d)
    return out


def weighted_sam_grads(model, params, x, y, a, c, rho, total, perturbed=None, loss=per_sample_ce):
    """g = grad L_a(w) + grad L_c(w + eps), eps = rho u / (||u|| + 1e-12), u = grad L_c(w), where
    L_v(w) = sum_i v[y_i] l_i(w) / total (total: the global batch size)."""
    names = list(params)
    perturbed = names if perturbed is None else perturbed

    def L(p, v):
        logits = functional_call(model, p, (x,))
        return (v[y] * loss(logits, y)).sum() / total

    def grad(p_values, v):
        p = {n: t.detach().clone().requires_grad_(True) for n, t in p_values.items()}
        gs = torch.autograd.grad(L(p, v), [p[n] for n in names], allow_unused=True)
        return {n: (torch.zeros_like(p[n]) if g is None else g) for n, g in zip(names, gs)}

    u = grad(params, c)
    norm = math.sqrt(sum(float((u[n] ** 2).sum()) for n in perturbed))
    eps = {n: (rho * u[n] / (norm + 1e-12) if n in perturbed else torch.zeros_like(u[n])) for n in names}
    g_a = grad(params, a)
    g_c = grad({n: params[n] + eps[n] for n in names}, c)
    return {n: g_a[n] + g_c[n] for n in names}


def weighted_sam_reference(model, params, bufs, x, y, a, c, rho, lr, momentum, wd, perturbed=None, loss=per_sample_ce):
    """One step on the whole batch, then SGD. `model` is only used as a function (its BN buffers may change)."""
    g = weighted_sam_grads(model, params, x, y, a, c, rho, len(y), perturbed, loss)
    return sgd_update(params, g, bufs, lr, momentum, wd)


def ccsam_grads(model, params, x, y, counts, rho, ratio, rule, total, scope="classifier", loss=per_sample_ce):
    """CC-SAM by brute force: a separate parameter copy per class, the official radius written out.

    Gradient of sum_i [(1 - r) l_i(w) + r l_i(w + eps_{y_i})] / total, eps constant.
    """
    names = list(params)
    scope_names = [n for n in names if n.startswith("classifier.")] if scope == "classifier" else names
    p = {n: t.detach().clone().requires_grad_(True) for n, t in params.items()}
    feats = functional_call(model, p, (x,), {"return_features": True})[0]
    head = {n[len("classifier."):]: p[n] for n in names if n.startswith("classifier.")}
    logits = functional_call(model.classifier, head, (feats,))
    clean = loss(logits, y)
    perturbed_logits = torch.zeros_like(logits)
    n_min = min(counts)
    num = sum(params[n].numel() for n in scope_names)
    theta_norm = math.sqrt(sum(float((params[n] ** 2).sum()) for n in scope_names)) + 1e-12   # ONE norm
    for k in torch.unique(y).tolist():
        idx = (y == k).nonzero().flatten()
        gk = torch.autograd.grad(clean[idx].mean(), [p[n] for n in scope_names], retain_graph=True, allow_unused=True)
        gk = [torch.zeros_like(p[n]) if g is None else g for n, g in zip(scope_names, gk)]
        moved = dict(p)
        norm_all = math.sqrt(sum(float((g ** 2).sum()) for g in gk))
        for n, g in zip(scope_names, gk):
            gn = float(g.norm())
            if gn == 0:
                continue
            if rule == "official":
                r = rho * math.sqrt(theta_norm) * num ** 0.25 / (
                    math.sqrt(2) * max(counts[k] - 1, 1) ** 0.25 * math.sqrt(gn))
                eps = r * g / gn
            else:
                eps = rho * (n_min / counts[k]) ** 0.25 * g / norm_all
            moved[n] = p[n] + eps.detach()
        if scope == "classifier":
            mh = {n[len("classifier."):]: moved[n] for n in names if n.startswith("classifier.")}
            z = functional_call(model.classifier, mh, (feats[idx],))
        else:
            z = functional_call(model, moved, (x[idx],))
        perturbed_logits = perturbed_logits.index_put((idx,), z)
    total_loss = ((1 - ratio) * clean + ratio * loss(perturbed_logits, y)).sum() / total
    gs = torch.autograd.grad(total_loss, [p[n] for n in names], allow_unused=True)
    return {n: g for n, g in zip(names, gs)}


def ccsam_reference(model, params, bufs, x, y, counts, rho, ratio, rule, lr, momentum, wd, scope="classifier",
                    loss=per_sample_ce):
    g = ccsam_grads(model, params, x, y, counts, rho, ratio, rule, len(y), scope, loss)
    return sgd_update(params, g, bufs, lr, momentum, wd)


def sum_over_shards(grad_fn, x, y, world, **kw):
    """Per-replica ("local") reference: each shard x[r::world] perturbs along its own gradient;
    the contributions, each normalised by the global batch size, are summed."""
    total = {}
    for r in range(world):
        g = grad_fn(x=x[r::world], y=y[r::world], total=len(y), **kw)
        for n, v in g.items():
            total[n] = v if n not in total else total[n] + v
    return total


def params_of(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def reference_copy(model):
    return copy.deepcopy(model)


def random_batches(kind: str, n: int, b: int = 10, seed: int = 0, dtype=torch.float64, tail_first: bool = False):
    """n batches of b random inputs for MLP ("mlp": 6 features) or ConvBN (3 x 5 x 5) and labels
    of 4 classes; tail_first: the first label of each batch is class 3, the tail of COUNTS-like
    profiles (so that ImbSAM's perturbed pass runs)."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, 6) if kind == "mlp" else (b, 3, 5, 5)
    out = []
    for _ in range(n):
        x, y = torch.randn(shape, generator=g, dtype=dtype), torch.randint(0, 4, (b,), generator=g)
        if tail_first:
            y[0] = 3
        out.append((x, y))
    return out


def float64_model(kind: str, seed: int = 0, head: str = "linear"):
    """MLP or ConvBN in float64, initialised from `seed`."""
    torch.manual_seed(seed)
    return (MLP(head=head) if kind == "mlp" else ConvBN()).double()
