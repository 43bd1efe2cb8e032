"""final.json files -> the paper's tables: our mean ± std over seeds beside the paper's number.

The headline is the last epoch (`final.json` top-level metrics). The paper's own selection, the
epoch with the best test top-1 and its groups at that epoch (`best_on_test` in final.json), goes
to the CSV in its own column, and into the cells beside the headline, labelled, only when asked
(`make_tables.py --best-on-test`).
Besides the cells, the report checks the orderings the paper claims (Focal-SAM above SAM, ImbSAM
and CC-SAM for each loss and imbalance factor) on our runs, beside the paper's own gaps.
"""
import csv
import dataclasses
import io
import json
import math
import os
from typing import Dict, List, Optional, Sequence

from core.errors import UserError
from core.files import read_run_report
from repro.runner import COMMAND, FAILED
from repro.spec import DASH, METRIC_LABELS, Row, Table, cost_folder, run_folder

METHODS = ("SAM", "ImbSAM", "CC-SAM", "Focal-SAM")   # the "+X" suffixes of the paper's row names


@dataclasses.dataclass
class Cell:
    values: List[float]               # one per finished seed (last epoch)
    expected: int                     # seeds asked for
    failed: int                       # seeds whose last attempt failed (FAILED, no final.json)
    paper: Optional[float]            # None: the paper prints "-"
    finished: int = 0                 # seeds with a final.json (values may be fewer: see `format_cell`)
    best_on_test: List[float] = dataclasses.field(default_factory=list)
    synthetic: bool = False           # built from smoke runs on synthetic data
    reference: bool = False           # a row the paper quotes from elsewhere: no run of ours

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
                final = read_run_report(folder)
            except UserError as e:  # a torn or hand-edited file: say which, go on with the others
                print(f"warning: skipping an unreadable report: {e}")
            failed = final is None and os.path.isfile(os.path.join(folder, FAILED))
            self.cache[key] = (final, failed)
        return self.cache[key]


def _fill(cell: Cell, finals: Finals, keys: Sequence[str], metric: str) -> None:
    for key in keys:
        final, failed = finals.get(key)
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


def collect(table: Table, finals: Finals, seeds: Sequence[int]) -> List[List[Cell]]:
    """One list of cells per row, in the order of `table.columns()`."""
    out = []
    for row in table.rows:
        cells = []
        for group in table.groups:
            for i, metric in enumerate(group.metrics):
                cell = Cell([], 0 if row.reference else len(seeds), 0, row.paper[group.name][i],
                            reference=row.reference)
                if not row.reference:
                    _fill(cell, finals, [run_folder(group, row, s) for s in seeds], metric)
                cells.append(cell)
        out.append(cells)
    return out


def paper_text(v: Optional[float]) -> str:
    return DASH if v is None else f"{v:.1f}"


def mean_std(values: Sequence[float]) -> str:
    """'m ± s' over seeds (sample std; the mean alone below two values)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return f"{m:.2f}"
    return f"{m:.2f} ± {math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)):.2f}"


def best_text(cell: Cell) -> str:
    """The paper's selection beside the headline: '· best-on-test m ± s (m - paper)'."""
    if not cell.best_on_test:
        return ""
    m = sum(cell.best_on_test) / len(cell.best_on_test)
    diff = "" if cell.paper is None else f" ({m - cell.paper:+.2f})"
    return f" · best-on-test {mean_std(cell.best_on_test)}{diff}"


def format_cell(cell: Cell, best: bool = False) -> str:
    """`best`: add the best-on-test figure (the paper's selection), labelled."""
    return _headline(cell) + (best_text(cell) if best and not cell.reference else "")


def _headline(cell: Cell) -> str:
    paper = paper_text(cell.paper)
    if cell.reference:
        return f"no run / {paper}"
    if not cell.values:
        # n/a: runs finished but the group is empty (e.g. no class above the head threshold)
        state = "n/a" if cell.finished else "failed" if cell.failed else "missing"
        return f"{state} / {paper}"
    text = mean_std(cell.values)
    if len(cell.values) < cell.expected:
        text += "*"
    if cell.diff is not None:
        return f"{text} / {paper} ({cell.diff:+.2f})"
    return f"{text} / {paper}"


