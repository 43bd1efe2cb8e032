"""Writing results: an output folder checked before any work, atomic JSON, plain CSV."""
import csv
import json
import os
from typing import Iterable, Sequence

from core.errors import UserError


def prepare_out(folder: str) -> str:
    """Create `folder` and make sure a file can be written there; UserError otherwise, before
    minutes of computation are spent."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to output folder {folder} ({e.strerror or e}); choose another --out") from None
    return folder


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
