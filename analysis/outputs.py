"""Writing results: an output folder checked before any work, atomic JSON, plain CSV."""
import csv
import json
import os
from typing import Iterable, Sequence

from engine.cli import check_out_folder


def prepare_out(folder: str) -> str:
    """Create `folder` and make sure a file can be written there; UserError otherwise, before
    minutes of computation are spent."""
    return check_out_folder(folder, "--out")


def write_json(path: str, obj) -> None:
    """Write to a temporary file, then rename: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_json(path: str):
    """The parsed content of a JSON file."""
    with open(path) as f:
        return json.load(f)


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV file with one header row."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow(row)
