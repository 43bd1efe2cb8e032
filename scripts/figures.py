#!/usr/bin/env python
"""The Focal-SAM paper's analysis figures from checkpoints, one command per figure.

    python scripts/figures.py spectra --figure 2            # Figures 2, 9, 10, 11: Hessian densities, head | tail
    python scripts/figures.py landscapes --figure 7         # Figures 6, 7: loss landscapes, head | tail
    python scripts/figures.py focal-weights                 # Figure 3: densities of (1 - pi_k)^gamma
    python scripts/figures.py ablation --figure 4           # Figures 4, 5, 8: train the sweep, then plot it
    python scripts/figures.py spectra --figure 2 --run SGD=runs/a --run Focal-SAM=runs/b   # your own runs

spectra / landscapes read the runs of the figure's table (SAM, ImbSAM, CC-SAM, Focal-SAM at IF 100)
under --out-root as scripts/table*.sh leaves them, or the runs given with --run. Each run's
analysis is kept in OUT/<label>/ and reused while its settings are unchanged, so a figure can be
redrawn or completed without recomputing. Numbers go to JSON and CSV beside every PNG.
"""
import argparse
import dataclasses
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import _root  # noqa: F401  (the repository on the import path, without `pip install -e .`)
from analysis import commands, measure, paper, plots
from analysis.outputs import prepare_out, read_json, write_csv, write_json
from core.files import read_run_report
from core.args import ArgumentParser, at_least, finite_float
from core.errors import UserError
from engine.cli import user_errors

LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ----------------------------------------------------------------------------- which runs

def table_runs(fig: paper.RunFigure, out_root: str, seed: int):
    """[(label, run folder)] of the figure's table, IF 100 column, one seed."""
    from repro import spec
    table = spec.get_table(spec.load_tables(), fig.table)
    group = next(g for g in table.groups if g.name == paper.TABLE_COLUMN)
    rows = {r.config: r for r in table.rows if not r.reference}
    return [(label, os.path.join(out_root, spec.run_folder(group, rows[f"{fig.loss}_{opt}"], seed)))
            for label, opt in paper.METHODS]


def chosen_runs(args, fig: paper.RunFigure):
    """[(label, run folder)]: the --run list, or the figure's table runs (all must exist)."""
    if args.run:
        runs = []
        for item in args.run:
            label, sep, folder = item.partition("=")
            if not sep or not label or not folder:
                raise UserError(f"--run expects LABEL=RUN_FOLDER, got '{item}'")
            runs.append((label, folder))
        if len({l for l, _ in runs}) != len(runs):
            raise UserError("--run labels must differ")
        return runs
    runs = table_runs(fig, args.out_root, args.seed_run)
    missing = [f"{l} ({f})" for l, f in runs if not os.path.isfile(os.path.join(f, "last.pt"))]
    if missing:
        from repro import spec
        script = spec.get_table(spec.load_tables(), fig.table).script
        raise UserError(f"Figure {fig.number} needs checkpoints that are missing: {'; '.join(missing)}; train them "
                        f"with bash {script} (SEEDS={args.seed_run}), or pass the runs you have with --run LABEL=DIR")
    return runs


def safe_label(label: str) -> str:
    """A label usable as a folder name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def cached_or_new(kind: str, args, label: str, folder: str, out: str, report, writer) -> dict:
    """The run's analysis from OUT/<label>/<kind>.json when its run and settings match, else new."""
    sub = prepare_out(os.path.join(out, safe_label(label)))
    path = os.path.join(sub, f"{kind}.json")
    run_args = argparse.Namespace(**{**vars(args), "run": folder, "config": None})
    if os.path.isfile(path):
        old = read_json(path)
        want = commands.options(measure.HessianOptions if kind == "hessian" else measure.LandscapeOptions, run_args)
        same = (old.get("run", {}).get("checkpoint") == os.path.abspath(os.path.join(folder, "last.pt"))
                and {k: old["settings"].get(k) for k in dataclasses.asdict(want)} == dataclasses.asdict(want)
                and old["settings"].get("dtype") == args.dtype and old["settings"].get("class_weights") == args.class_weights
                and _groups_of(kind, old) == list(args.groups))
        if same:
            print(f"{label}: reusing {path}")
            return old
    print(f"{label}: {kind} of {folder}", flush=True)
    doc = report(run_args)
    writer(doc, sub, label)
    return doc


