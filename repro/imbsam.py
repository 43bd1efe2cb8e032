"""Which classes each ImbSAM run perturbs: its tail set, n_k <= optim.eta (repro/tables.yaml has
the per-IF eta and its sources). make_tables.py prints it under every table with ImbSAM rows."""
import dataclasses
import os
from typing import List, Optional, Sequence

from core.errors import UserError
from data import class_counts_only
from engine.config import load_config
from optim.class_weights import imbsam_weights
from core.files import read_run_report
from repro.spec import ROOT, Group, Row, Table, config_path, read_config_info, run_folder


@dataclasses.dataclass(frozen=True)
class TailSet:
    eta: float
    classes: Optional[tuple]          # class ids ImbSAM perturbs; None: the counts are not at hand
    counts: Optional[tuple]           # training images per class


def tail_set(cfg, counts: Optional[Sequence[int]] = None) -> TailSet:
    """The tail set of a loaded config; `counts` from a finished run, else from the dataset."""
    if counts is None:
        try:
            counts = class_counts_only(cfg.data)
        except UserError:              # ImageNet-LT / iNaturalist without their train list
            return TailSet(cfg.optim.eta, None, None)
    _, c = imbsam_weights(counts, cfg.optim.eta)
    return TailSet(cfg.optim.eta, tuple(k for k, v in enumerate(c.tolist()) if v > 0), tuple(counts))


def _ranges(ids: Sequence[int]) -> str:
    parts, start = [], None
    for i, k in enumerate(ids):
        if start is None:
            start = k
        if i + 1 == len(ids) or ids[i + 1] != k + 1:
            parts.append(f"{start}" if start == k else f"{start}-{k}")
            start = None
    return ", ".join(parts)


def describe(t: TailSet) -> str:
    """'eta 1000: classes 4-9 (6 of 10)'; the class ids only where they run head to tail."""
    eta = f"eta {t.eta:g}"
    if t.classes is None:
        return f"{eta}: every class with at most {t.eta:g} training images (counts need the train list)"
    n, total = len(t.classes), len(t.counts)
    ordered = all(a >= b for a, b in zip(t.counts, t.counts[1:]))
    where = f"classes {_ranges(t.classes)} " if ordered and t.classes else ""
    return f"{eta}: {where}({n} of {total})"


def run_tail_set(table_row: Row, group: Group, seeds: Sequence[int], out_root: str) -> TailSet:
    """From the first seed's run folder when it has started (its saved config and, once finished,
    its class counts: right for smoke runs too), else from the table's planned settings."""
    for seed in seeds:
        folder = os.path.join(out_root, run_folder(group, table_row, seed))
        if os.path.isfile(os.path.join(folder, "config.yaml")):
            counts = (read_run_report(folder) or {}).get("class_counts")
            return tail_set(load_config(os.path.join(folder, "config.yaml")), counts)
    cfg = config_path(group, table_row)
    return tail_set(load_config(os.path.join(ROOT, cfg), group.sets_for("imbsam")))


def report_lines(table: Table, seeds: Sequence[int], out_root: str) -> List[str]:
    """One line per distinct tail description, naming the ImbSAM rows it covers."""
    by_text = {}
    for row in table.rows:
        if row.reference or read_config_info(config_path(table.groups[0], row)).optimizer != "imbsam":
            continue
        text = "; ".join(f"{g.name} {describe(run_tail_set(row, g, seeds, out_root))}" for g in table.groups)
        by_text.setdefault(text, []).append(row.name)
    if not by_text:
        return []
    lines = ["ImbSAM perturbs its tail classes, n_k <= optim.eta (classes numbered head to tail; the rule "
             "and its sources: repro/tables.yaml):"]
    return lines + [f"- {', '.join(names)}: {text}" for text, names in by_text.items()]
