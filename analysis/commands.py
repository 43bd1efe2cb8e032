"""The `analyze.py` subcommands: argument parsing, loading the run, running an analysis from
measure.py, writing JSON / CSV / PNG. scripts/figures.py calls the same `*_report` functions."""
import argparse
import dataclasses
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from analysis import measure, plots
from analysis.directions import ONE_D
from analysis.groups import resolve_group
from analysis.outputs import prepare_out, write_csv, write_json
from analysis.run import CLASS_WEIGHTS, load_run, run_paths
from analysis.sharpness import DEFINITIONS, DIRECTIONS
from core.args import ArgumentParser, finite_float, seed
from core.errors import UserError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def common_arguments(p: argparse.ArgumentParser, run_required: bool = True) -> None:
    """Options every analysis shares (the run, output, device, seed, BN mode, precision)."""
    if run_required:
        p.add_argument("run", help="run folder (config.yaml + last.pt, from train.py) or a checkpoint file")
    p.add_argument("--out", help="output folder (default: RUN/analysis)")
    p.add_argument("--config", help="config of a checkpoint that has no config.yaml beside it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's config, e.g. --set data.root=DIR (repeatable)")
    p.add_argument("--device", default="auto", help="auto (a GPU when visible), cpu, cuda, cuda:N")
    p.add_argument("--seed", type=seed, default=0, help="subset, probe vectors and directions (default 0)")
    p.add_argument("--bn", choices=measure.BN_MODES, default="eval",
                   help="BatchNorm statistics: eval = running (default), train = each batch's own")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="arithmetic of the analysis")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default="trained",
                   help="trained: the DRW weights of the run's last epoch in the loss; none: all 1")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bars (auto: on a TTY)")


def hessian_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `hessian` (also used by figures.py spectra)."""
    o = measure.HessianOptions()
    p.add_argument("--groups", nargs="+", default=["head", "tail"], metavar="GROUP",
                   help="head, medium, tail, all, or classes like 0,1,2 / names (default: head tail)")
    p.add_argument("--samples", type=int, default=o.samples, help="training samples per group")
    p.add_argument("--batch-size", type=int, default=o.batch_size, help="samples per Hessian-vector product pass")
    p.add_argument("--power-iters", type=int, default=o.power_iters, help="power iteration: most products")
    p.add_argument("--power-tol", type=finite_float, default=o.power_tol, help="power iteration: relative tolerance")
    p.add_argument("--trace-samples", type=int, default=o.trace_samples, help="Hutchinson probes")
    p.add_argument("--slq-runs", type=int, default=o.slq_runs, help="SLQ start vectors")
    p.add_argument("--slq-steps", type=int, default=o.slq_steps, help="Lanczos steps per SLQ start vector")
    p.add_argument("--sigma", type=finite_float, default=o.sigma, help="Gaussian broadening, relative to the spectrum width")


def landscape_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `landscape` (also used by figures.py landscapes)."""
    o = measure.LandscapeOptions()
    p.add_argument("--groups", nargs="+", default=["head", "tail"], metavar="GROUP",
                   help="head, medium, tail, all, or classes like 0,1,2 / names (default: head tail)")
    p.add_argument("--samples", type=int, default=o.samples, help="training samples per group")
    p.add_argument("--batch-size", type=int, default=o.batch_size)
    p.add_argument("--span", type=finite_float, default=o.span, help="coordinates from -SPAN to SPAN")
    p.add_argument("--points-1d", type=int, default=o.points_1d, help="points of the line")
    p.add_argument("--points-2d", type=int, default=o.points_2d, help="points per axis of the surface")
    p.add_argument("--one-d", choices=ONE_D, default=o.one_d,
                   help="direction of 1-D parameters (BN, biases): zero (Li et al.) or per-entry filter norm")


