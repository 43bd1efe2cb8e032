"""scripts/gpu_paper_cells.py: the budget's arithmetic, and its decisions on a stand-in clock with
stand-in training processes that finish epochs as the clock advances."""
import json
import os
import signal

import pytest

import gpu_paper_cells as cells_script
from gpu_paper_cells import Budget, how_many_fit, plan, projected_seconds, row_seconds, run_cells
from repro import spec


def test_projection_leaves_out_the_first_epoch():
    assert projected_seconds([30.0, 2.0, 4.0, 3.0], 10) == 3.0 * 6       # median of 2, 4, 3; 6 epochs left
    assert projected_seconds([5.0], 3) == 10.0                          # one epoch: it is all there is
    assert projected_seconds([1.0, 1.0], 2) == 0.0


def test_rows_scale_by_passes_per_step():
    assert row_seconds(1.0, "focal_sam", "sgd", 200) == pytest.approx(500.0)   # 5 passes against 2
    assert row_seconds(2.0, "sam", "focal_sam", 10) == pytest.approx(16.0)


def test_plan_is_table_5_la_rows_at_if100():
    table = spec.get_table(spec.load_tables(), "5")
    cells = plan(table, ["LA", "LA+Focal-SAM", "LA+SAM"], "IF100", [0, 1, 2], ["train.capture=step"])
    assert [c.row.name for c in cells] == ["LA", "LA+Focal-SAM", "LA+SAM"]
    assert [c.optimizer for c in cells] == ["sgd", "focal_sam", "sam"] and {c.epochs for c in cells} == {200}
    for c in cells:
        assert [r.seed for r in c.runs] == [0, 1, 2]
        assert c.runs[0].sets[-1] == "train.capture=step" and "data.imb_factor=100" in c.runs[0].sets
    # 1 s per SGD epoch: Focal-SAM 5/2 s, SAM 4/2 s per epoch, 200 epochs each
    assert how_many_fit(cells[1:], 1.0, "sgd", 500.0 + 400.0) == 2
    assert how_many_fit(cells[1:], 1.0, "sgd", 899.0) == 1 and how_many_fit(cells[1:], 1.0, "sgd", 499.0) == 0
    from core.errors import UserError
    with pytest.raises(UserError, match=r"no row 'LA\+Foo'"):
        plan(table, ["LA+Foo"], "IF100", [0], [])
    with pytest.raises(UserError, match="no column group 'IF7'"):
        plan(table, ["LA"], "IF7", [0], [])


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, dt):
        self.t += dt


class FakeRun:
    """A training process: writes one metrics line per epoch of `epoch_s` (list, or one value)
    into each run folder as the clock passes, final.json at the end; SIGTERM stops it."""

    def __init__(self, clock, folders, epochs, epoch_s):
        self.clock, self.folders, self.epochs, self.start = clock, folders, epochs, clock()
        self.epoch_s = epoch_s if isinstance(epoch_s, list) else [epoch_s] * epochs
        self.returncode, self.written, self.signals = None, 0, []
        self.log_file = open(os.devnull, "w")

    def poll(self):
        if self.returncode is None:
            elapsed, done = self.clock() - self.start, 0
            while done < self.epochs and sum(self.epoch_s[:done + 1]) <= elapsed:
                done += 1
            for e in range(self.written, done):
                for f in self.folders:
                    os.makedirs(f, exist_ok=True)
                    with open(os.path.join(f, "metrics.jsonl"), "a") as out:
                        out.write(json.dumps({"epoch": e + 1, "epoch_seconds": self.epoch_s[e]}) + "\n")
            self.written = done
            if done == self.epochs:
                for f in self.folders:
                    with open(os.path.join(f, "final.json"), "w") as out:
                        json.dump({"top1": 50.0, "head": 60.0, "medium": 50.0, "tail": 40.0}, out)
                self.returncode = 0
        return self.returncode

    def send_signal(self, sig):
        self.signals.append(sig)
        self.returncode = -sig

    def kill(self):
        self.returncode = -9

    def wait(self):
        return self.returncode


def fake_cells(epochs=10):
    table = spec.get_table(spec.load_tables(), "5")
    cells = plan(table, ["LA", "LA+Focal-SAM", "LA+SAM"], "IF100", [0, 1, 2], [])
    for c in cells:
        c.epochs = epochs
    return cells


def launcher_for(clock, speeds, started):
    """speeds: row name -> seconds per epoch (or a list per epoch)."""
    def launch(cell, out_root, stack):
        assert stack
        proc = FakeRun(clock, [os.path.join(out_root, r.key) for r in cell.runs], cell.epochs, speeds[cell.row.name])
        started.append((cell.row.name, proc))
        return [proc]
    return launch


