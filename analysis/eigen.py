"""The top of a symmetric operator's spectrum from products v -> A v alone.

`power_iteration` gives the eigenvalue of largest magnitude (lambda_max of a Hessian at a
minimum, where the negative eigenvalues are small); `lanczos` gives the tridiagonal matrix T_m
whose eigenvalues (Ritz values) approximate the spectrum, extremes first (Golub & Van Loan,
Matrix Computations, ch. 10). Both work on flat 1-D tensors of any dtype and device.

Norms and Rayleigh quotients are accumulated in float64 whatever the vectors' dtype, and every
Rayleigh quotient divides by the stored vector's own squared norm: a float32 norm of a vector with
millions of entries is off by about 1e-5 (relative), and a vector normalised with it has a norm
off by as much, which biased lambda_max and the Ritz values high (by ~1e-4 at ResNet-32 size).
"""
from typing import Callable, Dict, Iterable, List, Tuple

import numpy as np
import torch

from analysis.params import gaussian

MatVec = Callable[[torch.Tensor], torch.Tensor]
Track = Callable[[Iterable, str], Iterable]


def no_track(items: Iterable, desc: str = "") -> Iterable:
    return items


def dot64(a: torch.Tensor, b: torch.Tensor) -> float:
    """a . b accumulated in float64."""
    return float(torch.dot(a.double(), b.double()))


def norm64(a: torch.Tensor) -> float:
    """||a||_2 accumulated in float64."""
    return float(torch.linalg.vector_norm(a, dtype=torch.float64))


def rayleigh(v: torch.Tensor, av: torch.Tensor) -> float:
    """v . Av / v . v in float64: exact for the stored v, whatever rounding its normalisation left."""
    return dot64(v, av) / norm64(v) ** 2


def power_iteration(matvec: MatVec, v0: torch.Tensor, max_iter: int = 100, tol: float = 1e-4,
                    track: Track = no_track) -> Dict:
    """Repeat v <- A v / ||A v|| from v0; the Rayleigh quotient v.Av estimates the eigenvalue of
    largest magnitude. Stops when it changes by less than tol * |estimate| between iterations.

    -> {"eigenvalue", "iterations", "converged", "history" (one estimate per iteration), "vector"}
    """
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    v = v0 / norm64(v0)
    history: List[float] = []
    for _ in track(range(max_iter), "power iteration"):
        w = matvec(v)
        history.append(rayleigh(v, w))
        norm = norm64(w)
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
    q = v0 / norm64(v0)
    basis = [q]
    alpha: List[float] = []
    beta: List[float] = []
    q_prev, b_prev = torch.zeros_like(q), 0.0
    for j in track(range(steps), "lanczos"):
        w = matvec(q)
        scale = norm64(w)
        a = rayleigh(q, w)
        alpha.append(a)
        w = w - a * q - b_prev * q_prev
        if reorthogonalize:
            for _ in range(2):
                for u in basis:
                    w = w - torch.dot(u, w) * u   # a residue only moves T by rounding
        b = norm64(w)
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
