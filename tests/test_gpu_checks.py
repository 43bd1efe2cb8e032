"""scripts/gpu_checks.sh rehearsed on the CPU (GPU_CHECKS_REHEARSAL=1): the same three parts as on a
GPU (tests, step benchmark, paper cells within the budget) with a tiny schedule and synthetic data,
so the command is known to run end to end and to leave its figures where the GPU call collects
them before a GPU sees it."""
import json
import os
import subprocess
import sys

from conftest import ROOT


def test_rehearsal_runs_every_part_and_writes_the_figures(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    env = {**os.environ, "GPU_CHECKS_REHEARSAL": "1", "OUT": str(out), "RUNS_ROOT": str(runs), "BUDGET_S": "900",
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_checks.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # What comes back from a device call: at most 8 files, none in a subfolder.
    assert sorted(os.listdir(out)) == ["cells.json", "cells.md", "device.txt", "gpu_checks.log", "step.json",
                                       "tests.txt"]
    assert "REHEARSAL" in (out / "device.txt").read_text()
    step = json.loads((out / "step.json").read_text())
    assert {"sgd", "focal_sam"} <= set(json.dumps(step).replace('"', " ").split())
    doc = json.loads((out / "cells.json").read_text())
    assert [(r["row"], r["state"]) for r in doc["rows"]] == [("LA", "done"), ("LA+Focal-SAM", "done")]
    assert all(len(r["metrics"]["top1"]["ours"]) == 2 for r in doc["rows"])      # two seeds, trained together
    md = (out / "cells.md").read_text()
    assert "SMOKE" in md and "| LA+Focal-SAM |" in md and "/ 82.9" in md           # the paper's IF100 All
    row = runs / "cifar10_lt" / "la_focal_sam" / "if100"
    assert "--seeds 0 1" in (row / "seed0" / "train.log").read_text()              # one process for the row
    assert json.loads((row / "seed1" / "final.json").read_text())["run"]["seed"] == 1
    text = (out / "gpu_checks.log").read_text()
    for part in ("tests/test_capture.py", "scripts/bench_step.py", "scripts/gpu_paper_cells.py", "figures in"):
        assert part in text, part