def _group_cells(table: Table, cells: List[Cell]) -> List[Cell]:
    """The first cell of each group: it stands for the group's runs (its metrics share them)."""
    out, i = [], 0
    for group in table.groups:
        out.append(cells[i])
        i += len(group.metrics)
    return out


def seed_summary(table: Table, row: Row, cells: List[Cell]) -> str:
    """Finished seeds of the row: 'k/N' when every group has k, else per group."""
    if row.reference:
        return "quoted"
    firsts = _group_cells(table, cells)
    done = [c.finished for c in firsts]
    failed = sum(c.failed for c in firsts)
    asked = firsts[0].expected
    text = f"{done[0]}/{asked}" if len(set(done)) == 1 else \
        ", ".join(f"{g.name} {d}" for g, d in zip(table.groups, done)) + f" of {asked}"
    return text + (f"; {failed} failed" if failed else "")


def is_synthetic(rows: List[List[Cell]]) -> bool:
    return any(c.synthetic for cells in rows for c in cells)


SMOKE_LINE = "**SMOKE: built from runs on synthetic data; not comparable with the paper.**"
LEGEND = ("Each cell: ours, last epoch, mean ± sample std over seeds / the paper's number (ours − paper). "
          "`*`: fewer seeds finished than asked; missing: no finished run; n/a: the group has no class in "
          "these runs; failed: every asked seed failed (see FAILED and train.log in its run folder); "
          f"`{DASH}`: the paper prints no number; no run: a baseline the paper quotes (†), not run here. "
          "seeds: finished seeds of the row (per column group when they differ).")
BEST_LEGEND = ("best-on-test: the paper's selection (the official code keeps the epoch with the best test "
               "top-1): per seed, this column at the evaluated epoch with the best All, then mean ± std over "
               "seeds (minus the paper's number). It selects the model on the test set, so it sits above the "
               "last epoch by construction; the headline stays the last epoch.")


def markdown(table: Table, rows: List[List[Cell]], notes: Sequence[str] = (), best: bool = False,
             costs: Optional["Costs"] = None) -> str:
    """The table in the paper's layout, then its orderings and `notes`; `best`: each cell also
    shows the paper's best-on-test selection, labelled; `costs` (a table with a cost column): each
    method's step time over the baseline's, per group, and where each row's published numbers
    come from."""
    columns = [f"{g.name} {METRIC_LABELS[m]}" for g, m in table.columns()]
    columns += [f"{g.name} cost ×{costs.baseline}" for g in table.groups] if costs else []
    sources = any(r.source for r in table.rows)
    epochs = ["Epoch"] if table.has_epochs else []
    lines = [f"### {table.title}", ""] + ([SMOKE_LINE, ""] if is_synthetic(rows) or (costs and costs.smoke) else [])
    lines += ["| Method | " + " | ".join(epochs + columns) + " | seeds |" + (" published: source |" if sources else ""),
              "|---|" + "---|" * (len(epochs) + len(columns)) + "---|" + ("---|" if sources else "")]
    for row, cells in zip(table.rows, rows):
        epoch = [str(row.epochs or "")] if epochs else []
        cost = [costs.text(g, row) for g in table.groups] if costs else []
        lines.append(f"| {row.name} | " + " | ".join(epoch + [format_cell(c, best) for c in cells] + cost)
                     + f" | {seed_summary(table, row, cells)} |" + (f" {row.source or DASH} |" if sources else ""))
    lines += ["", LEGEND] + (["", BEST_LEGEND] if best else []) + (["", costs.legend()] if costs else [])
    order = orderings(table, rows)
    if order:
        lines += ["", *orderings_markdown(table, order)]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- orderings

@dataclasses.dataclass
class Ordering:
    """Focal-SAM minus another method, one loss, one metric, per column group."""
    loss: str
    other: str                        # the other row's method, with its epochs where they differ
    metric: str
    ours: List[Optional[float]]       # per group; None: a run missing, or the group lacks the metric
    paper: List[Optional[float]]
    present: List[bool]               # the group reports the metric
    se: List[Optional[float]]         # standard error of our gap; None below two seeds on a side


def _split(name: str):
    loss, _, method = name.rpartition("+")
    return (loss, method) if loss and method in METHODS else (None, None)


def _gap(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else a - b


def _se(a: Cell, b: Cell) -> Optional[float]:
    """Standard error of mean(a) - mean(b) over independent seeds."""
    if a.std is None or b.std is None:
        return None
    return math.sqrt(a.std ** 2 / len(a.values) + b.std ** 2 / len(b.values))


def orderings(table: Table, rows: List[List[Cell]]) -> List[Ordering]:
    """The paper's claims (sec. 5.2): Focal-SAM above SAM, ImbSAM and CC-SAM on All for every loss
    and IF, and, against ImbSAM, above on Head while keeping Tail, where the table has them."""
    named = {}
    for row, cells in zip(table.rows, rows):
        loss, method = _split(row.name)
        if loss and not row.reference:
            named[(loss, method)] = (row, dict(zip(table.columns(), cells)))
    out = []
    for (loss, method), (focal, fcells) in named.items():
        if method != "Focal-SAM":
            continue
        for other in METHODS[:3]:
            if (loss, other) not in named:
                continue
            orow, ocells = named[(loss, other)]
            label = other + (f" ({orow.epochs} epochs)" if orow.epochs != focal.epochs else "")
            for metric in ("top1", "head", "tail") if other == "ImbSAM" else ("top1",):
                cols = [(g, metric) for g in table.groups]
                present = [metric in g.metrics for g in table.groups]
                if not any(present):
                    continue
                ours = [_gap(fcells[c].mean, ocells[c].mean) if p else None for c, p in zip(cols, present)]
                paper = [_gap(fcells[c].paper, ocells[c].paper) if p else None for c, p in zip(cols, present)]
                se = [_se(fcells[c], ocells[c]) if p else None for c, p in zip(cols, present)]
                out.append(Ordering(loss, label, metric, ours, paper, present, se))
    return out


def _verdict(gap: Optional[float], se: Optional[float]) -> str:
    if gap is None:
        return "–"
    word = "holds" if gap > 0 else "fails" if gap < 0 else "tie"
    return f"{gap:+.2f} {word}" + (" (n.s.)" if se is not None and abs(gap) < 2 * se else "")


def orderings_markdown(table: Table, order: List[Ordering]) -> List[str]:
    lines = ["#### Orderings the paper claims: Focal-SAM minus the other method (ours / paper)", "",
             "| Loss | Focal-SAM vs | metric | " + " | ".join(g.name for g in table.groups) + " |",
             "|---|---|---|" + "---|" * len(table.groups)]
    for o in order:
        cells = []
        for ours, paper, present, se in zip(o.ours, o.paper, o.present, o.se):
            if not present:
                cells.append("·")
                continue
            cells.append(f"{_verdict(ours, se)} / {DASH if paper is None else f'{paper:+.1f}'}")
        lines.append(f"| {o.loss} | {o.other} | {METRIC_LABELS[o.metric]} | " + " | ".join(cells) + " |")
    ours = [g for o in order for g in o.ours if g is not None]
    paper = [g for o in order for g, p in zip(o.paper, o.present) if p and g is not None]
    asked = sum(sum(o.present) for o in order)
    lines += ["", f"Ours: Focal-SAM above in {sum(g > 0 for g in ours)} of the {len(ours)} comparisons with both "
                  f"runs finished ({asked - len(ours)} not yet comparable). The paper's own numbers: above in "
                  f"{sum(g > 0 for g in paper)} of {len(paper)}, equal in {sum(g == 0 for g in paper)}. "
                  "holds / fails / tie: the sign of our gap (means over seeds); (n.s.): the gap is below two "
                  "standard errors of the difference of the two means, so our seeds do not resolve it; "
                  "·: the column has no such metric."]
    return lines


# ----------------------------------------------------------------------------- CSV

def csv_text(table: Table, rows: List[List[Cell]], costs: Optional["Costs"] = None) -> str:
    """One line per cell; with `costs`, the row's step time over the baseline's in its group and
    the source of the published number."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = [f"cost_x_{costs.baseline}", "paper_source"] if costs else []
    w.writerow(["table", "row", "config", "epochs", "group", "metric", "seeds_asked", "seeds_done", "seeds_failed",
                "mean", "std", "paper", "diff", "values", "best_on_test_mean", "synthetic"] + extra)
    for row, cells in zip(table.rows, rows):
        for (group, metric), c in zip(table.columns(), cells):
            best = sum(c.best_on_test) / len(c.best_on_test) if c.best_on_test else None
            paper = DASH if c.paper is None else _num(c.paper)
            more = [_num(costs.ratio(group, row)), row.source] if costs else []
            w.writerow([table.id, row.name, row.config or "", row.epochs or "", group.name, metric, c.expected,
                        len(c.values), c.failed, _num(c.mean), _num(c.std), paper, _num(c.diff),
                        " ".join(f"{v:g}" for v in c.values), _num(best), int(c.synthetic)] + more)
    return buf.getvalue()


# ----------------------------------------------------------------------------- cost per step (SAM family)

class Costs:
    """Each method's seconds per step over the baseline's, per group, from the bench.json of its
    benchmark run (spec.plan_cost: the method timed beside the baseline, interleaved)."""

    def __init__(self, table: Table, out_root: str):
        self.table, self.baseline = table, table.cost_baseline
        self.found: Dict[tuple, Optional[dict]] = {}
        for g in table.groups:
            for row in table.rows:
                if not row.reference and (g.name, row.method) not in self.found:
                    self.found[g.name, row.method] = _read_bench(os.path.join(out_root, cost_folder(table, g, row.method)))
        self.smoke = any(b and b.get("smoke") for b in self.found.values())

    def ratio(self, group, row: Row) -> Optional[float]:
        bench = None if row.reference else self.found.get((group.name, row.method))
        rows = (bench or {}).get("rows") or {}
        if row.method not in rows or self.baseline not in rows:
            return None
        return rows[row.method]["seconds_per_step"] / rows[self.baseline]["seconds_per_step"]

    def text(self, group, row: Row) -> str:
        r = self.ratio(group, row)
        if r is not None:
            return f"{r:.2f}"
        bench = None if row.reference else self.found.get((group.name, row.method))
        return "failed" if bench and bench.get("failed") else "missing"

    def devices(self) -> List[str]:
        return sorted({f"{b['device']} (batch {b['batch']})" for b in self.found.values() if b and "device" in b})

    def legend(self) -> str:
        where = "; ".join(self.devices()) or "nothing timed yet"
        return (f"cost ×{self.baseline}: the method's mean seconds per training step over {self.baseline}'s, both "
                f"timed by scripts/bench_step.py in one run, interleaved step by step on the same batches and "
                f"device (training steps only; one timing per method and dataset, on its LA config: the loss "
                f"does not change the passes). Measured on: {where}. published: the source of the number after "
                f"each `/` (another protocol where the source says so); {DASH}: no published CIFAR-LT number.")


def _read_bench(folder: str) -> Optional[dict]:
    try:
        with open(os.path.join(folder, "bench.json")) as f:
            bench = json.load(f)
    except FileNotFoundError:
        return {"failed": True} if os.path.isfile(os.path.join(folder, FAILED)) else None
    except (OSError, json.JSONDecodeError) as e:
        print(f"warning: skipping unreadable {os.path.join(folder, 'bench.json')} ({e})")
        return None
    bench["smoke"] = _ran_on_synthetic(folder)
    return bench


def _num(v) -> str:
    return "" if v is None else f"{v:.4f}"


# ----------------------------------------------------------------------------- Table 1 (timing)

def collect_timing(table: Table, out_root: str) -> Dict[str, Optional[dict]]:
    """dataset -> bench.json of scripts/bench_step.py, or None (missing), or {'failed': True}."""
    return {d: _read_bench(os.path.join(out_root, "table1", d)) for d in table.raw["datasets"]}


def _ran_on_synthetic(folder: str) -> bool:
    """bench.json does not say which data it timed; the runner's command.json does (SMOKE=1 runs
    set data.name=synthetic)."""
    try:
        with open(os.path.join(folder, COMMAND)) as f:
            return "data.name=synthetic" in json.load(f)["argv"]
    except (OSError, ValueError, KeyError):
        return False


def ours_ratio(bench: Optional[dict], opt: str) -> Optional[float]:
    """Our seconds per step of `opt` over SAM's, from one benchmark (the same machine and batches)."""
    rows = (bench or {}).get("rows") or {}
    if opt not in rows or "sam" not in rows:
        return None
    return rows[opt]["seconds_per_step"] / rows["sam"]["seconds_per_step"]