def test_rows_that_fit_run_and_the_first_that_does_not_is_stopped_after_its_probe(tmp_path):
    clock, started, reports, said = Clock(), [], [], []
    cells = fake_cells()
    # LA 10 x 2 s = 20 s, Focal-SAM 10 x 5 s = 50 s, SAM 10 x 4 s = 40 s: 110 s, and 100 s of budget.
    launch = launcher_for(clock, {"LA": 2.0, "LA+Focal-SAM": 5.0, "LA+SAM": 4.0}, started)
    state = run_cells(cells, str(tmp_path), Budget(100.0, clock, clock.sleep), True, 3,
                      lambda st: reports.append(dict(st)), say=said.append, launcher=launch, poll=0.5)
    assert state == {"LA": "done", "LA+Focal-SAM": "done", "LA+SAM": "stopped"}
    assert [r["LA"] for r in reports] == ["done", "done"] and reports[1]["LA+Focal-SAM"] == "done"
    sam = started[2][1]
    assert sam.signals == [signal.SIGTERM] and sam.written == 4          # stopped right after the probe
    assert clock.t < 100.0                                              # not left to run into the deadline
    assert any("LA: 2.00 s per epoch after 4 epochs" in s and "then 1 of the 2 later rows fit" in s for s in said)
    assert any(s.startswith("LA+SAM:") and "does not fit" in s for s in said)
    assert all(os.path.isfile(tmp_path / r.key / "final.json") for c in cells[:2] for r in c.runs)


def test_a_row_that_slows_down_is_stopped_at_the_deadline(tmp_path):
    clock, started, said = Clock(), [], []
    cells = fake_cells()[:1]
    launch = launcher_for(clock, {"LA": [1.0] * 4 + [20.0] * 6}, started)   # projected 6 s, takes 120 s
    state = run_cells(cells, str(tmp_path), Budget(30.0, clock, clock.sleep), True, 3, lambda st: None,
                      say=said.append, launcher=launch, poll=0.5)
    assert state == {"LA": "stopped"} and started[0][1].signals == [signal.SIGTERM]
    assert 30.0 <= clock.t <= 31.0 and any("the budget ran out after" in s for s in said)


def test_finished_rows_are_skipped_and_nothing_starts_without_budget(tmp_path):
    clock, started = Clock(), []
    cells = fake_cells()
    for r in cells[0].runs:
        os.makedirs(tmp_path / r.key)
        (tmp_path / r.key / "final.json").write_text("{}")
    launch = launcher_for(clock, {"LA+Focal-SAM": 1.0, "LA+SAM": 1.0}, started)
    budget = Budget(0.0, clock, clock.sleep)
    state = run_cells(cells, str(tmp_path), budget, True, 3, lambda st: None, say=lambda s: None, launcher=launch)
    assert state == {"LA": "skipped", "LA+Focal-SAM": "not started", "LA+SAM": "not started"} and not started


def test_report_has_the_paper_numbers_beside_ours(tmp_path):
    clock, started = Clock(), []
    cells = fake_cells(epochs=2)[:1]
    launch = launcher_for(clock, {"LA": 1.0}, started)
    table = spec.get_table(spec.load_tables(), "5")
    state = run_cells(cells, str(tmp_path / "runs"), Budget(50.0, clock, clock.sleep), True, 1,
                      lambda st: cells_script.write_report(table, cells, str(tmp_path / "runs"), [0, 1, 2],
                                                           str(tmp_path / "out"), st),
                      say=lambda s: None, launcher=launch)
    assert state == {"LA": "done"}
    text = (tmp_path / "out" / "cells.md").read_text()
    assert "| LA | 60.00 ± 0.00 / 87.6 (-27.60) | 50.00 ± 0.00 / 72.6 (-22.60) | 40.00 ± 0.00 / 70.1 (-30.10) " \
           "| 50.00 ± 0.00 / 77.9 (-27.90) | 3/3 |" in text
    doc = json.loads((tmp_path / "out" / "cells.json").read_text())
    assert doc["rows"][0]["state"] == "done" and doc["rows"][0]["metrics"]["tail"]["paper"] == 70.1


def test_bad_arguments_are_one_line(tmp_path, capsys):
    for argv, fragment in ((["--budget-s", "nan"], "--budget-s"), (["--budget-s", "10", "--rows", "LA+Foo"], "no row")):
        with pytest.raises(SystemExit) as e:
            cells_script.main(["--out-root", str(tmp_path / "r"), "--report", str(tmp_path / "o"), *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0]
