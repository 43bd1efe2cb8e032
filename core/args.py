"""Command-line arguments whose mistakes are one line, like every other error of the command line.

Every entry point (train.py, eval.py, analyze.py, scripts/*.py) builds its parser from
`ArgumentParser` and reads numbers through the types below, so a malformed argument, NaN or
infinity is refused at parse time with `error: ...` and exit status 2, before any work.
"""
import argparse
import math
import sys

SEED_MAX = 2**32 - 1   # numpy's seed range (np.random.SeedSequence refuses negative seeds)


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser printing `error: <what> (see <prog> --help)` and exiting with 2,
    instead of the usage block followed by the error. Subcommands: pass
    `parser_class=ArgumentParser` to `add_subparsers`."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def _number(text: str) -> float:
    """float(text), NaN when it is not a number (so that every range test refuses it)."""
    try:
        return float(text)
    except ValueError:
        return float("nan")


def finite_float(text: str) -> float:
    """argparse type of every float option: a finite number. float() reads 'nan' and 'inf', which
    would otherwise run a whole analysis to NaN results or crash a plot at the end."""
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


finite_float.__name__ = "finite number"   # argparse names the type in its message


def positive_seconds(text: str) -> float:
    """argparse type of a timeout: a finite number of seconds > 0 (0 would never wait, inf forever)."""
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def integer_in(low: int, high: int = None):
    """argparse type: an integer in low..high (high None: no upper bound)."""
    want = f"an integer >= {low}" if high is None else f"an integer in {low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < low or high is not None and value > high:
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value
    parse.__name__ = want[3:]   # argparse names the type in its message
    return parse


def at_least(low: int):
    """argparse type: an integer >= low (a count of steps, images or workers)."""
    return integer_in(low)


seed = integer_in(0, SEED_MAX)   # argparse type of --seed: what numpy and torch both accept
