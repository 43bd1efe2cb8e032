"""Hutchinson's trace estimator (Hutchinson 1990) with Rademacher probes.

    Tr(A) ~ (1/s) sum_j z_j^T A z_j,    z_j in {-1, +1}^d uniformly

Each term is unbiased; its variance is 2 sum_{i != k} A_ik^2 (zero for a diagonal A), so the
standard error of the mean, std(terms) / sqrt(s), shrinks as 1 / sqrt(s).
"""
import math
from typing import Dict

import torch

from analysis.eigen import MatVec, Track, no_track
from analysis.params import rademacher


def hutchinson(matvec: MatVec, dim: int, samples: int, generator: torch.Generator, dtype=torch.float32,
               device="cpu", track: Track = no_track) -> Dict:
    """-> {"trace", "stderr" (None for one sample), "samples", "values" (z^T A z per probe)}."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    values = []
    for _ in track(range(samples), "hutchinson"):
        z = rademacher(dim, generator, dtype, device)
        values.append(float(torch.dot(z.double(), matvec(z).double())))
    mean = sum(values) / samples
    stderr = None
    if samples > 1:
        var = sum((x - mean) ** 2 for x in values) / (samples - 1)
        stderr = math.sqrt(var / samples)
    return {"trace": mean, "stderr": stderr, "samples": samples, "values": values}
