"""Spectral density by stochastic Lanczos quadrature (SLQ; Lin, Saad & Yang 2016, used for neural
network Hessians by Ghorbani, Krishnan & Xiao 2019), smoothed with Gaussians.

For a unit start vector v, m Lanczos steps give T_m = Q diag(theta) Q^T; the Gauss quadrature
nodes theta_j with weights tau_j = Q[0, j]^2 (summing to 1) approximate the measure
sum_i (v . u_i)^2 delta(t - lambda_i). With v = z / sqrt(d), z Rademacher, E[(v . u_i)^2] = 1/d
exactly, so averaging over runs estimates the eigenvalue density (1/d) sum_i delta(t - lambda_i).
The picture replaces each delta by a Gaussian of width sigma:

    phi(t) = (1/runs) sum_runs sum_j tau_j N(t; theta_j, sigma^2)       (integrates to 1)
"""
from typing import Dict, List, Sequence

import numpy as np
import torch

from analysis.eigen import MatVec, Track, lanczos, no_track, ritz
from analysis.params import rademacher


def slq(matvec: MatVec, dim: int, runs: int, steps: int, generator: torch.Generator, dtype=torch.float32,
        device="cpu", track: Track = no_track) -> Dict:
    """-> {"nodes": [run][j], "weights": [run][j]} (each run's weights sum to 1)."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    nodes: List[List[float]] = []
    weights: List[List[float]] = []
    for r in range(runs):
        v0 = rademacher(dim, generator, dtype, device)
        alpha, beta = lanczos(matvec, v0, steps, track=lambda it, d: track(it, f"lanczos {r + 1}/{runs}"))
        theta, vecs = ritz(alpha, beta)
        nodes.append(theta.tolist())
        weights.append((vecs[0, :] ** 2).tolist())
    return {"nodes": nodes, "weights": weights}


def gaussian_density(nodes: Sequence[Sequence[float]], weights: Sequence[Sequence[float]], grid: np.ndarray,
                     sigma: float) -> np.ndarray:
    """phi on `grid`: the runs' weighted nodes, each spread as a Gaussian of width sigma, averaged."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    grid = np.asarray(grid, dtype=np.float64)
    out = np.zeros_like(grid)
    for theta, tau in zip(nodes, weights):
        theta, tau = np.asarray(theta, np.float64), np.asarray(tau, np.float64)
        z = (grid[:, None] - theta[None, :]) / sigma
        out += (np.exp(-0.5 * z ** 2) * tau[None, :]).sum(1) / (sigma * np.sqrt(2 * np.pi))
    return out / max(len(nodes), 1)


def density_on_grid(result: Dict, points: int = 1000, sigma_rel: float = 0.01, sigma: float = 0.0) -> Dict:
    """The smoothed density of an `slq` result on a grid spanning the nodes +- 5 sigma.

    sigma (absolute) wins when > 0; else sigma = sigma_rel * (largest - smallest node), or
    sigma_rel when every node is the same. -> {"grid", "density", "sigma"} (lists)."""
    flat = np.concatenate([np.asarray(n, np.float64) for n in result["nodes"]])
    width = float(flat.max() - flat.min())
    s = sigma if sigma > 0 else sigma_rel * (width if width > 0 else 1.0)
    grid = np.linspace(flat.min() - 5 * s, flat.max() + 5 * s, points)
    return {"grid": grid.tolist(), "density": gaussian_density(result["nodes"], result["weights"], grid, s).tolist(),
            "sigma": s}