def _groups_of(kind: str, doc: dict):
    return [r["group"] for r in doc["groups"]] if kind == "hessian" else list(doc["line"])


# ----------------------------------------------------------------------------- Figures 2, 9-11

def spectra(args) -> None:
    """Figures 2, 9, 10, 11: one Hessian density panel per (group, method)."""
    fig = paper.SPECTRA[args.figure]
    runs = chosen_runs(args, fig)
    out = prepare_out(args.out or os.path.join("runs", "figures", f"fig{fig.number}"))
    docs = [(label, cached_or_new("hessian", args, label, folder, out, commands.hessian_report, commands.write_hessian))
            for label, folder in runs]
    cells, rows, n = [], [], 0
    for g, group in enumerate(args.groups):
        row = []
        for label, doc in docs:
            r = doc["groups"][g]
            title = f"({LETTERS[n % 26]}) {label}, {group}"
            row.append(lambda ax, r=r, t=title: plots.draw_density(ax, r, t))
            rows.append([label, group, r["lambda_max"], r["trace"], r["trace_stderr"], r["samples"], r["loss"],
                         doc["run"]["epochs_trained"]])
            n += 1
        cells.append(row)
    stem = os.path.join(out, f"fig{fig.number}_hessian")
    plots.panels(cells, f"{stem}.png", title=f"Figure {fig.number}: {fig.caption}")
    header = ["method", "group", "lambda_max", "trace", "trace_stderr", "samples", "loss", "epochs_trained"]
    write_csv(f"{stem}.csv", header, rows)
    write_json(f"{stem}.json", {"figure": fig.number, "caption": fig.caption, "rows": [dict(zip(header, r)) for r in rows],
                                "runs": dict(runs)})
    print_rows(header, rows)
    print(f"wrote {stem}.png, {stem}.csv, {stem}.json")


def print_rows(header, rows) -> None:
    """The figure's table on stdout."""
    print("  ".join(f"{h:>12}" for h in header[:5]))
    for r in rows:
        print("  ".join(f"{v:>12.4g}" if isinstance(v, float) else f"{str(v):>12}" for v in r[:5]))


# ----------------------------------------------------------------------------- Figures 6, 7

def landscapes(args) -> None:
    """Figures 6, 7: surface, contour and line views per (group, method)."""
    fig = paper.LANDSCAPES[args.figure]
    runs = chosen_runs(args, fig)
    out = prepare_out(args.out or os.path.join("runs", "figures", f"fig{fig.number}"))
    docs = [(label, cached_or_new("landscape", args, label, folder, out, commands.landscape_report,
                                  commands.write_landscape)) for label, folder in runs]
    stem = os.path.join(out, f"fig{fig.number}_landscape")
    title = f"Figure {fig.number}: {fig.caption}"
    for view, draw, projection in (("surface", plots.draw_surface, "3d"), ("contour", plots.draw_contour, None)):
        cells = [[lambda ax, d=doc, g=group, l=label: draw(ax, d["grid"], d["surface"][g], f"{l}, {g}", d["origin"][g])
                  for label, doc in docs] for group in args.groups]
        plots.panels(cells, f"{stem}_{view}.png", projection=projection, title=title)
    plots.panels([[lambda ax, d=doc, l=label: plots.draw_lines(ax, d["alphas"], d["line"], l) for label, doc in docs]],
                 f"{stem}_line.png", title=title)
    header = ["method", "group", "loss_at_w", "line_min", "line_max", "surface_max"]
    rows = [[label, g, doc["origin"][g], min(doc["line"][g]), max(doc["line"][g]), max(map(max, doc["surface"][g]))]
            for label, doc in docs for g in args.groups]
    write_csv(f"{stem}.csv", header, rows)
    write_json(f"{stem}.json", {"figure": fig.number, "caption": fig.caption, "rows": [dict(zip(header, r)) for r in rows],
                                "runs": dict(runs)})
    print(f"wrote {stem}_surface.png, {stem}_contour.png, {stem}_line.png, {stem}.csv, {stem}.json")


