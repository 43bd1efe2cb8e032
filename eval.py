"""Evaluate a checkpoint and write the same report as training's final.json.

    python eval.py --checkpoint runs/x/last.pt                  # config.yaml beside it
    python eval.py --config configs/cifar10_lt/la_sam.yaml --checkpoint path/to/last.pt --out eval.json
    python eval.py --checkpoint runs/x/last.pt --ood imagenet_sketch=DIR --ood imagenet_c=DIR   # ImageNet-LT runs
"""
import os

from core.args import ArgumentParser
from engine.cli import check_report_path, config_arguments, user_errors
from engine.config import load_config
from core.errors import UserError


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    config_arguments(parser, config_required=False)
    parser.add_argument("--checkpoint", required=True, help="a last.pt written by train.py")
    parser.add_argument("--out", help="report path (default: eval.json, or ood.json with --ood, beside the checkpoint)")
    parser.add_argument("--ood", action="append", default=[], metavar="NAME=DIR",
                        help="out-of-distribution set instead of the test set (imagenet_sketch, imagenet_v2, "
                             "imagenet_c; repeatable; see engine/ood.py)")
    parser.add_argument("--ood-classes", default="", metavar="FILE",
                        help="'wnid name' per label for the OOD class folders (default: the config's data.class_names)")
    args = parser.parse_args(argv)
    with user_errors():
        config = args.config or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "config.yaml")
        if not args.config and not os.path.isfile(config):   # a --config given: load_config names it
            raise UserError(f"no --config given and no config.yaml beside {args.checkpoint}; pass --config FILE")
        cfg = load_config(config, args.set)
        beside = lambda name: os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), name)
        out = args.out or beside("ood.json" if args.ood else "eval.json")
        check_report_path(out, args.checkpoint)  # before any work: a bad --out must not cost an evaluation
        if args.ood:
            from engine.ood import evaluate_ood, parse_ood_sets
            evaluate_ood(cfg, args.checkpoint, parse_ood_sets(args.ood), args.ood_classes, out)
            return
        from engine.evaluation import evaluate_checkpoint
        evaluate_checkpoint(cfg, args.checkpoint, out)


if __name__ == "__main__":
    main()
