"""Matplotlib pictures of the analyses (files only, Agg backend). Panel functions draw on one axes;
`panels` lays a grid of them out and saves it."""
from typing import Callable, Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no screen on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm  # noqa: E402
from matplotlib.ticker import LogLocator, NullLocator  # noqa: E402

from analysis.density import gaussian_density  # noqa: E402

GROUP_COLORS = {"head": "tab:blue", "medium": "tab:orange", "tail": "tab:red", "all": "tab:gray"}
DENSITY_FLOOR = 1e-7  # log-scale plots: densities below this are drawn at it


def fmt(x: Optional[float]) -> str:
    """Three significant digits, or n/a."""
    return "n/a" if x is None else f"{x:.3g}"


def hessian_title(result: Dict, label: str) -> str:
    """Panel title: the label, then lambda_max and Tr(H) ± standard error."""
    err = result.get("trace_stderr")
    trace = f"{fmt(result['trace'])}" + (f" ± {err:.2g}" if err is not None else "")
    return f"{label}\n$\\lambda_{{max}}$ = {fmt(result['lambda_max'])}, Tr(H) = {trace}"


def draw_density(ax, result: Dict, label: str) -> None:
    """The SLQ eigenvalue density of one group on a log axis, lambda_max marked."""
    d = result["density"]
    ax.semilogy(d["grid"], np.maximum(d["density"], DENSITY_FLOOR), color="tab:blue", lw=1.2)
    # Decades only: log-axis minor ticks over ~8 decades made each panel 3x slower to draw.
    ax.yaxis.set_major_locator(LogLocator(numticks=6))
    ax.yaxis.set_minor_locator(NullLocator())
    # The top eigenvalue's SLQ weight is ~1/d (d parameters), often below the plot's floor:
    # mark the power-iteration lambda_max so it is always visible.
    ax.axvline(result["lambda_max"], color="tab:red", ls=":", lw=1)
    ax.set_title(hessian_title(result, label), fontsize=9)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.grid(alpha=0.3)


def draw_contour(ax, grid: Sequence[float], z: Sequence[Sequence[float]], label: str, origin: float) -> None:
    """Filled contours of a 2-D landscape, w at the cross."""
    z = np.asarray(z)
    levels = contour_levels(z)
    # One colour step per band, so geometric levels are as legible as linear ones.
    norm = BoundaryNorm(levels, 256) if not isinstance(levels, int) else None
    cs = ax.contourf(grid, grid, z, levels=levels, cmap="viridis", norm=norm)
    ax.contour(grid, grid, z, levels=cs.levels, colors="k", linewidths=0.3)
    ax.plot([0], [0], "w+", ms=8)
    ax.figure.colorbar(cs, ax=ax, shrink=0.85)
    ax.set_title(f"{label}\nloss at w = {origin:.3g}", fontsize=9)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    ax.set_aspect("equal")


def contour_levels(z: np.ndarray, n: int = 16):
    """Geometric levels for a positive loss (a basin's floor keeps its detail next to walls ten
    or a hundred times higher), linear ones otherwise."""
    lo, hi = float(z.min()), float(z.max())
    if hi <= lo:
        return n
    if lo > 0:
        return np.geomspace(lo, hi, n)
    return np.linspace(lo, hi, n)


