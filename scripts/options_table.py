#!/usr/bin/env python
"""Write the README's option table from the components' options classes (one source of truth).

    python scripts/options_table.py           # rewrite the block between the README's markers
    python scripts/options_table.py --check   # exit 1 if the README is out of date (tests do this)
"""
import os
import sys

import _root  # noqa: F401  (the repository on the import path, without `pip install -e .`)
from core.args import ArgumentParser
from engine.config import options_table

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
START, END = "<!-- options-table -->", "<!-- /options-table -->"


def with_table(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{options_table()}\n{END}{tail}"


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the README is up to date")
    args = ap.parse_args(argv)
    with open(README) as f:
        text = f.read()
    new = with_table(text)
    if args.check:
        if new != text:
            print("README.md's option table is out of date: run python scripts/options_table.py", file=sys.stderr)
            return 1
        return 0
    with open(README, "w") as f:
        f.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
