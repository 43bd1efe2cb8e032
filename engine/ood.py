"""Out-of-distribution evaluation of an ImageNet-LT checkpoint (paper section 5.3, Tables 4 and 7).

    python eval.py --checkpoint RUN/last.pt --ood imagenet_sketch=DIR --ood imagenet_v2=DIR --ood imagenet_c=DIR

Each set is read with the run's own test transform (data.preprocess, data.image_size) and scored
like the in-distribution test set: balanced top-1 and Head / Medium / Tail by the run's
training counts (data.head_threshold, data.tail_threshold). ImageNet-C is 75 sets (15 corruptions
x 5 severities): its Head / Medium / Tail / All are the means over the subsets present (Table 4),
and its corruption errors CE per corruption and mCE use the plain top-1 error of each subset
against AlexNet's (data/ood.py; Table 7). The report goes to one JSON file (default ood.json
beside the checkpoint).
"""
import os
from typing import Dict, List, Optional

import numpy as np

from core.errors import UserError
from data.large import PRESETS as LIST_PRESETS, list_transform
from data.listfile import ListDataset, project_path
from data.ood import corruption_errors, imagenet_c_subsets, read_wnids, scan_class_folders
from engine import distributed as dist_utils
from engine.evaluation import load_trained, predict
from engine.config import Config
from engine.loaders import eval_loader
from engine.metrics import summarize
from engine.report import git_revision, write_json

OOD_SETS = ("imagenet_sketch", "imagenet_v2", "imagenet_c")
SUMMARY_KEYS = ("top1", "head", "medium", "tail", "accuracy", "num_test")


def parse_ood_sets(items: List[str]) -> Dict[str, str]:
    """--ood NAME=DIR arguments -> {name: folder}, names from OOD_SETS, each at most once."""
    sets = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or name not in OOD_SETS or not folder:
            raise UserError(f"--ood expects NAME=DIR with NAME one of {', '.join(OOD_SETS)}; got {item!r}")
        if name in sets:
            raise UserError(f"--ood {name} is given twice")
        sets[name] = folder
    return sets


def _load_model(cfg: Config, checkpoint: str, info):
    trained = load_trained(cfg, checkpoint, info.device, load_data=False)   # no training image is read
    return trained.model, trained.run.class_counts


def _score(model, dataset, cfg: Config, counts, info) -> dict:
    loader = eval_loader(dataset, cfg.train.eval_batch_size, info, cfg.data)
    preds, confs, labels = predict(model, loader, info, cfg.train.amp)
    report = summarize(preds, confs, labels, counts, cfg.data.head_threshold, cfg.data.tail_threshold)
    return {k: report[k] for k in SUMMARY_KEYS}


def _mean_over(subsets: Dict[str, dict], key: str) -> Optional[float]:
    values = [s[key] for s in subsets.values() if s[key] is not None]
    return float(np.mean(values)) if values else None


def evaluate_ood(cfg: Config, checkpoint: str, sets: Dict[str, str], classes_file: str, out_path: str) -> dict:
    """Score `checkpoint` on each OOD folder of `sets`; write and return the report."""
    if cfg.data.name not in LIST_PRESETS:
        raise UserError(f"OOD evaluation reads ImageNet-class folders; this run trained on {cfg.data.name}, "
                        "not on ImageNet-LT")
    info = dist_utils.init_distributed(cfg.train.device)
    try:
        model, counts = _load_model(cfg, checkpoint, info)
        wnids = read_wnids(project_path(classes_file or cfg.data.class_names), len(counts))
        tf = list_transform(cfg.data, LIST_PRESETS[cfg.data.name])

        def dataset(root: str, what: str) -> ListDataset:
            return ListDataset(root, what, len(counts), False, cfg.data.image_size, tf["mean"], tf["std"], 0.0,
                               cfg.data.decode, cfg.seed, eval_resize=tf["eval_resize"],
                               entries=scan_class_folders(root, wnids))

        report = {"checkpoint": os.path.abspath(checkpoint), "git_revision": git_revision()}
        for name, root in sets.items():
            if name == "imagenet_c":
                report[name] = _imagenet_c(model, root, dataset, cfg, counts, info)
            else:
                report[name] = _score(model, dataset(root, f"{name} folder"), cfg, counts, info)
            if info.is_main:
                print(f"{name}: {_line(report[name])}", flush=True)
        if info.is_main:
            write_json(out_path, report)
            print(f"-> {out_path}", flush=True)
        return report
    finally:
        dist_utils.cleanup()


def _imagenet_c(model, root: str, dataset, cfg: Config, counts, info) -> dict:
    subsets = {}
    for (corruption, severity), folder in sorted(imagenet_c_subsets(root).items()):
        subsets[f"{corruption}/{severity}"] = _score(model, dataset(folder, f"imagenet_c {corruption}/{severity}"),
                                                    cfg, counts, info)
    errors = {tuple(_split(key)): 100.0 - s["accuracy"] for key, s in subsets.items()}
    return {**{k: _mean_over(subsets, k) for k in ("top1", "head", "medium", "tail", "accuracy")},
            "num_subsets": len(subsets), **corruption_errors(errors), "subsets": subsets}


def _split(key: str):
    corruption, severity = key.split("/")
    return corruption, int(severity)


def _line(r: dict) -> str:
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"
    extra = f"  mCE {fmt(r['mce'])}" if "mce" in r else ""
    return f"top1 {fmt(r['top1'])}  head {fmt(r['head'])}  medium {fmt(r['medium'])}  tail {fmt(r['tail'])}{extra}"