def _ours_timing(bench: Optional[dict], opt: str) -> str:
    if bench is None or bench.get("failed"):
        return "failed" if bench else "missing"
    r = (bench.get("rows") or {}).get(opt)
    if r is None:
        return "missing"
    return f"{r['seconds_per_epoch']:.1f} s ({ours_ratio(bench, opt):.2f}x)"


def _paper_timing(table: Table, opt: str, j: int) -> str:
    if opt not in table.raw["paper"]:
        return "not in the paper"
    return f"{table.raw['paper'][opt][j]:.2f} s ({table.raw['paper_ratio'][opt][j]:.2f}x)"   # as printed


TIMING_NOTES = (
    "Ours: seconds per epoch = mean training step x steps per epoch (scripts/bench_step.py; no data "
    "loading, no evaluation) and the ratio to SAM's step in the same benchmark. Paper: its Table 1 as "
    "printed (RTX 3090 / 4090 GPUs, App. C.5), seconds and the ratio to SAM. The machines differ: "
    "compare the ratios, not the seconds.",
    "CC-SAM's cost differs by construction: the paper's CC-SAM follows CC-SAM's protocol, perturbing "
    "\"only the last few layers\" with a separate pass per class in the batch (2.05x to 15.47x SAM); "
    "ours perturbs the classifier only, in closed form on the features of one forward pass "
    "(optim/ccsam.py), about the cost of one SGD step. Its ratio is not comparable with the paper's.",
)


