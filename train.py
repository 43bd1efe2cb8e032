"""Train one long-tailed classification run from a YAML config.

    python train.py --config configs/cifar10_lt/la_focal_sam.yaml
    python train.py --config configs/cifar10_lt/ce_sgd.yaml --set train.epochs=5 --out runs/try
    python train.py --resume runs/try                       # continue from runs/try/last.pt
    python train.py --config ... --seeds 0 1 2              # three seeds in one process (one folder each)
    torchrun --nproc_per_node 2 train.py --config ...       # DistributedDataParallel

The run folder (--out, default runs/<config>-seed<seed>) receives config.yaml, metrics.jsonl,
summary.csv, TensorBoard events (tb/), last.pt and final.json (train.loggers chooses summary.csv, tb/
and Weights & Biases). With --seeds S [S ...] the seeds
train together as one stacked model (engine/group.py), each into its own folder (--out holds
`{seed}`, default runs/<config>-seed{seed}), as if run alone; `--resume DIR [DIR ...]` continues them.
"""

from core.args import ArgumentParser
from engine.cli import claimed_runs, config_arguments, user_errors


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    config_arguments(parser, config_required=False)
    parser.add_argument("--out", help="run folder (default: runs/<config name>-seed<seed>); with several "
                                      "--seeds a pattern holding {seed}")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="S",
                        help="train these seeds of the config together in one process (one folder each)")
    parser.add_argument("--resume", nargs="+", metavar="DIR",
                        help="continue the run(s) in DIR ... from their last.pt (several: together, as --seeds)")
    parser.add_argument("--options", action="store_true", help="list every config key with its default and exit")
    args = parser.parse_args(argv)
    if args.options:
        from engine.config import options_table
        print(options_table())
        return
    hint = args.resume or ([args.out] if args.out and "{seed}" not in args.out else [])
    with user_errors(resume_hint=hint):
        with claimed_runs(args) as (cfgs, outs, resume):  # the folders stay locked until fit ends
            from engine.trainer import fit_members  # heavy imports after the arguments are known to be sane
            with user_errors(resume_hint=outs):
                fit_members(cfgs, outs, resume)


if __name__ == "__main__":
    main()
