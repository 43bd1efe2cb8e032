#!/usr/bin/env python
"""Paper Tables 4 and 7: evaluate Table 3F's ImageNet-LT runs out of distribution, then print the
tables beside the paper's numbers (repro/tables_foundation.yaml, `ood_tables`).

    python scripts/ood_tables.py --sketch DIR --v2 DIR --imagenet-c DIR     # evaluate, then print
    python scripts/ood_tables.py --no-eval                                  # print from existing ood.json

Each finished run (final.json) gets RUN/ood.json from `eval.py --ood` once; an existing ood.json
is kept, so a second call only fills the gaps. Cells: our mean ± sample std over seeds / the
paper's number (ours - paper); written to OUT_ROOT/report/table4.md and table7.md.
"""
import json
import os
import subprocess
import sys
from typing import List, Optional

import numpy as np
import yaml


import _root  # noqa: F401  (the repository on the import path, without `pip install -e .`)
from core.errors import UserError
from core.args import ArgumentParser
from engine.cli import check_out_folder, user_errors
from repro import spec

SPEC = os.path.join(spec.ROOT, "repro", "tables_foundation.yaml")
SET_ARGS = {"imagenet_sketch": "sketch", "imagenet_v2": "v2", "imagenet_c": "imagenet_c"}


def run_folders(doc: dict, tables, table_id: str, config: str, seeds) -> List[str]:
    """The folders of one row's runs: those of the training table and group named by `runs_of`."""
    of = doc["ood_tables"][table_id]["runs_of"]
    group = next(g for g in tables[of["table"]].groups if g.name == of["group"])
    row = spec.Row(name=config, config=config, paper={})
    return [spec.run_folder(group, row, s) for s in seeds]


def evaluate(folder: str, sets: dict, python: str) -> Optional[str]:
    """eval.py --ood for one finished run; returns a failure line or None."""
    args = [python, os.path.join(spec.ROOT, "eval.py"), "--checkpoint", os.path.join(folder, "last.pt"),
            "--out", os.path.join(folder, "ood.json")]
    for name, root in sets.items():
        args += ["--ood", f"{name}={root}"]
    proc = subprocess.run(args, capture_output=True, text=True)
    return None if proc.returncode == 0 else f"{folder}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"


def metric(report: dict, table_id: str, set_name: str, key: str) -> Optional[float]:
    if table_id == "4":
        return report.get(set_name, {}).get(key)
    c = report.get("imagenet_c", {})
    return c.get("mce") if key == "mce" else c.get("ce", {}).get(key)


def cell(values: List[float], paper: Optional[float], runs: int) -> str:
    """'missing': no ood.json yet; 'n/a': the runs have no value (e.g. no class in that group)."""
    if not values:
        return ("n/a" if runs else "missing") + ("" if paper is None else f" / {paper:.1f}")
    mean = float(np.mean(values))
    ours = f"{mean:.2f}" + (f" ± {np.std(values, ddof=1):.2f}" if len(values) > 1 else "")
    return ours if paper is None else f"{ours} / {paper:.1f} ({mean - paper:+.2f})"


def table_markdown(doc: dict, tables, table_id: str, out_root: str, seeds) -> str:
    t = doc["ood_tables"][table_id]
    columns = [(s, m) for s in t["sets"] for m in t["metrics"]] if table_id == "4" else [("", m) for m in t["metrics"]]
    head = ["Method"] + [f"{s} {m}".strip() for s, m in columns] + ["seeds"]
    lines = [f"### {t['title']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in t["rows"]:
        reports = []
        for folder in run_folders(doc, tables, table_id, row["config"], seeds):
            path = os.path.join(out_root, folder, "ood.json")
            if os.path.isfile(path):
                with open(path) as f:
                    reports.append(json.load(f))
        paper = [v for s in t["sets"] for v in row["paper"][s]] if table_id == "4" else row["paper"]
        cells = []
        for (s, m), p in zip(columns, paper):
            values = [v for v in (metric(r, table_id, s, m) for r in reports) if v is not None]
            cells.append(cell(values, p, len(reports)))
        lines.append("| " + " | ".join([row["name"]] + cells + [f"{len(reports)}/{len(seeds)}"]) + " |")
    lines += ["", "Cells: ours, mean ± sample std over seeds / the paper's number (ours − paper); "
              "Table 7 is lower-is-better."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-root", default=os.path.join(spec.ROOT, "runs", "tables"))
    ap.add_argument("--seeds", default="0 1 2")
    ap.add_argument("--sketch", default="", help="ImageNet-Sketch folder (class folders by WordNet id)")
    ap.add_argument("--v2", default="", help="ImageNetV2 folder (class folders 0..999)")
    ap.add_argument("--imagenet-c", default="", help="ImageNet-C folder (<corruption>/<severity>/<wnid>/)")
    ap.add_argument("--no-eval", action="store_true", help="only print, from the ood.json files present")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    with user_errors():
        with open(SPEC) as f:
            doc = yaml.safe_load(f)
        tables = spec.load_tables(SPEC)
        seeds = spec.parse_seeds(args.seeds)
        report = check_out_folder(os.path.join(args.out_root, "report"), "--out-root")   # before any evaluation
        sets = {name: getattr(args, arg) for name, arg in SET_ARGS.items() if getattr(args, arg)}
        failed = []
        if not args.no_eval:
            if not sets:
                raise UserError("give the OOD folders (--sketch, --v2, --imagenet-c), or --no-eval to print only")
            for row in doc["ood_tables"]["4"]["rows"]:
                for folder in run_folders(doc, tables, "4", row["config"], seeds):
                    full = os.path.join(args.out_root, folder)
                    done = os.path.isfile(os.path.join(full, "final.json"))
                    if done and not os.path.isfile(os.path.join(full, "ood.json")):
                        print(f"[eval] {full}", flush=True)
                        failed += [f for f in [evaluate(full, sets, args.python)] if f]
        for tid in ("4", "7"):
            text = table_markdown(doc, tables, tid, args.out_root, seeds)
            with open(os.path.join(report, f"table{tid}.md"), "w") as f:
                f.write(text + "\n")
            print(text + "\n")
        for line in failed:
            print(f"failed: {line}")
        return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
