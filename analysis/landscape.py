"""Loss along one or two directions: f(a) = L(w + a d) and f(a, b) = L(w + a d1 + b d2).

`loss_fn()` is evaluated at the shifted weights and may return one number or several (one per
class group, all on the same grid of weights); the weights are back to w afterwards, even when
the evaluation is interrupted.
"""
from typing import Callable, Sequence, Union

import numpy as np
import torch

from analysis.eigen import Track, no_track
from analysis.params import displaced

LossFn = Callable[[], Union[float, Sequence[float]]]


def _combine(ds: Sequence[Sequence[torch.Tensor]], coefs: Sequence[float]):
    return [sum(c * d[i] for c, d in zip(coefs, ds)) for i in range(len(ds[0]))]


def line(params: Sequence[torch.Tensor], direction: Sequence[torch.Tensor], alphas: Sequence[float],
         loss_fn: LossFn, track: Track = no_track) -> np.ndarray:
    """-> (len(alphas), G) losses at w + a d (G = number of values loss_fn returns)."""
    rows = []
    with displaced(params) as s:
        for a in track(list(alphas), "landscape 1-D"):
            s.shift(_combine([direction], [a]))
            rows.append(np.atleast_1d(np.asarray(loss_fn(), dtype=np.float64)))
    return np.stack(rows)


def surface(params: Sequence[torch.Tensor], d1: Sequence[torch.Tensor], d2: Sequence[torch.Tensor],
            alphas: Sequence[float], betas: Sequence[float], loss_fn: LossFn, track: Track = no_track) -> np.ndarray:
    """-> (len(betas), len(alphas), G): entry [j, i] is the loss at w + alphas[i] d1 + betas[j] d2
    (rows along the second direction, as matplotlib's contour expects)."""
    points = [(j, i, b, a) for j, b in enumerate(betas) for i, a in enumerate(alphas)]
    out = None
    with displaced(params) as s:
        for j, i, b, a in track(points, "landscape 2-D"):
            s.shift(_combine([d1, d2], [a, b]))
            value = np.atleast_1d(np.asarray(loss_fn(), dtype=np.float64))
            if out is None:
                out = np.zeros((len(betas), len(alphas), len(value)))
            out[j, i] = value
    return out