# ----------------------------------------------------------------------------- Figure 3

def dataset_counts(name: str):
    """A dataset's training class counts from its base config (no image is read)."""
    from data import class_counts_only
    from engine.config import load_config
    cfg = load_config(os.path.join(ROOT, "configs", "_base", f"{name}.yaml"))
    try:
        return class_counts_only(cfg.data)
    except UserError as e:
        raise UserError(f"{name}: {e} (or leave it out, e.g. --datasets cifar10_lt cifar100_lt)") from None


def focal_weights(args) -> None:
    """Figure 3: densities of (1 - pi_k)^gamma over the classes of each dataset."""
    from optim.class_weights import focal_sam_weights
    unknown = [d for d in args.datasets if d not in paper.FOCAL_DATASETS]
    if unknown:
        raise UserError(f"unknown dataset '{unknown[0]}'; choose from {', '.join(paper.FOCAL_DATASETS)}")
    all_counts = {name: dataset_counts(name) for name in args.datasets}
    out = prepare_out(args.out or os.path.join("runs", "figures", "fig3"))
    doc, cells, rows = {}, [], []
    for name, counts in all_counts.items():
        # lam = 1: the sharpness weight c_k is the focal weight (1 - pi_k)^gamma itself.
        values = {g: focal_sam_weights(counts, g, 1.0)[1].numpy() for g in args.gammas}
        doc[name] = {"class_counts": counts, "weights": {str(g): v.tolist() for g, v in values.items()}}
        rows += [[name, g, k, n, float(v[k])] for g, v in values.items() for k, n in enumerate(counts)]
        label = f"{paper.FOCAL_DATASETS[name]} ({len(counts)} classes; paper's $\\gamma$ = {paper.PAPER_GAMMA[name]:g})"
        cells.append(lambda ax, v=values, l=label: plots.weight_densities(ax, v, l))
    stem = os.path.join(out, "fig3_focal_weights")
    cols = min(2, len(cells))
    plots.panels([cells[i:i + cols] for i in range(0, len(cells), cols)], f"{stem}.png", size=(5.0, 3.6),
                 title="Figure 3: densities of the focal weights $(1-\\pi_k)^\\gamma$ over classes")
    write_json(f"{stem}.json", doc)
    write_csv(f"{stem}.csv", ["dataset", "gamma", "class", "train_count", "focal_weight"], rows)
    print(f"wrote {stem}.png, {stem}.json, {stem}.csv")


# ----------------------------------------------------------------------------- Figures 4, 5, 8

def ablation_plan(args):
    """-> ([(config, chosen value, [(value, [Run per seed])])], every Run)."""
    from engine.config import load_config
    from repro import runner, spec
    abl = paper.ABLATIONS[args.figure]
    configs = [c for c in abl.configs if not args.dataset or f"/{args.dataset}/" in f"/{c}"]
    if not configs:
        raise UserError(f"Figure {abl.number} has no config for dataset '{args.dataset}'; its configs: "
                        f"{', '.join(abl.configs)}")
    seeds = spec.parse_seeds(args.seeds)
    plan, runs = [], []
    for config in configs:
        cfg = load_config(os.path.join(ROOT, config))
        chosen = getattr(cfg.optim, abl.param)
        values = sorted(set(args.values or abl.values) | {chosen})
        base = list(args.set)
        if args.smoke:
            base += spec.epoch_overrides(cfg.train.epochs, cfg.loss.drw_epoch,
                                         [list(m) for m in cfg.optim.rho_milestones], spec.SMOKE_EPOCHS)
            base += list(spec.SMOKE_SETS)
        elif args.data_root:
            base.append(runner.data_root_set(config, args.data_root))
        stem = os.path.splitext(config)[0].replace("configs/", "", 1)
        cells = []
        for v in values:
            vruns = [spec.Run(key=os.path.join("ablation", stem, f"{abl.param}{v:g}", f"seed{s}"), config=config,
                              sets=tuple(base + [f"optim.{abl.param}={v!r}"]), seed=s, procs=1) for s in seeds]
            cells.append((v, vruns))
            runs += vruns
        plan.append((config, chosen, cells))
    return plan, runs


def ablation(args) -> None:
    """Figures 4, 5, 8: train the sweep's missing runs (table runner), then plot."""
    from repro import runner
    abl = paper.ABLATIONS[args.figure]
    out_root = os.path.abspath(args.out_root)
    plan, runs = ablation_plan(args)
    if args.dry_run:
        for run in runs:
            folder = os.path.join(out_root, run.key)
            print(f"{runner.run_state(folder):6} {run.config} {' '.join(run.sets[-1:])} seed {run.seed} -> {folder}")
        print(f"Figure {abl.number}: {len(runs)} runs under {out_root}")
        return
    if not args.plot_only:
        from run_table import detect_gpus
        devices = detect_gpus(args.gpus)
        per = args.runs_per_gpu or (1 if devices == ["cpu"] else 4)
        result = runner.execute(runs, out_root, runner.Slots(devices, per))
        print(f"Figure {abl.number}: {len(result['done'])} finished now, {len(result['skipped'])} done before, "
              f"{len(result['failed'])} failed")
    plot_ablation(args, abl, plan, out_root)


def plot_ablation(args, abl: paper.Ablation, plan, out_root: str) -> None:
    """Accuracy against the swept value per config, mean ± std over finished seeds."""
    out = prepare_out(args.out or os.path.join(out_root, "ablation", f"fig{abl.number}"))
    cells, rows, doc = [], [], []
    for config, chosen, values in plan:
        means, stds, synthetic = [], [], False
        for v, vruns in values:
            finals = [read_run_report(os.path.join(out_root, r.key)) for r in vruns]
            synthetic |= any(f is not None and f.get("run", {}).get("dataset") == "synthetic" for f in finals)
            top1 = [f["top1"] for f in finals if f is not None]
            m = sum(top1) / len(top1) if top1 else None
            s = math.sqrt(sum((x - m) ** 2 for x in top1) / (len(top1) - 1)) if len(top1) > 1 else None
            means.append(m)
            stds.append(s)
            rows.append([config, abl.param, v, v == chosen, len(top1), len(vruns), m, s] +
                        [mean_of(finals, k) for k in ("head", "medium", "tail")])
        doc.append({"config": config, "chosen": chosen, "values": [v for v, _ in values], "top1_mean": means,
                    "top1_std": stds})
        # Smoke runs train on the synthetic set: never let their panel pass for the dataset's.
        label = config.replace("configs/", "").replace(".yaml", "") + (" (synthetic smoke runs)" if synthetic else "")
        cells.append(lambda ax, xs=[v for v, _ in values], m=means, s=stds, c=chosen, l=label:
                     plots.ablation_axes(ax, xs, m, s, c, abl.param, l))
    stem = os.path.join(out, f"fig{abl.number}_{abl.param}")
    cols = min(3, len(cells))
    plots.panels([cells[i:i + cols] for i in range(0, len(cells), cols)], f"{stem}.png", size=(4.5, 3.5),
                 title=f"Figure {abl.number}: {abl.caption}\n(mean ± std over seeds; star: the paper's setting)")
    header = ["config", "param", "value", "paper_setting", "seeds_done", "seeds", "top1_mean", "top1_std",
              "head_mean", "medium_mean", "tail_mean"]
    write_csv(f"{stem}.csv", header, rows)
    write_json(f"{stem}.json", {"figure": abl.number, "param": abl.param, "panels": doc})
    done = sum(r[4] for r in rows)
    print(f"wrote {stem}.png, {stem}.csv, {stem}.json ({done} of {sum(r[5] for r in rows)} runs finished)")


