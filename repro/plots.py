"""PNG figures of the tables: ours vs the paper per row, and per-class accuracy head to tail."""
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no screen on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402

from repro.collect import Cell, Finals  # noqa: E402
from repro.spec import Group, Table, run_folder  # noqa: E402


def table_png(table: Table, rows: List[List[Cell]], path: str) -> None:
    """One panel per column group, on its overall accuracy (All): our mean ± std as a bar, the
    paper's number as a black mark."""
    panels = []
    for g in table.groups:
        metric = "top1" if "top1" in g.metrics else g.metrics[-1]
        index = [i for i, (gg, m) in enumerate(table.columns()) if gg is g and m == metric][0]
        panels.append((g, metric, index))
    height = 0.35 * len(table.rows) + 1.2
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.5, height), sharey=True, squeeze=False)
    names = [r.name for r in table.rows]
    ys = list(range(len(names)))
    for ax, (g, metric, index) in zip(axes[0], panels):
        cells = [cells_of_row[index] for cells_of_row in rows]
        means = [c.mean if c.mean is not None else 0.0 for c in cells]
        errs = [c.std or 0.0 for c in cells]
        ax.barh(ys, means, xerr=errs, color=["tab:blue" if c.values else "none" for c in cells],
                edgecolor="tab:blue", label="ours (last epoch)")
        px = [(c.paper, y) for c, y in zip(cells, ys) if c.paper is not None]
        if px:
            ax.scatter([p for p, _ in px], [y for _, y in px], marker="|", s=200, color="black", zorder=3,
                       label="paper")
        known = [v for c in cells for v in ([c.mean] if c.mean is not None else []) + ([c.paper] if c.paper else [])]
        if known:
            ax.set_xlim(max(0.0, min(known) - 10), min(100.0, max(known) + 5))
        ax.set_title(f"{g.name} ({'All' if metric == 'top1' else metric})", fontsize=9)
        ax.set_xlabel("balanced top-1 %")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(names, fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][0].legend(fontsize=7, loc="lower right")  # the first panel has the paper marks when any has
    fig.suptitle(table.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timing_png(table: Table, found: Dict[str, dict], path: str) -> None:
    datasets = [d for d in table.raw["datasets"] if found.get(d) and found[d].get("rows")]
    opts = table.raw["optimizers"]
    fig, axes = plt.subplots(1, max(len(datasets), 1), figsize=(3.2 * max(len(datasets), 1) + 1, 3), squeeze=False)
    for ax, d in zip(axes[0], datasets):
        rows = found[d]["rows"]
        ax.bar(range(len(opts)), [rows.get(o, {}).get("seconds_per_epoch", 0.0) for o in opts], color="tab:blue")
        ax.set_xticks(range(len(opts)))
        ax.set_xticklabels(opts, rotation=45, fontsize=7)
        ax.set_title(f"{d} ({found[d]['device']})", fontsize=8)
        ax.set_ylabel("s / epoch")
    if not datasets:
        axes[0][0].text(0.5, 0.5, "no benchmark yet", ha="center", va="center")
    fig.suptitle(table.title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_png(table: Table, group: Group, finals: Finals, seeds: Sequence[int], path: str) -> int:
    """Per-class accuracy of each row (mean over finished seeds), classes ordered head to tail by
    their training count. -> the number of rows drawn."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    drawn = 0
    for row in table.rows:
        finals_of_row = [f for f, _ in (finals.get(run_folder(group, row, s)) for s in seeds) if f]
        if not finals_of_row:
            continue
        counts = finals_of_row[0]["class_counts"]
        order = sorted(range(len(counts)), key=lambda k: (-counts[k], k))  # stable: ties by class id
        acc = [sum(f["per_class_acc"][k] for f in finals_of_row) / len(finals_of_row) for k in order]
        ax.plot(range(len(order)), acc, lw=1.0 if len(order) <= 100 else 0.5, label=f"{row.name} ({len(finals_of_row)})")
        drawn += 1
    ax.set_xlabel("class, head (most training images) to tail")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"{table.title.split(':')[0]}, {group.name}: per-class accuracy (mean over seeds)", fontsize=9)
    if drawn:
        ax.legend(fontsize=6, ncol=2)
    else:
        ax.text(0.5, 0.5, "no finished run", transform=ax.transAxes, ha="center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn
