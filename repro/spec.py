"""The paper's tables as data: repro/tables.yaml -> Table / Group / Row, and the runs they need.

Pure functions (no processes): scripts/run_table.py turns the runs into processes,
scripts/make_tables.py turns their final.json files back into the tables. Only reading a config's
facts (`read_config_info`) loads the engine's config loader, and with it torch; a plan given its
own `read_config` needs neither.
"""
import dataclasses
import functools
import math
import os
import re
from typing import Dict, List, Optional, Tuple

import yaml

from core.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_PATH = os.path.join(ROOT, "repro", "tables.yaml")
METRIC_LABELS = {"head": "Head", "medium": "Med", "tail": "Tail", "top1": "All"}
DASH = "-"                            # the paper prints "-": it has no number for that cell

# The documented smoke override (SMOKE=1): every run on the built-in synthetic data, 2 epochs of
# 2 steps, so that a whole table fills in minutes on a CPU. The options that only the real
# datasets read are removed (~key), and epoch-indexed settings (DRW start, rho milestones) are
# scaled into the short run by `epoch_overrides`. Never mixed with real runs: its own OUT_ROOT,
# and make_tables.py marks tables built from synthetic runs.
SMOKE_EPOCHS = 2
PAPER_EPOCHS = 200                    # the paper's ResNet schedule; a 300-epoch row smokes 3 epochs
SMOKE_SETS = (
    "data.name=synthetic", "~data.train_list", "~data.test_list", "~data.class_names",
    "~data.decode", "~data.check_files", "~data.download", "data.num_classes=10",
    "data.image_size=16", "data.max_per_class=200", "data.test_per_class=10", "data.num_workers=0",
    "data.head_threshold=50", "data.tail_threshold=20",
    "train.max_steps_per_epoch=2", "train.batch_size=32", "train.eval_batch_size=100",
)
# Per optimizer, after the table's own optim_set: on the synthetic counts (200 images down to
# 200 / IF: every class keeps an image up to IF 200) ImbSAM's and SSE-SAM's tail is the smoke's
# non-Head classes, as on the real data; SSE-SAM switches stage after the first of the 2 epochs.
SMOKE_OPTIM_SETS = {"imbsam": ("optim.eta=50",), "sse_sam": ("optim.eta=50", "optim.gamma=0.5")}


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    config_dir: str
    metrics: Tuple[str, ...]
    tag: str = ""
    sets: Tuple[Tuple[str, object], ...] = ()
    optim_sets: Tuple[Tuple[str, Tuple[Tuple[str, object], ...]], ...] = ()   # optimizer -> its settings
    procs: int = 1

    def sets_for(self, optimizer: str) -> List[str]:
        """--set values of a run of `optimizer` in this group."""
        extra = dict(self.optim_sets).get(optimizer, ())
        return [f"{k}={_yaml_scalar(v)}" for k, v in (*self.sets, *extra)]


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    config: Optional[str]             # None: reference-only (a baseline the paper quotes; no run)
    paper: Dict[str, Tuple[Optional[float], ...]]   # None: the paper prints "-"
    epochs: Optional[int] = None      # the paper's Epoch column (Tables 8-10), = the config's epochs
    source: str = ""                  # where `paper` comes from, when a table gathers several papers

    @property
    def reference(self) -> bool:
        return self.config is None

    @property
    def method(self) -> str:
        """The optimizer part of a `<loss>_<method>` config name (la_focal_sam_asam -> focal_sam_asam):
        what a table with a `cost` times, once per method whatever the loss."""
        return self.config.split("_", 1)[1]


@dataclasses.dataclass(frozen=True)
class Table:
    id: str
    title: str
    script: str
    kind: str = "accuracy"            # accuracy | timing
    groups: Tuple[Group, ...] = ()
    rows: Tuple[Row, ...] = ()
    raw: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    cost_baseline: Optional[str] = None   # accuracy tables with a cost column: each method's step over this one's

    def columns(self) -> List[Tuple[Group, str]]:
        return [(g, m) for g in self.groups for m in g.metrics]

    @property
    def has_epochs(self) -> bool:
        return any(r.epochs is not None for r in self.rows)


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a config, its overrides, a seed and the folder it writes."""
    key: str                          # folder relative to OUT_ROOT
    config: str                       # path relative to the repository
    sets: Tuple[str, ...]             # --set overrides, seed excluded
    seed: int
    procs: int
    kind: str = "train"               # train: train.py -> final.json; bench: bench_step.py -> bench.json
    optimizers: Tuple[str, ...] = ()  # bench: the la_<name>.yaml of `config` (a folder) it times, the
                                      # first the baseline; empty: bench_step's own (Table 1)

    @property
    def done_file(self) -> str:
        return "bench.json" if self.kind == "bench" else "final.json"


@dataclasses.dataclass(frozen=True)
class ConfigInfo:
    """What planning needs from a row's config file."""
    optimizer: str
    epochs: int
    drw_epoch: Optional[int]
    rho_milestones: Tuple[Tuple[int, float], ...]


