"""An argparse parser whose mistakes are one line, like every other error of the command line."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser printing `error: <what> (see <prog> --help)` and exiting with 2,
    instead of the usage block followed by the error."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def positive_seconds(text: str) -> float:
    """argparse type of a timeout: a finite number of seconds > 0 (0 would never wait, inf forever)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def at_least(low: int):
    """argparse type: an integer >= low (a count of steps, images or workers)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"  # argparse names the type in its message
    return parse
