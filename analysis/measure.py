"""The three analyses of a loaded run (analysis/run.py): Hessian spectrum of a class group's
training loss, loss landscapes of class groups, class-wise sharpness. Each returns a plain dict
(JSON-ready) and is deterministic for its options' seed.

BatchNorm: "eval" (default) uses the running statistics, so the loss is a fixed function of the
weights; "train" normalises with each batch's own statistics (batches are fixed, so the loss is
still deterministic). Either way the model's buffers are restored afterwards.
"""
import contextlib
import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from analysis.density import density_on_grid, slq
from analysis.directions import random_direction
from analysis.eigen import Track, no_track, power_iteration
from analysis.groups import group_subset, per_class_subset
from analysis.hvp import BatchedLoss
from analysis.landscape import line, surface
from analysis.params import gaussian
from analysis.sharpness import classwise_sharpness
from analysis.trace import hutchinson

BN_MODES = ("eval", "train")


def stream(seed: int, purpose: int) -> torch.Generator:
    """An independent seeded generator per estimator, so that more trace probes (say) leave the
    density's start vectors unchanged."""
    state = np.random.SeedSequence([int(seed), purpose]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


@contextlib.contextmanager
def bn_mode(model: torch.nn.Module, mode: str):
    """Evaluate in eval mode (running statistics) or train mode (batch statistics); the buffers
    that train-mode forwards update are put back on exit."""
    if mode not in BN_MODES:
        raise ValueError(f"bn mode must be one of {BN_MODES}, got {mode!r}")
    was_training = model.training
    saved = [b.detach().clone() for b in model.buffers()]
    model.train(mode == "train")
    try:
        yield
    finally:
        model.train(was_training)
        with torch.no_grad():
            for b, s in zip(model.buffers(), saved):
                b.copy_(s)


def batches_of(run, indices: Sequence[int], batch_size: int, dtype: torch.dtype) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The training images `indices` (no augmentation) in batches on the run's device."""
    out = []
    for start in range(0, len(indices), batch_size):
        x, y = run.images(indices[start:start + batch_size])
        out.append((x.to(dtype), y))
    return out


def per_sample_fn(run):
    """batch -> per-sample training losses of the run's model and loss."""
    return lambda batch: run.criterion(run.model(batch[0]), batch[1])


def _counts_in(labels: np.ndarray, indices: np.ndarray, classes: Sequence[int]) -> Dict[str, int]:
    sub = labels[indices]
    return {str(k): int((sub == k).sum()) for k in classes}


# ----------------------------------------------------------------------------- Hessian

@dataclasses.dataclass(frozen=True)
class HessianOptions:
    samples: int = 512            # training samples of the group (drawn uniformly, seeded)
    batch_size: int = 128         # samples per Hessian-vector product pass
    power_iters: int = 100        # power iteration: at most this many products
    power_tol: float = 1e-3       # ... stopping when lambda changes by less than this (relative)
    trace_samples: int = 100      # Hutchinson Rademacher probes
    slq_runs: int = 1             # stochastic Lanczos quadrature: start vectors
    slq_steps: int = 80           # ... Lanczos steps per start vector
    sigma: float = 0.01           # Gaussian broadening, relative to the spectrum's width
    bn: str = "eval"
    seed: int = 0


def hessian(run, name: str, classes: Sequence[int], opts: HessianOptions, dtype=torch.float32,
            track: Track = no_track) -> Dict:
    """lambda_max (power iteration), Tr(H) (Hutchinson, with its standard error) and the eigenvalue
    density (SLQ) of the Hessian of the group's mean training loss, on `opts.samples` samples."""
    labels = run.labels
    indices = group_subset(labels, classes, opts.samples, opts.seed)
    batches = batches_of(run, indices, opts.batch_size, dtype)
    params = [p for p in run.model.parameters() if p.requires_grad]
    with bn_mode(run.model, opts.bn):
        loss = BatchedLoss(params, batches, per_sample_fn(run))
        dim, dev = loss.dim, params[0].device
        top = power_iteration(loss.hvp, gaussian(dim, stream(opts.seed, 1), dtype, dev), opts.power_iters,
                              opts.power_tol, track=lambda it, d: track(it, f"{name}: power iteration"))
        trace = hutchinson(loss.hvp, dim, opts.trace_samples, stream(opts.seed, 2), dtype, dev,
                           track=lambda it, d: track(it, f"{name}: Hutchinson"))
        spectrum = slq(loss.hvp, dim, opts.slq_runs, opts.slq_steps, stream(opts.seed, 3), dtype, dev,
                       track=lambda it, d: track(it, f"{name}: {d}"))
        value = loss.value()
    density = density_on_grid(spectrum, sigma_rel=opts.sigma)
    top.pop("vector")
    return {"group": name, "classes": list(classes), "samples": int(len(indices)),
            "samples_per_class": _counts_in(labels, indices, classes), "parameters": dim, "loss": value,
            "lambda_max": top["eigenvalue"], "power_iteration": top,
            "trace": trace["trace"], "trace_stderr": trace["stderr"], "hutchinson": trace,
            "slq_top_ritz": max(max(n) for n in spectrum["nodes"]),
            "slq_trace": dim * float(np.mean([np.dot(n, w) for n, w in zip(spectrum["nodes"], spectrum["weights"])])),
            "density": {**density, **spectrum}}


# ----------------------------------------------------------------------------- landscape

@dataclasses.dataclass(frozen=True)
class LandscapeOptions:
    samples: int = 512            # training samples per group
    batch_size: int = 256
    span: float = 1.0             # coordinates from -span to +span along each direction
    points_1d: int = 51
    points_2d: int = 21           # per axis (points_2d^2 evaluations)
    one_d: str = "zero"           # 1-D parameters (BN, biases): "zero" or "filter" (directions.py)
    bn: str = "eval"
    seed: int = 0


def landscape(run, groups: Sequence[Tuple[str, Sequence[int]]], opts: LandscapeOptions, dtype=torch.float32,
              track: Track = no_track) -> Dict:
    """Mean training loss of each group along one and two filter-normalised random directions,
    the same directions for every group: {"alphas", "line": {group: [...]}, "grid", "surface":
    {group: [[...]]}, "origin": {group: loss at w}}."""
    labels = run.labels
    data = {}
    for name, classes in groups:
        idx = group_subset(labels, classes, opts.samples, opts.seed)
        data[name] = (batches_of(run, idx, opts.batch_size, dtype), _counts_in(labels, idx, classes))
    params = list(run.model.parameters())
    d1 = random_direction(params, stream(opts.seed, 11), opts.one_d)
    d2 = random_direction(params, stream(opts.seed, 12), opts.one_d)
    per_sample = per_sample_fn(run)

    @torch.no_grad()
    def group_losses():
        return [float(sum(per_sample(b).double().sum() for b in bs)) / sum(len(b[1]) for b in bs)
                for bs, _ in data.values()]

    alphas = np.linspace(-opts.span, opts.span, opts.points_1d)
    grid = np.linspace(-opts.span, opts.span, opts.points_2d)
    with bn_mode(run.model, opts.bn):
        origin = group_losses()
        lines = line(params, d1, alphas, group_losses, track)
        surf = surface(params, d1, d2, grid, grid, group_losses, track)
    names = list(data)
    return {"groups": {n: {"classes": list(c), "samples_per_class": data[n][1]} for n, c in groups},
            "alphas": alphas.tolist(), "grid": grid.tolist(),
            "origin": dict(zip(names, origin)),
            "line": {n: lines[:, g].tolist() for g, n in enumerate(names)},
            "surface": {n: surf[:, :, g].tolist() for g, n in enumerate(names)}}


# ----------------------------------------------------------------------------- class-wise sharpness

@dataclasses.dataclass(frozen=True)
class SharpnessOptions:
    per_class: int = 100          # training samples per class (all of a smaller class)
    batch_size: int = 256
    rho: float = 0.05
    direction: str = "sam"        # "sam" (one shared perturbation) or "class" (one per class)
    definition: str = "mean"      # "mean" (class mean loss) or "paper" (Eq. 4: pi_k x the mean)
    bn: str = "eval"
    seed: int = 0


def sharpness(run, classes: Sequence[int], opts: SharpnessOptions, dtype=torch.float32,
              track: Track = no_track) -> Dict:
    """S_k = L_k(w + eps) - L_k(w) for each class of `classes` (analysis/sharpness.py), on up to
    `opts.per_class` training samples per class. The subsets are drawn for every class and the
    shared (SAM) perturbation comes from every class, so `classes` only selects what is reported."""
    counts = np.asarray(run.class_counts, dtype=np.float64)
    everyone = list(range(len(counts)))
    subsets = per_class_subset(run.labels, everyone, opts.per_class, opts.seed)
    needed = everyone if opts.direction == "sam" else list(classes)
    data = {k: batches_of(run, subsets[k], opts.batch_size, dtype) for k in needed}
    params = [p for p in run.model.parameters() if p.requires_grad]
    per_sample = per_sample_fn(run)

    def class_losses(ks):
        return torch.stack([sum(per_sample(b).double().sum() for b in data[k]) / len(subsets[k]) for k in ks])

    def weighted_grad(ks, weights):
        acc = [torch.zeros_like(p) for p in params]
        for k, w in zip(ks, weights):
            for b in data[k]:
                grads = torch.autograd.grad(per_sample(b).sum() * (w / len(subsets[k])), params, allow_unused=True)
                for a, g in zip(acc, grads):
                    if g is not None:
                        a.add_(g)
        return acc

    with bn_mode(run.model, opts.bn):
        result = classwise_sharpness(params, class_losses, weighted_grad, classes, counts / counts.sum(),
                                     opts.rho, opts.direction, opts.definition, track)
    return {"classes": list(classes), "samples_per_class": {str(k): int(len(subsets[k])) for k in classes},
            "rho": opts.rho, "direction": opts.direction, "definition": opts.definition, **result}