def mean_of(finals, key: str):
    """Mean of a metric over the finished runs that report it, or None."""
    vals = [f[key] for f in finals if f is not None and f.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


# ----------------------------------------------------------------------------- command line

def run_figure_arguments(p, figures) -> None:
    """Options of the figures drawn from runs (spectra, landscapes)."""
    p.add_argument("--figure", required=True, choices=sorted(figures, key=int))
    p.add_argument("--run", action="append", default=[], metavar="LABEL=DIR",
                   help="a run folder and its panel label (repeatable); default: the table's SAM, ImbSAM, "
                        "CC-SAM and Focal-SAM runs under --out-root")
    p.add_argument("--out-root", default=os.path.join("runs", "tables"), help="where the table scripts put runs")
    p.add_argument("--seed-run", type=at_least(0), default=0, help="which seed's runs of the table (default 0)")
    commands.common_arguments(p, run_required=False)


def build_parser():
    """figures.py's parser: one subcommand per figure kind."""
    parser = ArgumentParser(prog="figures.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    p = sub.add_parser("spectra", help="Figures 2, 9, 10, 11")
    run_figure_arguments(p, paper.SPECTRA)
    commands.hessian_arguments(p)
    p = sub.add_parser("landscapes", help="Figures 6, 7")
    run_figure_arguments(p, paper.LANDSCAPES)
    commands.landscape_arguments(p)
    p = sub.add_parser("focal-weights", help="Figure 3")
    p.add_argument("--datasets", nargs="+", default=list(paper.FOCAL_DATASETS), metavar="DATASET")
    p.add_argument("--gammas", nargs="+", type=finite_float, default=list(paper.FOCAL_GAMMAS), metavar="GAMMA")
    p.add_argument("--out", help="output folder (default runs/figures/fig3)")
    p = sub.add_parser("ablation", help="Figures 4, 5, 8: train the sweep (table runner), then plot")
    p.add_argument("--figure", required=True, choices=sorted(paper.ABLATIONS, key=int))
    p.add_argument("--dataset", default="", help="only this dataset's panels, e.g. cifar10_lt")
    p.add_argument("--values", nargs="+", type=finite_float, help="the swept values (default: the figure's grid)")
    p.add_argument("--seeds", default="0 1 2")
    p.add_argument("--gpus", default="all", help="'all', 'cpu', or ids '0 1'")
    p.add_argument("--runs-per-gpu", type=int, default=0, help="runs sharing a GPU (default 4; 1 on the CPU)")
    p.add_argument("--out-root", default=os.path.join("runs", "tables"), help="run folders go to OUT_ROOT/ablation/")
    p.add_argument("--data-root", default="", help="folder holding the datasets (as the table scripts' DATA_ROOT)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    p.add_argument("--smoke", action="store_true", help="synthetic data, 2 tiny epochs per run (pipeline check)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state")
    p.add_argument("--plot-only", action="store_true", help="plot what has finished; train nothing")
    p.add_argument("--out", help="figure folder (default OUT_ROOT/ablation/figN)")
    return parser


COMMANDS = {"spectra": spectra, "landscapes": landscapes, "focal-weights": focal_weights, "ablation": ablation}


def main(argv=None) -> None:
    """Parse, run the subcommand; bad input -> one error line, exit 2."""
    args = build_parser().parse_args(argv)
    with user_errors():
        COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