def draw_surface(ax, grid: Sequence[float], z: Sequence[Sequence[float]], label: str, origin: float) -> None:
    """A 2-D landscape as a 3-D surface."""
    z = np.asarray(z)
    xx, yy = np.meshgrid(grid, grid)
    ax.plot_surface(xx, yy, z, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_title(f"{label}\nloss at w = {origin:.3g}", fontsize=9)
    ax.set_xlabel("direction 1", fontsize=8)
    ax.set_ylabel("direction 2", fontsize=8)
    ax.set_zlabel("loss", fontsize=8)
    ax.view_init(elev=30, azim=-60)


def draw_lines(ax, alphas: Sequence[float], lines: Dict[str, Sequence[float]], label: str) -> None:
    """1-D landscapes of several groups on one axis."""
    for name, values in lines.items():
        ax.plot(alphas, values, label=name, color=GROUP_COLORS.get(name))
    ax.axvline(0, color="k", lw=0.5, ls=":")
    ax.set_title(label, fontsize=9)
    ax.set_xlabel("step along a filter-normalised direction")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def panels(cells: List[List[Optional[Callable]]], path: str, size=(4.2, 3.6), projection: Optional[str] = None,
           title: str = "") -> None:
    """cells[r][c](ax) draws one panel (None leaves it empty); saves the grid to `path`."""
    rows, cols = len(cells), max(len(r) for r in cells)
    fig = plt.figure(figsize=(size[0] * cols, size[1] * rows))
    for r, row in enumerate(cells):
        for c, draw in enumerate(row):
            if draw is None:
                continue
            draw(fig.add_subplot(rows, cols, r * cols + c + 1, projection=projection))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def sharpness_bars(result: Dict, group_of: Dict[int, str], names: Sequence[str], counts: Sequence[int],
                   path: str, title: str) -> None:
    """One bar per class, classes in index order (head to tail for the LT sets), coloured by group."""
    classes = result["classes"]
    values = result["sharpness"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(classes) + 2), 3.8))
    colors = [GROUP_COLORS.get(group_of.get(k, "all"), "tab:gray") for k in classes]
    ax.bar(range(len(classes)), values, color=colors)
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)))
        ax.set_xticklabels([f"{names[k]}\n{counts[k]}" for k in classes], fontsize=7, rotation=0)
    ax.set_xlabel("class (training images)" if len(classes) <= 30 else "class index (head to tail)")
    ax.set_ylabel("$L_k(w+\\epsilon) - L_k(w)$" if result["definition"] == "mean"
                  else "$\\pi_k\\,[L_k(w+\\epsilon) - L_k(w)]$")
    ax.axhline(0, color="k", lw=0.5)
    for g in ("head", "medium", "tail"):
        if g in group_of.values():
            ax.bar([0], [0], color=GROUP_COLORS[g], label=g)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def weight_densities(ax, values_by_gamma: Dict[float, np.ndarray], label: str) -> None:
    """Kernel density of the per-class values (1 - pi_k)^gamma, one curve per gamma, with a rug.
    The x range follows the values: with many classes every pi_k is small and the weights crowd
    near 1."""
    lo = min(float(np.min(v)) for v in values_by_gamma.values())
    width = max(1.0 - lo, 1e-3)
    grid = np.linspace(lo - 0.05 * width, 1.0 + 0.02 * width, 800)
    curves = []
    for gamma, values in values_by_gamma.items():
        values = np.asarray(values, dtype=np.float64)
        # Silverman's rule, floored so that near-equal values still give a visible bump.
        bw = max(1.06 * values.std() * len(values) ** (-0.2), 0.01 * width)
        dens = gaussian_density([values], [np.full(len(values), 1.0 / len(values))], grid, bw)
        curve, = ax.plot(grid, dens, label=f"$\\gamma$ = {gamma:g}")
        curves.append((values, curve.get_color(), dens.max()))
    top = max(c[2] for c in curves)
    for i, (values, color, _) in enumerate(curves):  # a rug per gamma below zero: where the classes are
        ax.plot(values, np.full(len(values), -top * (0.05 + 0.05 * i)), "|", color=color, ms=5)
    ax.set_ylim(bottom=-top * (0.08 + 0.05 * len(curves)))
    ax.set_yticks([t for t in ax.get_yticks() if 0 <= t <= top * 1.05])
    ax.set_title(label, fontsize=10)
    ax.set_xlabel("$(1-\\pi_k)^\\gamma$")
    ax.set_ylabel("density over classes")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def ablation_axes(ax, xs: Sequence[float], means: Sequence[Optional[float]], stds: Sequence[Optional[float]],
                  chosen: Optional[float], param: str, label: str) -> None:
    """Accuracy against the swept value, mean ± std over seeds; the paper's setting marked."""
    pts = [(x, m, s or 0.0) for x, m, s in zip(xs, means, stds) if m is not None]
    if pts:
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3)
    if chosen is not None:
        ax.axvline(chosen, color="tab:red", ls=":", lw=1)
        hit = [p for p in pts if abs(p[0] - chosen) < 1e-12]
        if hit:
            ax.plot([hit[0][0]], [hit[0][1]], "*", color="tab:red", ms=14, label=f"paper's {param} = {chosen:g}")
            ax.legend(fontsize=8)
    ax.set_title(label, fontsize=10)
    ax.set_xlabel(param)
    ax.set_ylabel("balanced top-1 (%)")
    ax.grid(alpha=0.3)