def _spec_error(path: str, where: str, msg: str) -> UserError:
    return UserError(f"{os.path.relpath(path, ROOT)}: {where}: {msg}")


def _paper_value(v, err):
    if v == DASH:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise err(f"paper value {v!r} is neither a number nor '{DASH}' (every cell holds what the paper prints)")
    return float(v)


def _group(g: dict, t: dict, err) -> Group:
    metrics = tuple(g["metrics"])
    bad = [m for m in metrics if m not in METRIC_LABELS]
    if bad:
        raise err(f"group {g['name']}", f"unknown metric {bad[0]!r} (allowed: {', '.join(METRIC_LABELS)})")
    optim_sets = tuple(sorted((o, tuple(sorted(s.items()))) for o, s in (g.get("optim_set") or {}).items()))
    return Group(name=g["name"], config_dir=g.get("config_dir", t.get("config_dir")), metrics=metrics,
                 tag=g.get("tag", ""), sets=tuple(sorted((g.get("set") or {}).items())),
                 optim_sets=optim_sets, procs=int(g.get("procs", 1)))


def _row(r: dict, groups: Tuple[Group, ...], err) -> Row:
    where = f"row {r['name']!r}"
    paper = {}
    for g in groups:
        values = (r.get("paper") or {}).get(g.name)
        if not isinstance(values, list) or len(values) != len(g.metrics):
            raise err(where, f"paper values for group {g.name!r} must be a list of {len(g.metrics)} "
                             f"(numbers as printed, '{DASH}' where the paper prints '{DASH}')")
        paper[g.name] = tuple(_paper_value(v, lambda m: err(where, m)) for v in values)
    return Row(name=r["name"], config=r.get("config"), paper=paper, epochs=r.get("epochs"), source=r.get("source", ""))


def _timing(tid: str, t: dict, err) -> Table:
    n = len(t["datasets"])
    for key in ("paper", "paper_ratio"):
        for opt, values in t[key].items():
            if opt not in t["optimizers"] or len(values) != n:
                raise err(f"table {tid} {key}.{opt}", f"must be an optimizer of the table with {n} values")
    return Table(tid, t["title"], t["script"], "timing", raw=t)


