"""The top of a symmetric operator's spectrum from products v -> A v alone.

`power_iteration` gives the eigenvalue of largest magnitude (lambda_max of a Hessian at a
minimum, where the negative eigenvalues are small); `lanczos` gives the tridiagonal matrix T_m
whose eigenvalues (Ritz values) approximate the spectrum, extremes first (Golub & Van Loan,
Matrix Computations, ch. 10). Both work on flat 1-D tensors of any dtype and device.
"""
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from analysis.params import gaussian

MatVec = Callable[[torch.Tensor], torch.Tensor]
Track = Callable[[Iterable, str], Iterable]


def no_track(items: Iterable, desc: str = "") -> Iterable:
    return items


def power_iteration(matvec: MatVec, v0: torch.Tensor, max_iter: int = 100, tol: float = 1e-4,
                    track: Track = no_track) -> Dict:
    """Repeat v <- A v / ||A v|| from v0; the Rayleigh quotient v.Av estimates the eigenvalue of
    largest magnitude. Stops when it changes by less than tol * |estimate| between iterations.

    -> {"eigenvalue", "iterations", "converged", "history" (one estimate per iteration), "vector"}
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    v = v0 / v0.norm()
    history: List[float] = []
    for _ in track(range(max_iter), "power iteration"):
        w = matvec(v)
        estimate = float(torch.dot(v.double(), w.double()))
        history.append(estimate)
        norm = w.norm()
        if norm == 0:  # A v = 0: v spans the null space; the estimate 0 is exact for it
            break
        v = w / norm
        if len(history) > 1 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
            break
    converged = len(history) > 1 and abs(history[-1] - history[-2]) <= tol * abs(history[-1])
    return {"eigenvalue": history[-1], "iterations": len(history), "converged": bool(converged),
            "history": history, "vector": v}


def lanczos(matvec: MatVec, v0: torch.Tensor, steps: int, reorthogonalize: bool = True,
            track: Track = no_track) -> Tuple[np.ndarray, np.ndarray]:
    """m <= steps Lanczos steps from v0 -> (alpha (m,), beta (m-1,)): the diagonal and
    off-diagonal of T_m = Q^T A Q, Q the orthonormal Krylov basis.

    Full reorthogonalisation (twice, against every stored q) keeps Q orthonormal in floating
    point; without it, lost orthogonality makes ghost copies of converged Ritz values. It stores
    `steps` vectors of the operator's size. Stops early when the Krylov space is invariant
    (beta ~ 0): T_m then holds eigenvalues of A exactly.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    # Exact invariance leaves a residual at rounding level, ~1e-13 (float64) to ~1e-5 (float32) of
    # ||A q||; sqrt(machine epsilon) separates that from a real new direction in both.
    breakdown = torch.finfo(v0.dtype).eps ** 0.5
    q = v0 / v0.norm()
    basis = [q]
    alpha: List[float] = []
    beta: List[float] = []
    q_prev, b_prev = torch.zeros_like(q), 0.0
    for j in track(range(steps), "lanczos"):
        w = matvec(q)
        scale = float(w.norm())
        a = float(torch.dot(q.double(), w.double()))
        alpha.append(a)
        w = w - a * q - b_prev * q_prev
        if reorthogonalize:
            for _ in range(2):
                for u in basis:
                    w = w - torch.dot(u, w) * u
        b = float(w.norm())
        if j == steps - 1 or b <= breakdown * max(scale, 1e-30):
            break
        beta.append(b)
        q_prev, q, b_prev = q, w / b, b
        if reorthogonalize:
            basis.append(q)
    return np.asarray(alpha), np.asarray(beta[:len(alpha) - 1])


def ritz(alpha: np.ndarray, beta: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the tridiagonal T: -> (Ritz values ascending, eigenvectors as columns)."""
    t = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    return np.linalg.eigh(t)


def lanczos_top(matvec: MatVec, dim: int, steps: int, generator: torch.Generator, dtype=torch.float32,
                device="cpu", track: Track = no_track) -> float:
    """The largest Ritz value after `steps` Lanczos steps from a seeded Gaussian start."""
    alpha, beta = lanczos(matvec, gaussian(dim, generator, dtype, device), steps, track=track)
    return float(ritz(alpha, beta)[0][-1])
