"""core/args.py: the argument types every entry point shares, and the one-line argument error of
each command-line entry point (train.py, eval.py, analyze.py, every script in scripts/)."""
import argparse
import glob
import os

import pytest

from conftest import ROOT, script
from core.args import at_least, finite_float, integer_in, positive_seconds, seed


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "x", ""])
def test_finite_float_refuses_what_is_not_a_finite_number(text):
    with pytest.raises(argparse.ArgumentTypeError, match="expected a finite number"):
        finite_float(text)


def test_finite_float_reads_numbers():
    assert [finite_float(t) for t in ("0", "-2.5", "1e-3", "1e308")] == [0.0, -2.5, 0.001, 1e308]


def test_integer_types():
    assert integer_in(0, 3)("3") == 3 and at_least(1)("7") == 7 and seed("4294967295") == 2**32 - 1
    for parse, text in ((integer_in(0, 3), "4"), (at_least(1), "0"), (seed, "-1"), (seed, "1.5"), (seed, "nan")):
        with pytest.raises(argparse.ArgumentTypeError, match="expected an integer"):
            parse(text)
    for text in ("0", "nan", "inf", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected seconds > 0"):
            positive_seconds(text)


def entry_points():
    """(name, main) of every command-line program of the repository."""
    paths = [os.path.join(ROOT, f) for f in ("train.py", "eval.py", "analyze.py")]
    paths += sorted(p for p in glob.glob(os.path.join(ROOT, "scripts", "*.py"))
                    if not os.path.basename(p).startswith("_"))       # scripts/_root.py: a helper module
    for path in paths:
        name = os.path.relpath(path, ROOT)
        yield pytest.param(path, id=name)


def load(path):
    """The program as a module: the root and scripts/ are on the path (pytest.ini)."""
    return script(os.path.basename(path)[:-3])


@pytest.mark.parametrize("path", list(entry_points()))
def test_a_malformed_argument_is_one_line(path, capsys):
    """Not argparse's usage block: one `error:` line and exit status 2, like every other bad input."""
    with pytest.raises(SystemExit) as e:
        load(path).main(["--no-such-option"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err


def test_no_float_option_reads_plain_float():
    """float() accepts 'nan' and 'inf': every float option of every program reads finite_float."""
    import ast
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "runs")]
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if isinstance(node, ast.keyword) and node.arg == "type" and \
                        isinstance(node.value, ast.Name) and node.value.id == "float":
                    found.append(f"{os.path.relpath(path, ROOT)}:{node.value.lineno}")
    assert not found, f"type=float (use core.args.finite_float): {found}"