def sharpness_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `sharpness`."""
    o = measure.SharpnessOptions()
    p.add_argument("--classes", default="all", help="the classes reported: all (default), head, medium, tail, or "
                   "a class list 0,1,2 (what is measured for a class does not depend on it)")
    p.add_argument("--per-class", type=int, default=o.per_class, help="training samples per class")
    p.add_argument("--batch-size", type=int, default=o.batch_size)
    p.add_argument("--rho", type=finite_float, default=o.rho, help="perturbation radius (default 0.05)")
    p.add_argument("--direction", choices=DIRECTIONS, default=o.direction,
                   help="sam: one shared SAM perturbation (default); class: each class its own")
    p.add_argument("--definition", choices=DEFINITIONS, default=o.definition,
                   help="mean: L_k = class k's mean loss (default); paper: Eq. 4's L_S^k = pi_k x that mean")


def build_parser() -> argparse.ArgumentParser:
    """analyze.py's parser: one subcommand per analysis."""
    parser = ArgumentParser(prog="analyze.py", description="Hessian spectra, loss landscapes and class-wise sharpness "
                                                   "of a trained run, per class group.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for name, extra, help_ in (("hessian", hessian_arguments, "lambda_max, Tr(H) and the eigenvalue density"),
                               ("landscape", landscape_arguments, "1-D and 2-D loss landscapes"),
                               ("sharpness", sharpness_arguments, "class-wise sharpness L_k(w+eps) - L_k(w)")):
        p = sub.add_parser(name, help=help_, description=help_)
        common_arguments(p)
        extra(p)
    return parser


# ----------------------------------------------------------------------------- helpers

def make_track(setting: str):
    """A progress-bar wrapper (tqdm) when bars are wanted, else the identity."""
    enabled = setting == "on" or (setting == "auto" and sys.stderr.isatty() and not os.environ.get("CI"))
    if not enabled:
        return measure.no_track
    from tqdm import tqdm
    return lambda items, desc="": tqdm(items, desc=desc, leave=False, dynamic_ncols=True)