def timing_markdown(table: Table, found: Dict[str, Optional[dict]]) -> str:
    datasets, opts = table.raw["datasets"], table.raw["optimizers"]
    head = [f"{d} {who}" for d in datasets for who in ("ours", "paper")]
    lines = [f"### {table.title}", ""]
    if any(b and b.get("smoke") for b in found.values()):
        lines += [SMOKE_LINE, ""]
    lines += ["| Optimizer | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for opt in opts:
        cells = [c for j, d in enumerate(datasets) for c in (_ours_timing(found[d], opt), _paper_timing(table, opt, j))]
        lines.append(f"| {opt} | " + " | ".join(cells) + " |")
    measured = [f"{d}: {b['device']}, batch {b['batch']}" for d, b in found.items() if b and not b.get("failed")]
    lines += ["", TIMING_NOTES[0], "", TIMING_NOTES[1], "", "Measured on: " + ("; ".join(measured) if measured else "nothing yet") + "."]
    return "\n".join(lines) + "\n"


def timing_csv(table: Table, found: Dict[str, Optional[dict]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["table", "optimizer", "dataset", "seconds_per_step", "seconds_per_epoch", "x_sam",
                "paper_seconds_per_epoch", "paper_x_sam", "device"])
    for opt in table.raw["optimizers"]:
        for j, d in enumerate(table.raw["datasets"]):
            bench = found[d] or {}
            r = (bench.get("rows") or {}).get(opt)
            paper = table.raw["paper"].get(opt)
            ratio = table.raw["paper_ratio"].get(opt)
            w.writerow([table.id, opt, d, _num(r and r["seconds_per_step"]), _num(r and r["seconds_per_epoch"]),
                        _num(ours_ratio(bench, opt)), _num(paper and paper[j]), _num(ratio and ratio[j]),
                        bench.get("device", "")])
    return buf.getvalue()
