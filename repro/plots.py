"""PNG figures of the tables: ours vs the paper per cell, per-class accuracy, Table 1's cost ratios,
accuracy against cost per step (the SAM-family table).

Legends sit outside the axes, so no legend covers a mark; figures built from smoke runs (synthetic
data) say so in red in their title.
"""
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no screen on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from repro.collect import Cell, Costs, Finals, is_synthetic, ours_ratio  # noqa: E402
from repro.spec import METRIC_LABELS, Group, Table, run_folder  # noqa: E402

SMOKE_TITLE = "SMOKE: synthetic data, not comparable with the paper"
OURS, PAPER = "tab:blue", "black"
TEN = plt.get_cmap("tab10").colors


def _title(fig, title: str, smoke: bool) -> None:
    """The table's title; on smoke runs a second line, and the whole title red."""
    if smoke:
        fig.suptitle(f"{title}\n{SMOKE_TITLE}", fontsize=9, color="red", weight="bold")
    else:
        fig.suptitle(title, fontsize=9)


def _legend_below(fig, handles) -> None:
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)


def _panel(ax, cells: List[Cell], ys: List[int], title: str) -> None:
    """One column of the table: our mean (dot) ± std (line), the paper's number (black mark).
    Dots, not bars: the axis starts near the values, where a bar's length would mean nothing."""
    ours = [(c, y) for c, y in zip(cells, ys) if c.mean is not None]
    ax.errorbar([c.mean for c, _ in ours], [y for _, y in ours], xerr=[c.std or 0.0 for c, _ in ours],
                fmt="o", ms=4, color=OURS, ecolor=OURS, elinewidth=1.2, capsize=2, zorder=4)
    marks = [(c.paper, y) for c, y in zip(cells, ys) if c.paper is not None]
    ax.scatter([p for p, _ in marks], [y for _, y in marks], marker="|", s=160, linewidths=2, color=PAPER, zorder=3)
    known = [v for c in cells for v in (c.mean, c.paper) if v is not None]
    if known:
        ax.set_xlim(max(-3.0, min(known) - 6), min(103.0, max(known) + 4))   # a dot at 0 or 100 stays whole
    ax.set_title(title, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(alpha=0.3)


def table_png(table: Table, rows: List[List[Cell]], path: str) -> None:
    """One panel per column of the table (Head / Med / Tail / All where it has them)."""
    columns = table.columns()
    names = [r.name + (f" ({r.epochs} ep)" if r.epochs else "") + (" [paper only]" if r.reference else "")
             for r in table.rows]
    ys = list(range(len(names)))
    width = max(2.1 * len(columns) + 2.2, 6.0)
    fig, axes = plt.subplots(1, len(columns), figsize=(width, 0.3 * len(names) + 1.6), sharey=True, squeeze=False)
    for j, (ax, (g, metric)) in enumerate(zip(axes[0], columns)):
        _panel(ax, [cells[j] for cells in rows], ys, f"{g.name} {METRIC_LABELS[metric]}")
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(names, fontsize=7)
    axes[0][0].set_ylim(len(names) - 0.5, -0.5)
    _legend_below(fig, [Line2D([], [], color=OURS, marker="o", ms=4,
                               label="ours: last epoch, mean ± std over seeds (accuracy %, of the column's classes)"),
                        Line2D([], [], color=PAPER, marker="|", ls="none", markersize=10, mew=2, label="paper")])
    smoke = is_synthetic(rows)
    _title(fig, table.title, smoke)
    fig.tight_layout(rect=(0, 0.09, 1, 0.92 if smoke else 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timing_png(table: Table, found: Dict[str, dict], path: str) -> None:
    """Table 1 as cost ratios to SAM (comparable across machines): ours as bars, the paper's marks."""
    datasets, opts = table.raw["datasets"], table.raw["optimizers"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.0 * len(datasets) + 0.8, 3.4), squeeze=False)
    for j, (ax, d) in enumerate(zip(axes[0], datasets)):
        ours = [ours_ratio(found.get(d), o) for o in opts]
        ax.bar(range(len(opts)), [r or 0.0 for r in ours], color=OURS)
        marks = [(i, table.raw["paper_ratio"][o][j]) for i, o in enumerate(opts) if o in table.raw["paper_ratio"]]
        ax.scatter([i for i, _ in marks], [r for _, r in marks], marker="_", s=300, linewidths=2, color=PAPER, zorder=3)
        ax.set_yscale("log")   # CC-SAM's 15x next to Focal-SAM's 1.3x
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v in (0.5, 2, 5) else ""))
        if not any(ours):
            ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center", fontsize=8)
        ax.set_xticks(range(len(opts)))
        ax.set_xticklabels(opts, rotation=45, fontsize=7)
        device = (found.get(d) or {}).get("device", "not measured")
        ax.set_title(f"{d} (ours: {device})", fontsize=8)
        ax.set_ylabel("time per epoch / SAM's", fontsize=7)
        ax.grid(axis="y", alpha=0.3, which="both")
    _legend_below(fig, [Patch(color=OURS, label="ours (scripts/bench_step.py)"),
                        Line2D([], [], color=PAPER, marker="_", ls="none", markersize=12, mew=2,
                               label="paper Table 1 (GPU); CC-SAM differs by construction")])
    _title(fig, table.title, any(b and b.get("smoke") for b in found.values()))
    fig.tight_layout(rect=(0, 0.08, 1, 0.9))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_class_png(table: Table, group: Group, finals: Finals, seeds: Sequence[int], path: str) -> int:
    """Per-class accuracy of each row (mean over finished seeds), classes ordered head to tail by
    their training count. -> the number of rows drawn."""
    fig, ax = plt.subplots(figsize=(9.5, 3.8))
    drawn, smoke = 0, False
    for row in table.rows:
        if row.reference:
            continue
        finals_of_row = [f for f, _ in (finals.get(run_folder(group, row, s)) for s in seeds) if f]
        if not finals_of_row:
            continue
        smoke |= any((f.get("run") or {}).get("dataset") == "synthetic" for f in finals_of_row)
        counts = finals_of_row[0]["class_counts"]
        order = sorted(range(len(counts)), key=lambda k: (-counts[k], k))  # stable: ties by class id
        acc = [sum(f["per_class_acc"][k] for f in finals_of_row) / len(finals_of_row) for k in order]
        n = len(finals_of_row)
        label = row.name + (f" ({row.epochs} ep)" if row.epochs else "") + f", {n} seed{'s' if n > 1 else ''}"
        ax.plot(range(len(order)), acc, lw=1.0 if len(order) <= 100 else 0.5, label=label,
                color=TEN[drawn % 10], ls="-" if drawn < 10 else "--")   # Table 5: 20 rows, 10 colours x 2
        drawn += 1
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("class, head (most training images) to tail")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"{table.title.split(':')[0]}, {group.name}: per-class accuracy (mean over seeds)"
                 + (f"\n{SMOKE_TITLE}" if smoke else ""), fontsize=9, color="red" if smoke else "black")
    if drawn:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.text(0.5, 0.5, "no finished run", transform=ax.transAxes, ha="center")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _loss_and_method(name: str):
    """'LA+Focal-SAM+ASAM' -> ('LA', 'Focal-SAM+ASAM'); 'CE' -> ('CE', 'SGD')."""
    loss, _, method = name.partition("+")
    return loss, method or "SGD"


