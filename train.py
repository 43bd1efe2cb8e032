"""Train one long-tailed classification run from a YAML config.

    python train.py --config configs/cifar10_lt/la_focal_sam.yaml
    python train.py --config configs/cifar10_lt/ce_sgd.yaml --set train.epochs=5 --out runs/try
    python train.py --resume runs/try                       # continue from runs/try/last.pt
    torchrun --nproc_per_node 2 train.py --config ...       # DistributedDataParallel

The run folder (--out, default runs/<config>-seed<seed>) receives config.yaml, metrics.jsonl,
summary.csv, TensorBoard events (tb/), last.pt and final.json.
"""

from core.args import ArgumentParser
from engine.cli import claimed_run, config_arguments, user_errors


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    config_arguments(parser, config_required=False)
    parser.add_argument("--out", help="run folder (default: runs/<config name>-seed<seed>)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last.pt")
    parser.add_argument("--options", action="store_true", help="list every config key with its default and exit")
    args = parser.parse_args(argv)
    if args.options:
        from engine.config import options_table
        print(options_table())
        return
    out = args.resume or args.out or ""
    with user_errors(resume_hint=out):
        with claimed_run(args) as (cfg, out, resume):  # the folder stays locked until fit ends
            from engine.trainer import fit  # heavy imports after the arguments are known to be sane
            with user_errors(resume_hint=out):
                fit(cfg, out, resume)


if __name__ == "__main__":
    main()
