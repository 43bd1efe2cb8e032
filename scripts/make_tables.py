#!/usr/bin/env python
"""Print the paper's tables with our numbers beside them, from the runs' final.json files.

    python scripts/make_tables.py                         # every table, runs under runs/tables
    python scripts/make_tables.py --table 5 --seeds "0 1 2"
    python scripts/make_tables.py --table 5 --per-class 5:IF100   # per-class plot of that group
    python scripts/make_tables.py --table 2 --best-on-test        # + the paper's selection, labelled

Writes, under --report (default OUT_ROOT/report): table<ID>.md, table<ID>.csv, table<ID>.png
(ours vs paper, one panel per column), table<ID>_per_class_<group>.png (per-class accuracy head
to tail, one line per method) and, for a table with a cost column (the SAM family),
table<ID>_cost.png (All against the cost per step over SGD). Cells are our last-epoch mean ± std over seeds beside the paper's
number and the difference (with --best-on-test also the paper's selection, the epoch with the
best test top-1, labelled `best-on-test`); below each table, the orderings the paper claims (Focal-SAM above SAM,
ImbSAM, CC-SAM) on our runs beside the paper's gaps, and the classes each ImbSAM row perturbs.
"""
import argparse
import os
import re
import sys


import _root  # noqa: F401  (the repository on the import path, without `pip install -e .`)
from core.args import ArgumentParser
from engine.cli import check_out_folder, user_errors
from core.errors import UserError
from repro import collect, imbsam, plots, spec


def per_class_choice(text: str, tables) -> tuple:
    tid, sep, group = text.partition(":")
    table = spec.get_table(tables, tid)
    names = [g.name for g in table.groups]
    if table.kind != "accuracy" or group not in names:
        raise UserError(f"--per-class {text}: give TABLE:GROUP with a group of table {tid}: {', '.join(names) or 'none'}")
    return table, table.groups[names.index(group)]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_").lower()


def main(argv=None):
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", action="append", help="table id (repeatable; default: every table)")
    ap.add_argument("--out-root", default=os.path.join(spec.ROOT, "runs", "tables"))
    ap.add_argument("--seeds", default="0 1 2", help="the seeds asked for (cells count finished ones)")
    ap.add_argument("--report", help="folder for .md/.csv/.png (default OUT_ROOT/report)")
    ap.add_argument("--per-class", action="append", default=[], metavar="TABLE:GROUP",
                    help="per-class plot for this group (default: the first group of each table)")
    ap.add_argument("--best-on-test", action="store_true",
                    help="also print, in each cell and labelled, the paper's selection: the epoch with the best "
                         "test top-1 (the official code's), beside the last-epoch headline")
    ap.add_argument("--rows", default="", help="only the rows whose name matches this regular expression")
    ap.add_argument("--spec", default=spec.SPEC_PATH, help=argparse.SUPPRESS)  # tests: a small tables file
    args = ap.parse_args(argv)

    with user_errors():
        tables = spec.load_tables(args.spec)
        chosen = [spec.select_rows(spec.get_table(tables, t), args.rows) for t in (args.table or list(tables))]
        seeds = spec.parse_seeds(args.seeds)
        if not os.path.isdir(args.out_root):
            raise UserError(f"no runs under {args.out_root}: run a scripts/table*.sh first, or give --out-root")
        report = check_out_folder(args.report or os.path.join(args.out_root, "report"), "--report")
        finals = collect.Finals(args.out_root)
        per_class = [per_class_choice(p, tables) for p in args.per_class] or \
            [(t, t.groups[0]) for t in chosen if t.kind == "accuracy"]

        for table in chosen:
            base = os.path.join(report, f"table{table.id}")
            if table.kind == "timing":
                found = collect.collect_timing(table, args.out_root)
                text, csv_text = collect.timing_markdown(table, found), collect.timing_csv(table, found)
                plots.timing_png(table, found, base + ".png")
            else:
                rows = collect.collect(table, finals, seeds)
                notes = imbsam.report_lines(table, seeds, args.out_root)
                costs = collect.Costs(table, args.out_root) if table.cost_baseline else None
                text = collect.markdown(table, rows, notes, best=args.best_on_test, costs=costs)
                csv_text = collect.csv_text(table, rows, costs)
                plots.table_png(table, rows, base + ".png")
                if costs:
                    plots.cost_png(table, rows, costs, base + "_cost.png")
            with open(base + ".md", "w") as f:
                f.write(text)
            with open(base + ".csv", "w") as f:
                f.write(csv_text)
            print(text)
        for table, group in per_class:
            path = os.path.join(report, f"table{table.id}_per_class_{slug(group.name)}.png")
            plots.per_class_png(table, group, finals, seeds, path)
        print(f"written: {report}/ (table*.md, table*.csv, table*.png, per-class plots)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
