"""Evaluate a checkpoint and write the same report as training's final.json.

    python eval.py --checkpoint runs/x/last.pt                  # config.yaml beside it
    python eval.py --config configs/cifar10_lt/la_sam.yaml --checkpoint path/to/last.pt --out eval.json
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
    parser.add_argument("--out", help="report path (default: eval.json beside the checkpoint)")
    args = parser.parse_args(argv)
    with user_errors():
        config = args.config or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "config.yaml")
        if not os.path.isfile(config):
            raise UserError(f"no --config given and no config.yaml beside {args.checkpoint}; pass --config FILE")
        cfg = load_config(config, args.set)
        out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval.json")
        check_report_path(out, args.checkpoint)  # before any work: a bad --out must not cost an evaluation
        from engine.trainer import evaluate_checkpoint
        evaluate_checkpoint(cfg, args.checkpoint, out)


if __name__ == "__main__":
    main()