def load_tables(path: str = SPEC_PATH) -> Dict[str, Table]:
    """Every table of the spec file, keyed by its id ("1", "2", ...)."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    err = functools.partial(_spec_error, path)
    tables = {}
    for tid, t in doc["tables"].items():
        tid = str(tid)
        if t.get("kind") == "timing":
            tables[tid] = _timing(tid, t, err)
            continue
        groups = tuple(_group(g, t, lambda w, m: err(f"table {tid} {w}", m)) for g in t["groups"])
        rows = tuple(_row(r, groups, lambda w, m: err(f"table {tid} {w}", m)) for r in t["rows"])
        tables[tid] = Table(tid, t["title"], t["script"], "accuracy", groups, rows, raw=t,
                            cost_baseline=(t.get("cost") or {}).get("baseline"))
    return tables


def parse_seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in str(text).replace(",", " ").split()]
    except ValueError:
        raise UserError(f"SEEDS must be integers separated by spaces, got {text!r}") from None
    if not seeds:
        raise UserError("SEEDS is empty; give at least one seed, e.g. SEEDS=0")
    return seeds


def get_table(tables: Dict[str, Table], tid: str) -> Table:
    if tid not in tables:
        raise UserError(f"unknown table {tid!r}; tables: {', '.join(tables)}")
    return tables[tid]


def select_rows(table: Table, rows: Optional[str]) -> Table:
    """The table with only the rows whose name `rows` (a regular expression) matches; all without."""
    if not rows:
        return table
    kept = tuple(r for r in table.rows if re.search(rows, r.name))
    if not kept:
        raise UserError(f"--rows {rows!r} matches no row of table {table.id}")
    return dataclasses.replace(table, rows=kept)


def config_path(group: Group, row: Row) -> str:
    return os.path.join(group.config_dir, f"{row.config}.yaml")


def run_folder(group: Group, row: Row, seed: int) -> str:
    parts = [os.path.basename(group.config_dir), row.config] + ([group.tag] if group.tag else []) + [f"seed{seed}"]
    return os.path.join(*parts)


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def epoch_overrides(epochs: int, drw_epoch: Optional[int], milestones, new_epochs: int) -> List[str]:
    """--set values that move a schedule of `epochs` epochs onto `new_epochs`, keeping its shape.

    DRW start and rho milestones (0-based epochs) scale with the length, rounded half up and kept
    inside 1..new_epochs-1 so that a short run still passes each phase.
    """
    sets = [f"train.epochs={new_epochs}"]

    def move(e):
        return min(max(_half_up(e * new_epochs / epochs), 1), new_epochs - 1)

    if drw_epoch is not None:
        sets.append(f"loss.drw_epoch={move(drw_epoch)}")
    if milestones:
        moved, last = [], 0
        for e, rho in milestones:
            e = move(e)
            if e > last:  # two milestones squeezed onto one epoch: the later radius wins
                moved.append([e, rho])
                last = e
            else:
                moved[-1][1] = rho
        sets.append("optim.rho_milestones=" + repr(moved).replace(" ", ""))
    return sets


def smoke_epochs(epochs: int) -> int:
    """Smoke length of a config of `epochs` epochs: SMOKE_EPOCHS for the paper's 200, in
    proportion above (the 300-epoch rows stay longer than the 200-epoch ones)."""
    return max(SMOKE_EPOCHS, int(math.ceil(SMOKE_EPOCHS * epochs / PAPER_EPOCHS)))


def plan_runs(table: Table, seeds, smoke: bool = False, procs: Optional[int] = None,
              read_config=None, rows: Optional[str] = None) -> List[Tuple[Row, Group, Run]]:
    """Every (row, group, seed) cell of `table` that has a run, in table order.

    `read_config(config_path) -> ConfigInfo` reads a config (engine.config by default). `rows`,
    a regular expression, keeps the rows whose name it matches (re.search).
    """
    read_config = read_config or read_config_info
    cells = []
    for row in table.rows:
        if row.reference or (rows and not re.search(rows, row.name)):
            continue
        for group in table.groups:
            cfg = config_path(group, row)
            info = read_config(cfg)
            if row.epochs is not None and row.epochs != info.epochs:
                raise UserError(f"table {table.id} row {row.name!r}: the paper's {row.epochs} epochs, "
                                f"but {cfg} trains {info.epochs}")
            sets = group.sets_for(info.optimizer)
            if smoke:
                sets += epoch_overrides(info.epochs, info.drw_epoch, info.rho_milestones, smoke_epochs(info.epochs))
                sets += [*SMOKE_SETS, *SMOKE_OPTIM_SETS.get(info.optimizer, ())]
            for seed in seeds:
                run = Run(key=run_folder(group, row, seed), config=cfg, sets=tuple(sets), seed=int(seed),
                          procs=int(procs or group.procs))
                cells.append((row, group, run))
    return cells


def plan_timing(table: Table, smoke: bool = False) -> List[Run]:
    """Table 1: one benchmark run per dataset (scripts/bench_step.py times every optimizer)."""
    sets = SMOKE_SETS if smoke else ()
    return [Run(key=os.path.join("table1", d), config=os.path.join("configs", d), sets=tuple(sets), seed=0,
                procs=1, kind="bench") for d in table.raw["datasets"]]


def cost_folder(table: Table, group: Group, method: str) -> str:
    """Where the benchmark of `method` in `group` writes bench.json, relative to OUT_ROOT."""
    return os.path.join(table.id, os.path.basename(group.config_dir), method)


def plan_cost(table: Table, smoke: bool = False, rows: Optional[str] = None) -> List[Run]:
    """A table with a cost column: per group, one scripts/bench_step.py run per method of its
    (chosen) rows, timing the method's la_<method>.yaml beside the baseline's, interleaved step
    by step, on the same device and batches. One run per method: each resumes on its own."""
    if not table.cost_baseline:
        return []
    methods = [r.method for r in table.rows if not r.reference and (not rows or re.search(rows, r.name))]
    base = table.cost_baseline
    return [Run(key=cost_folder(table, g, m), config=g.config_dir, seed=0, procs=1, kind="bench",
                sets=tuple(g.sets_for("")) + (SMOKE_SETS if smoke else ()),
                optimizers=tuple(dict.fromkeys([base, m])))
            for g in table.groups for m in dict.fromkeys(methods)]


def unique_runs(cells) -> List[Run]:
    """The runs of `cells` once each (tables and rows may share a run folder)."""
    seen, runs = set(), []
    for _, _, run in cells:
        if run.key not in seen:
            seen.add(run.key)
            runs.append(run)
    return runs


def _yaml_scalar(v) -> str:
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


@functools.lru_cache(maxsize=None)
def read_config_info(path: str) -> ConfigInfo:
    from engine.config import load_config
    cfg = load_config(os.path.join(ROOT, path))
    milestones = cfg.optim.rho_milestones       # () for plain SGD, which has no radius
    return ConfigInfo(cfg.optim.name, cfg.train.epochs, cfg.loss.drw_epoch,
                      tuple((int(e), float(r)) for e, r in milestones))
