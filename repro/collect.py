"""final.json files -> the paper's tables: our mean ± std over seeds beside the paper's number.

The headline is the last epoch (`final.json` top-level metrics). The best-on-test figure that
final.json also keeps (`best_on_test`) goes only to the CSV, in its own column, never into a cell.
"""
import csv
import dataclasses
import io
import json
import math
import os
from typing import Dict, List, Optional, Sequence

from repro.runner import FAILED
from repro.spec import METRIC_LABELS, Table, run_folder

MISSING_PAPER = "–"


@dataclasses.dataclass
class Cell:
    values: List[float]               # one per finished seed (last epoch)
    expected: int                     # seeds asked for
    failed: int                       # seeds whose last attempt failed (FAILED, no final.json)
    paper: Optional[float]
    finished: int = 0                 # seeds with a final.json (values may be fewer: see `format_cell`)
    best_on_test: List[float] = dataclasses.field(default_factory=list)
    synthetic: bool = False           # built from smoke runs on synthetic data

    @property
    def mean(self) -> Optional[float]:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> Optional[float]:
        """Sample standard deviation over seeds (n - 1); None below two seeds."""
        n = len(self.values)
        if n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (n - 1))

    @property
    def diff(self) -> Optional[float]:
        return None if self.mean is None or self.paper is None else self.mean - self.paper


class Finals:
    """Reads each run folder once: final.json, or whether the run failed."""

    def __init__(self, out_root: str):
        self.out_root = out_root
        self.cache: Dict[str, tuple] = {}

    def get(self, key: str):
        """-> (final dict or None, failed?)"""
        if key not in self.cache:
            folder = os.path.join(self.out_root, key)
            final = None
            try:
                with open(os.path.join(folder, "final.json")) as f:
                    final = json.load(f)
            except FileNotFoundError:
                pass
            except (OSError, json.JSONDecodeError) as e:  # a torn or hand-edited file: say which
                print(f"warning: skipping unreadable {os.path.join(folder, 'final.json')} ({e})")
            failed = final is None and os.path.isfile(os.path.join(folder, FAILED))
            self.cache[key] = (final, failed)
        return self.cache[key]


def collect(table: Table, finals: Finals, seeds: Sequence[int]) -> List[List[Cell]]:
    """One list of cells per row, in the order of `table.columns()`."""
    out = []
    for row in table.rows:
        cells = []
        for group in table.groups:
            for i, metric in enumerate(group.metrics):
                cell = Cell([], len(seeds), 0, row.paper[group.name][i])
                for seed in seeds:
                    final, failed = finals.get(run_folder(group, row, seed))
                    if final is None:
                        cell.failed += failed
                        continue
                    cell.finished += 1
                    if final.get(metric) is not None:  # a group with no class (e.g. no head) is None
                        cell.values.append(float(final[metric]))
                    best = (final.get("best_on_test") or {}).get(metric)
                    if best is not None:
                        cell.best_on_test.append(float(best))
                    cell.synthetic |= (final.get("run") or {}).get("dataset") == "synthetic"
                cells.append(cell)
        out.append(cells)
    return out


def format_cell(cell: Cell) -> str:
    paper = MISSING_PAPER if cell.paper is None else f"{cell.paper:.1f}"
    if not cell.values:
        # n/a: runs finished but the group is empty (e.g. no class above the head threshold)
        state = "n/a" if cell.finished else "failed" if cell.failed else "missing"
        return f"{state} / {paper}"
    text = f"{cell.mean:.2f}" + (f" ± {cell.std:.2f}" if cell.std is not None else "")
    if len(cell.values) < cell.expected:
        text += "*"
    if cell.diff is not None:
        return f"{text} / {paper} ({cell.diff:+.2f})"
    return f"{text} / {paper}"


def markdown(table: Table, rows: List[List[Cell]]) -> str:
    columns = [f"{g.name} {METRIC_LABELS[m]}" if len(table.groups) > 1 or len(g.metrics) > 1 else g.name
               for g, m in table.columns()]
    synthetic = any(c.synthetic for cells in rows for c in cells)
    title = f"### {table.title}"
    if synthetic:
        title += "\n\n**SMOKE: built from runs on synthetic data; not comparable with the paper.**"
    lines = [title, "", "| Method | " + " | ".join(columns) + " | seeds |",
             "|---|" + "---|" * len(columns) + "---|"]
    for row, cells in zip(table.rows, rows):
        seeds = _seed_summary(table, cells)
        lines.append(f"| {row.name} | " + " | ".join(format_cell(c) for c in cells) + f" | {seeds} |")
    lines += ["", "Each cell: ours, last epoch, mean ± sample std over seeds / the paper's number (ours − paper). "
                  "`*`: fewer seeds finished than asked; missing: no finished run; n/a: the group has no class "
                  "in these runs; failed: every asked seed "
                  f"failed (see FAILED and train.log in its run folder); {MISSING_PAPER}: the paper's number "
                  "is not transcribed in repro/tables.yaml."]
    return "\n".join(lines) + "\n"


