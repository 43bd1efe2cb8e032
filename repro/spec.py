"""The paper's tables as data: repro/tables.yaml -> Table / Group / Row, and the runs they need.

Pure functions only (no processes, no torch): scripts/run_table.py turns the runs into
processes, scripts/make_tables.py turns their final.json files back into the tables.
"""
import dataclasses
import math
import os
from typing import Dict, List, Optional, Tuple

import yaml

from core.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC_PATH = os.path.join(ROOT, "repro", "tables.yaml")
METRIC_LABELS = {"head": "Head", "medium": "Med", "tail": "Tail", "top1": "All"}

# The documented smoke override (SMOKE=1): every run on the built-in synthetic data, 2 epochs of
# 2 steps, so that a whole table fills in minutes on a CPU. The options that only the real
# datasets read are removed (~key), and epoch-indexed settings (DRW start, rho milestones) are
# scaled into the 2 epochs by `epoch_overrides`. Never mixed with real runs: its own OUT_ROOT,
# and make_tables.py marks tables built from synthetic runs.
SMOKE_EPOCHS = 2
SMOKE_SETS = (
    "data.name=synthetic", "~data.train_list", "~data.test_list", "~data.class_names",
    "~data.decode", "~data.check_files", "~data.download", "data.num_classes=10",
    "data.image_size=16", "data.max_per_class=100", "data.test_per_class=10", "data.num_workers=0",
    "data.head_threshold=50", "data.tail_threshold=20",
    "train.max_steps_per_epoch=2", "train.batch_size=32", "train.eval_batch_size=100",
)


@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    config_dir: str
    metrics: Tuple[str, ...]
    tag: str = ""
    sets: Tuple[Tuple[str, object], ...] = ()
    procs: int = 1


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    config: str
    paper: Dict[str, Tuple[Optional[float], ...]]
    tag: str = ""
    epochs_scale: float = 1.0


@dataclasses.dataclass(frozen=True)
class Table:
    id: str
    title: str
    script: str
    kind: str = "accuracy"            # accuracy | timing
    groups: Tuple[Group, ...] = ()
    rows: Tuple[Row, ...] = ()
    raw: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def columns(self) -> List[Tuple[Group, str]]:
        return [(g, m) for g in self.groups for m in g.metrics]


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a config, its overrides, a seed and the folder it writes."""
    key: str                          # folder relative to OUT_ROOT
    config: str                       # path relative to the repository
    sets: Tuple[str, ...]             # --set overrides, seed excluded
    seed: int
    procs: int
    kind: str = "train"               # train: train.py -> final.json; bench: bench_step.py -> bench.json

    @property
    def done_file(self) -> str:
        return "bench.json" if self.kind == "bench" else "final.json"


def _spec_error(where: str, msg: str) -> UserError:
    return UserError(f"{os.path.relpath(SPEC_PATH, ROOT)}: {where}: {msg}")


def load_tables(path: str = SPEC_PATH) -> Dict[str, Table]:
    with open(path) as f:
        doc = yaml.safe_load(f)
    tables = {}
    for tid, t in doc["tables"].items():
        tid = str(tid)
        if t.get("kind") == "timing":
            tables[tid] = Table(tid, t["title"], t["script"], "timing", raw=t)
            continue
        groups = []
        for g in t["groups"]:
            metrics = tuple(g["metrics"])
            bad = [m for m in metrics if m not in METRIC_LABELS]
            if bad:
                raise _spec_error(f"table {tid} group {g['name']}", f"unknown metric {bad[0]!r} "
                                  f"(allowed: {', '.join(METRIC_LABELS)})")
            groups.append(Group(name=g["name"], config_dir=g.get("config_dir", t.get("config_dir")),
                                metrics=metrics, tag=g.get("tag", ""),
                                sets=tuple(sorted((g.get("set") or {}).items())), procs=int(g.get("procs", 1))))
        rows = []
        for r in t["rows"]:
            paper = {}
            for g in groups:
                values = (r.get("paper") or {}).get(g.name)
                if values is None or len(values) != len(g.metrics):
                    raise _spec_error(f"table {tid} row {r['name']!r}", f"paper values for group {g.name!r} "
                                      f"must be a list of {len(g.metrics)} (null where not transcribed)")
                paper[g.name] = tuple(None if v is None else float(v) for v in values)
            rows.append(Row(name=r["name"], config=r["config"], paper=paper, tag=r.get("tag", ""),
                            epochs_scale=float(r.get("epochs_scale", 1.0))))
        tables[tid] = Table(tid, t["title"], t["script"], "accuracy", tuple(groups), tuple(rows), raw=t)
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


def config_path(group: Group, row: Row) -> str:
    return os.path.join(group.config_dir, f"{row.config}.yaml")


def run_folder(group: Group, row: Row, seed: int) -> str:
    name = row.config + (f"-{row.tag}" if row.tag else "")
    parts = [os.path.basename(group.config_dir), name] + ([group.tag] if group.tag else []) + [f"seed{seed}"]
    return os.path.join(*parts)


def epoch_overrides(epochs: int, drw_epoch: Optional[int], milestones, new_epochs: int) -> List[str]:
    """--set values that move a schedule of `epochs` epochs onto `new_epochs`, keeping its shape.

    DRW start and rho milestones scale with the length (SAM at 1.5x the epochs switches at 1.5x
    the epoch), rounded and kept inside 1..new_epochs-1 so a short run still passes each phase.
    """
    sets = [f"train.epochs={new_epochs}"]

    def move(e):
        return min(max(int(round(e * new_epochs / epochs)), 1), new_epochs - 1)

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


def plan_runs(table: Table, seeds, smoke: bool = False, procs: Optional[int] = None,
              read_schedule=None) -> List[Tuple[Row, Group, Run]]:
    """Every (row, group, seed) cell of `table` as a Run, in table order.

    `read_schedule(config_path) -> (epochs, drw_epoch, rho_milestones)` reads a config's schedule
    (engine.config by default); it is needed only for rows with epochs_scale and for smoke runs.
    """
    if read_schedule is None:
        read_schedule = _read_schedule
    cells = []
    for row in table.rows:
        for group in table.groups:
            cfg = config_path(group, row)
            sets = [f"{k}={_yaml_scalar(v)}" for k, v in group.sets]
            if row.epochs_scale != 1.0 or smoke:
                epochs, drw, milestones = read_schedule(cfg)
                target = int(math.ceil(epochs * row.epochs_scale))
                if smoke:  # keep the 1.5x rows longer than the others, in proportion
                    target = int(math.ceil(SMOKE_EPOCHS * row.epochs_scale))
                sets += epoch_overrides(epochs, drw, milestones, target)
            if smoke:
                sets += SMOKE_SETS
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


def _read_schedule(path: str):
    from engine.config import load_config
    cfg = load_config(os.path.join(ROOT, path))
    milestones = cfg.optim.rho_milestones if hasattr(cfg.optim, "rho_milestones") else ()   # plain SGD has none
    return cfg.train.epochs, cfg.loss.drw_epoch, [list(m) for m in milestones]
