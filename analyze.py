"""Analyse a trained run per class group: Hessian spectrum, loss landscape, class-wise sharpness.

    python analyze.py hessian runs/x --groups head tail          # lambda_max, Tr(H), eigenvalue density
    python analyze.py landscape runs/x --groups head tail        # 1-D and 2-D loss surfaces
    python analyze.py sharpness runs/x --rho 0.05                # L_k(w + eps) - L_k(w) per class
    python analyze.py hessian runs/x/last.pt --device cuda --samples 2000 --out figs/x

Each writes JSON and CSV numbers beside PNG pictures into --out (default RUN/analysis). The
training loss of the chosen classes is used without augmentation, BatchNorm in eval mode unless
--bn train; everything random is drawn from --seed. See docs/analysis.md.
"""
from analysis.commands import COMMANDS, build_parser
from engine.cli import user_errors


def main(argv=None) -> None:
    """Parse, run the subcommand; bad input -> one error line, exit 2."""
    args = build_parser().parse_args(argv)
    with user_errors():
        COMMANDS[args.command](args)


if __name__ == "__main__":
    main()