def options(cls, args, **extra):
    """The dataclass `cls` from the parsed arguments of the same names; positive counts checked."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(extra)
    for key, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "seed" and v <= 0:
            raise UserError(f"--{key.replace('_', '-')} must be > 0, got {v}")
    return cls(**values)


def check_finite(doc: dict, advice: str) -> None:
    """Refuse results holding NaN or infinity before anything is written (a huge --span or --rho
    moves the weights out of float range): numbers that mean nothing, and plots that crash."""
    where = first_non_finite({k: v for k, v in doc.items() if k not in ("run", "settings")})
    if where is not None:
        raise UserError(f"the {doc['kind']} is not finite at {where}; {advice}; nothing was written")


def first_non_finite(obj, path: str = "") -> Optional[str]:
    """The key path of the first NaN or infinite number in nested dicts and lists, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else path
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = first_non_finite(value, f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def groups_of(run, specs: Sequence[str]) -> List[Tuple[str, List[int]]]:
    """[(group name, class indices)] for the --groups of a loaded run."""
    out, seen = [], set()
    for spec in specs:
        if spec in seen:
            raise UserError(f"group '{spec}' is given twice")
        seen.add(spec)
        out.append((spec, resolve_group(spec, run.masks, run.class_names)))
    return out


def open_run(args):
    """load_run with the command's options; the model in float64 when --dtype asks."""
    run = load_run(args.run, args.set, args.device, args.class_weights, args.config)
    if args.dtype == "float64":
        run.model.double()
        run.criterion.double()
    return run


def settings(args, opts) -> dict:
    """The options that decide the numbers, stored with every result."""
    return {**dataclasses.asdict(opts), "dtype": args.dtype, "class_weights": args.class_weights,
            "device": args.device}


def output_folder(args) -> str:
    """--out, or RUN/analysis; the run is checked first (a typo must not create folders)."""
    folder = run_paths(args.run, args.config)[0]
    return prepare_out(args.out or os.path.join(folder, "analysis"))


def run_label(doc: dict) -> str:
    """A short panel label: loss + optimizer (epochs trained)."""
    r = doc["run"]
    return f"{r['loss']} + {r['optim']} ({r['epochs_trained']} epochs)"


def group_names(run) -> Dict[int, str]:
    """{class index: head / medium / tail} of a loaded run."""
    return {int(k): g for g, m in run.masks.items() for k in range(len(m)) if m[k]}


# ----------------------------------------------------------------------------- hessian

def hessian_report(args, run=None) -> dict:
    """Load the run (unless given), measure every group; -> the JSON document."""
    opts = options(measure.HessianOptions, args)
    run = run or open_run(args)
    track = make_track(args.progress)
    results = [measure.hessian(run, name, classes, opts, DTYPES[args.dtype], track)
               for name, classes in groups_of(run, args.groups)]
    doc = {"kind": "hessian", "run": run.describe(), "settings": settings(args, opts), "groups": results}
    check_finite(doc, "try --dtype float64")
    return doc


def write_hessian(doc: dict, out: str, label: str = "") -> List[str]:
    """hessian.json, hessian_summary.csv, hessian_density.csv, hessian.png into `out`; -> the paths."""
    stem = os.path.join(out, "hessian")
    write_json(f"{stem}.json", doc)
    write_csv(f"{stem}_summary.csv", ["group", "lambda_max", "trace", "trace_stderr", "samples", "loss"],
              [[r["group"], r["lambda_max"], r["trace"], r["trace_stderr"], r["samples"], r["loss"]]
               for r in doc["groups"]])
    write_csv(f"{stem}_density.csv", ["group", "eigenvalue", "density"],
              [[r["group"], x, y] for r in doc["groups"] for x, y in zip(r["density"]["grid"], r["density"]["density"])])
    label = label or run_label(doc)
    plots.panels([[lambda ax, r=r: plots.draw_density(ax, r, f"{label}: {r['group']}") for r in doc["groups"]]],
                 f"{stem}.png")
    return [f"{stem}.json", f"{stem}.png", f"{stem}_summary.csv", f"{stem}_density.csv"]


def hessian_command(args) -> None:
    """analyze.py hessian."""
    options(measure.HessianOptions, args)  # option mistakes first: nothing is created for them
    out = output_folder(args)
    doc = hessian_report(args)
    for r in doc["groups"]:
        se = "" if r["trace_stderr"] is None else f" ± {r['trace_stderr']:.3g}"
        print(f"{r['group']:>8}: lambda_max {r['lambda_max']:.4g}  Tr(H) {r['trace']:.4g}{se}  "
              f"({r['samples']} samples, loss {r['loss']:.4f})")
    print("wrote " + ", ".join(write_hessian(doc, out)))


# ----------------------------------------------------------------------------- landscape

def landscape_options(args) -> measure.LandscapeOptions:
    """LandscapeOptions from the arguments; grids of odd size (they must hold w)."""
    opts = options(measure.LandscapeOptions, args)
    for key in ("points_1d", "points_2d"):
        # odd: the grid holds the weights w themselves; 3 or more: a line and a contour need two
        # points per axis (matplotlib refuses a 1 x 1 surface after the first files are written)
        if getattr(opts, key) % 2 == 0 or getattr(opts, key) < 3:
            raise UserError(f"--{key.replace('_', '-')} must be an odd number >= 3, so that the grid holds the "
                            f"weights w themselves and spans both sides, got {getattr(opts, key)}")
    return opts


def landscape_report(args, run=None) -> dict:
    """Load the run (unless given) and measure the landscapes; -> the JSON document."""
    opts = landscape_options(args)
    run = run or open_run(args)
    result = measure.landscape(run, groups_of(run, args.groups), opts, DTYPES[args.dtype], make_track(args.progress))
    doc = {"kind": "landscape", "run": run.describe(), "settings": settings(args, opts), **result}
    check_finite(doc, f"choose a smaller --span (now {opts.span:g})")
    return doc


def write_landscape(doc: dict, out: str, label: str = "") -> List[str]:
    """landscape.json, its CSVs and the line / contour / surface PNGs into `out`; -> the paths."""
    stem = os.path.join(out, "landscape")
    label = label or run_label(doc)
    names = list(doc["line"])
    write_json(f"{stem}.json", doc)
    write_csv(f"{stem}_line.csv", ["alpha", *names], [[a, *(doc["line"][n][i] for n in names)]
                                                      for i, a in enumerate(doc["alphas"])])
    write_csv(f"{stem}_surface.csv", ["group", "alpha", "beta", "loss"],
              [[n, a, b, doc["surface"][n][j][i]] for n in names for j, b in enumerate(doc["grid"])
               for i, a in enumerate(doc["grid"])])
    plots.panels([[lambda ax: plots.draw_lines(ax, doc["alphas"], doc["line"], f"{label}: 1-D landscape")]],
                 f"{stem}_line.png", size=(5.5, 4.0))
    for view, draw, projection in (("contour", plots.draw_contour, None), ("surface", plots.draw_surface, "3d")):
        plots.panels([[lambda ax, n=n: draw(ax, doc["grid"], doc["surface"][n], f"{label}: {n}", doc["origin"][n])
                       for n in names]], f"{stem}_{view}.png", projection=projection)
    return [f"{stem}.json", f"{stem}_line.png", f"{stem}_contour.png", f"{stem}_surface.png",
            f"{stem}_line.csv", f"{stem}_surface.csv"]


def landscape_command(args) -> None:
    """analyze.py landscape."""
    landscape_options(args)
    out = output_folder(args)
    doc = landscape_report(args)
    for n, v in doc["origin"].items():
        line = doc["line"][n]
        print(f"{n:>8}: loss at w {v:.4f}; along direction 1 from {line[0]:.4f} (alpha -{doc['settings']['span']:g}) "
              f"to {line[-1]:.4f} (+{doc['settings']['span']:g})")
    print("wrote " + ", ".join(write_landscape(doc, out)))


# ----------------------------------------------------------------------------- sharpness

def sharpness_command(args) -> None:
    """analyze.py sharpness."""
    opts = options(measure.SharpnessOptions, args)
    out = output_folder(args)
    run = open_run(args)
    classes = resolve_group(args.classes, run.masks, run.class_names)
    result = measure.sharpness(run, classes, opts, DTYPES[args.dtype], make_track(args.progress))
    doc = {"kind": "sharpness", "run": run.describe(), "settings": settings(args, opts), **result}
    check_finite(doc, f"choose a smaller --rho (now {opts.rho:g})")
    groups = group_names(run)
    stem = os.path.join(out, "sharpness")
    write_json(f"{stem}.json", doc)
    write_csv(f"{stem}.csv", ["class", "name", "train_count", "group", "loss", "perturbed_loss", "sharpness"],
              [[k, run.class_names[k], run.class_counts[k], groups.get(k, ""), l, p, s] for k, l, p, s in
               zip(classes, doc["loss"], doc["perturbed_loss"], doc["sharpness"])])
    plots.sharpness_bars(doc, groups, run.class_names, run.class_counts, f"{stem}.png",
                         f"{run_label(doc)}: class-wise sharpness "
                         f"(rho = {opts.rho:g}, {opts.direction} perturbation, {opts.definition} loss)")
    for g in ("head", "medium", "tail"):
        vals = [s for k, s in zip(classes, doc["sharpness"]) if groups.get(k) == g]
        if vals:
            print(f"{g:>8}: mean sharpness {sum(vals) / len(vals):.4g} over {len(vals)} classes")
    print(f"wrote {stem}.json, {stem}.png, {stem}.csv")


COMMANDS = {"hessian": hessian_command, "landscape": landscape_command, "sharpness": sharpness_command}