def _seed_summary(table: Table, cells: List[Cell]) -> str:
    """Runs finished / asked over the row's groups (a group's metrics share its runs)."""
    done = asked = failed = 0
    i = 0
    for group in table.groups:
        cell = cells[i]  # the first metric of the group stands for its runs
        done, asked, failed = done + cell.finished, asked + cell.expected, failed + cell.failed
        i += len(group.metrics)
    return f"{done}/{asked}" + (f", {failed} failed" if failed else "")


def csv_text(table: Table, rows: List[List[Cell]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "row", "config", "group", "metric", "seeds_asked", "seeds_done", "seeds_failed",
                "mean", "std", "paper", "diff", "values", "best_on_test_mean", "synthetic"])
    for row, cells in zip(table.rows, rows):
        for (group, metric), c in zip(table.columns(), cells):
            best = sum(c.best_on_test) / len(c.best_on_test) if c.best_on_test else None
            w.writerow([table.id, row.name, row.config, group.name, metric, c.expected, len(c.values), c.failed,
                        _num(c.mean), _num(c.std), _num(c.paper), _num(c.diff),
                        " ".join(f"{v:g}" for v in c.values), _num(best), int(c.synthetic)])
    return buf.getvalue()


def _num(v) -> str:
    return "" if v is None else f"{v:.4f}"


# ----------------------------------------------------------------------------- Table 1 (timing)

def collect_timing(table: Table, out_root: str) -> Dict[str, Optional[dict]]:
    """dataset -> bench.json of scripts/bench_step.py, or None (missing), or {'failed': True}."""
    found = {}
    for d in table.raw["datasets"]:
        folder = os.path.join(out_root, "table1", d)
        try:
            with open(os.path.join(folder, "bench.json")) as f:
                found[d] = json.load(f)
        except FileNotFoundError:
            found[d] = {"failed": True} if os.path.isfile(os.path.join(folder, FAILED)) else None
    return found


def timing_markdown(table: Table, found: Dict[str, Optional[dict]]) -> str:
    datasets, opts = table.raw["datasets"], table.raw["optimizers"]
    lines = [f"### {table.title}", "", "| Optimizer | " + " | ".join(datasets) + " |",
             "|---|" + "---|" * len(datasets)]
    for opt in opts:
        cells = []
        for j, d in enumerate(datasets):
            paper = table.raw["paper"][opt][j]
            paper = MISSING_PAPER if paper is None else f"{paper:g}"
            bench = found[d]
            if bench is None or bench.get("failed") or opt not in bench.get("rows", {}):
                cells.append(f"{'failed' if bench and bench.get('failed') else 'missing'} / {paper}")
                continue
            r = bench["rows"][opt]
            sam = bench["rows"].get("sam", {}).get("seconds_per_step")
            ratio = f" ({r['seconds_per_step'] / sam:.2f}x SAM)" if sam else ""
            cells.append(f"{r['seconds_per_epoch']:.1f}{ratio} / {paper}")
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    measured = [f"{d}: {b['device']}, batch {b['batch']}" for d, b in found.items() if b and not b.get("failed")]
    lines += ["", "Each cell: ours, seconds per epoch (median step time x steps per epoch, scripts/bench_step.py; "
                  "no data loading or evaluation) and the ratio to SAM / the paper's seconds per epoch "
                  f"({MISSING_PAPER}: not transcribed). The paper reports Focal-SAM at "
                  f"{table.raw['paper_ratio_focal_sam_over_sam']}x SAM.",
              "Measured on: " + ("; ".join(measured) if measured else "nothing yet") + "."]
    return "\n".join(lines) + "\n"


def timing_csv(table: Table, found: Dict[str, Optional[dict]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "optimizer", "dataset", "seconds_per_step", "seconds_per_epoch", "x_sam", "paper", "device"])
    for opt in table.raw["optimizers"]:
        for j, d in enumerate(table.raw["datasets"]):
            bench = found[d] or {}
            r = bench.get("rows", {}).get(opt)
            sam = bench.get("rows", {}).get("sam", {}).get("seconds_per_step")
            w.writerow([table.id, opt, d, _num(r and r["seconds_per_step"]), _num(r and r["seconds_per_epoch"]),
                        _num(r and sam and r["seconds_per_step"] / sam), _num(table.raw["paper"][opt][j]),
                        bench.get("device", "")])
    return buf.getvalue()
