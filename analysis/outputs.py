"""Writing results: an output folder checked before any work, atomic JSON, plain CSV."""
import csv
from typing import Iterable, Sequence

from core.files import read_json, write_json  # noqa: F401  (the analysis tools' JSON files)
from engine.cli import check_out_folder


def prepare_out(folder: str) -> str:
    """Create `folder` and make sure a file can be written there; UserError otherwise, before
    minutes of computation are spent."""
    return check_out_folder(folder, "--out")


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV file with one header row."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow(row)