def cost_png(table: Table, rows: List[List[Cell]], costs: Costs, path: str) -> int:
    """All (balanced top-1) against the cost per step over the baseline, one panel per group: one
    colour per method, one marker per loss; our mean ± std over seeds filled, the published number
    hollow at the same cost. -> the number of points of ours drawn."""
    columns = table.columns()
    losses = list(dict.fromkeys(_loss_and_method(r.name)[0] for r in table.rows))
    methods = list(dict.fromkeys(_loss_and_method(r.name)[1] for r in table.rows))
    # 14 distinct colours, no pastel pairs; no grey: grey draws the loss and ours/published keys
    palette = tuple(c for i, c in enumerate(TEN) if i != 7) + ("black", "#8c6d31", "#7b4173", "#637939", "#843c39")
    colours = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    markers = dict(zip(losses, "os^Dv"))
    fig, axes = plt.subplots(1, len(table.groups), figsize=(4.6 * len(table.groups) + 2.0, 4.2), squeeze=False)
    drawn = 0
    for ax, g in zip(axes[0], table.groups):
        j = columns.index((g, "top1"))
        untimed = 0
        for row, cells in zip(table.rows, rows):
            x, cell = costs.ratio(g, row), cells[j]
            loss, method = _loss_and_method(row.name)
            if x is None:
                untimed += cell.mean is not None
                continue
            style = dict(marker=markers[loss], color=colours[method], ms=6)
            if cell.mean is not None:
                ax.errorbar([x], [cell.mean], yerr=[cell.std or 0.0], ls="none", elinewidth=1, capsize=2, **style)
                drawn += 1
            if cell.paper is not None:
                ax.plot([x], [cell.paper], ls="none", mfc="none", mew=1.2, **style)
        ax.set_xlabel(f"cost per step / {costs.baseline}'s (scripts/bench_step.py)", fontsize=8)
        ax.set_ylabel("All: balanced top-1 % (last epoch)", fontsize=8)
        ax.set_title(g.name + (f" ({untimed} finished rows not timed yet)" if untimed else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[m], marker="o", ls="none", label=m) for m in methods]
    handles += [Line2D([], [], color="gray", marker=markers[l], ls="none", label=f"{l} loss") for l in losses]
    handles += [Line2D([], [], color="gray", marker="o", ls="none", label="ours: mean ± std over seeds"),
                Line2D([], [], color="gray", marker="o", mfc="none", ls="none", label="published (source: the table)")]
    right = 1 - 1.9 / fig.get_figwidth()                      # 1.9 inches for the legend
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=7, frameon=False)
    smoke = is_synthetic(rows) or costs.smoke
    _title(fig, f"{table.title.split(':')[0]}: accuracy against cost per step ({'; '.join(costs.devices()) or 'not timed'})",
           smoke)
    fig.tight_layout(rect=(0, 0, right, 1))          # tight_layout keeps the suptitle clear itself
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn
