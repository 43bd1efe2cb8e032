"""Paper tables: the spec (repro/tables.yaml), the run scheduler and make_tables' report."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT
from engine.config import load_config
from repro import runner, spec

SMALL_SPEC = os.path.join(ROOT, "tests", "data", "tables_small.yaml")
GOLDEN = os.path.join(ROOT, "tests", "golden")
LOSSES = {"CE": "ce", "LDAM-DRW": "ldam_drw", "LA": "la", "VS": "vs"}
OPTIMS = {"": "sgd", " + SAM": "sam", " + ImbSAM": "imbsam", " + CC-SAM": "cc_sam", " + Focal-SAM": "focal_sam"}


@pytest.fixture(scope="module")
def tables():
    return spec.load_tables()


def rows_of(losses):
    return {f"{l}{o}": f"{LOSSES[l]}_{OPTIMS[o]}" for l in losses for o in OPTIMS}


# ----------------------------------------------------------------------------- the spec

def test_every_resnet_row_is_in_the_paper_numbers_file(tables):
    expect = {"5": rows_of(["CE", "LDAM-DRW", "LA", "VS"]), "2": rows_of(["CE", "LA"]),
              "6": rows_of(["LDAM-DRW", "VS"]),
              "3": {"LA": "la_sgd", "LA + SAM": "la_sam", "LA + ImbSAM": "la_imbsam", "LA + Focal-SAM": "la_focal_sam"}}
    for tid, rows in expect.items():
        assert {r.name: r.config for r in tables[tid].rows} == rows, tid
    for tid in ("2", "5", "6"):
        assert [(g.name, g.metrics) for g in tables[tid].groups] == [
            ("IF100", ("head", "medium", "tail", "top1")), ("IF200", ("top1",)), ("IF50", ("top1",)), ("IF10", ("top1",))]
    assert [g.name for g in tables["3"].groups] == ["ImageNet-LT", "iNaturalist 2018"]
    assert [r.name for r in tables["8-10"].rows] == ["LA + SAM", "LA + SAM (1.5x epochs)", "LA + Focal-SAM"]
    assert tables["1"].kind == "timing" and set(tables["1"].raw["paper"]) == set(OPTIMS.values())
    # every row holds a value (or null) for every column of its table (load_tables checks lengths)
    for t in tables.values():
        for r in t.rows:
            assert set(r.paper) == {g.name for g in t.groups}


def test_the_numbers_quoted_in_the_design_notes_are_transcribed(tables):
    def all_col(tid, row, group="IF100"):
        return {r.name: r for r in tables[tid].rows}[row].paper[group][-1]
    for row, v in {"CE": 73.1, "CE + Focal-SAM": 77.2, "LA": 77.9, "LA + SAM": 82.3, "LA + Focal-SAM": 82.9,
                   "VS + Focal-SAM": 82.9, "LDAM-DRW + Focal-SAM": 81.6}.items():
        assert all_col("5", row) == v
    for row, v in {"CE": 41.5, "CE + Focal-SAM": 44.0, "LA": 44.9, "LA + SAM": 50.0, "LA + Focal-SAM": 50.7}.items():
        assert all_col("2", row) == v
    assert all_col("3", "LA", "ImageNet-LT") == 52.0 and all_col("3", "LA + Focal-SAM", "ImageNet-LT") == 54.3
    assert all_col("3", "LA", "iNaturalist 2018") == 69.2 and all_col("3", "LA + Focal-SAM", "iNaturalist 2018") == 71.8


@pytest.mark.parametrize("tid", ["2", "3", "5", "6", "8-10"])
def test_every_run_of_a_table_has_a_valid_config(tables, tid):
    for smoke in (False, True):
        for run in spec.unique_runs(spec.plan_runs(tables[tid], [0], smoke=smoke)):
            assert os.path.isfile(os.path.join(ROOT, run.config)), run.config
            cfg = load_config(os.path.join(ROOT, run.config), list(run.sets))  # raises on a bad key or value
            assert cfg.data.name == ("synthetic" if smoke else os.path.basename(os.path.dirname(run.config)))


def test_scripts_exist_and_name_their_table(tables):
    for t in tables.values():
        with open(os.path.join(ROOT, t.script)) as f:
            assert f"TABLE={t.id}\n" in f.read()


def test_run_counts_and_shared_folders(tables):
    counts = {tid: len(spec.unique_runs(spec.plan_runs(tables[tid], [0, 1, 2]))) for tid in ("2", "3", "5", "6", "8-10")}
    assert counts == {"2": 120, "3": 24, "5": 240, "6": 120, "8-10": 27}
    t5 = {r.key for r in spec.unique_runs(spec.plan_runs(tables["5"], [0]))}
    t810 = spec.unique_runs(spec.plan_runs(tables["8-10"], [0]))
    focal = [r for r in t810 if r.key.startswith("cifar10_lt/la_focal_sam")]
    assert [r.key for r in focal] == ["cifar10_lt/la_focal_sam/if100/seed0"] and focal[0].key in t5
    longer = [r for r in t810 if "-ep1.5x" in r.key]
    assert {r.key for r in longer} == {"cifar10_lt/la_sam-ep1.5x/if100/seed0", "cifar100_lt/la_sam-ep1.5x/if100/seed0",
                                       "imagenet_lt/la_sam-ep1.5x/seed0"}
    imagenet = [r for r in longer if r.key.startswith("imagenet")][0]
    assert "train.epochs=300" in imagenet.sets and "optim.rho_milestones=[[240,0.2]]" in imagenet.sets
    assert imagenet.procs == 2
    assert {r.procs for r in spec.plan_runs(tables["3"], [0], procs=1) for r in [r[2]]} == {1}


def test_epoch_overrides_scale_the_schedule():
    assert spec.epoch_overrides(200, 160, [[160, 0.2]], 300) == [
        "train.epochs=300", "loss.drw_epoch=240", "optim.rho_milestones=[[240,0.2]]"]
    assert spec.epoch_overrides(200, None, [], 300) == ["train.epochs=300"]
    # squeezed into 2 epochs, each phase still gets one: 160/200*2 = 1.6 -> 2 -> kept below 2
    assert spec.epoch_overrides(200, 160, [[160, 0.2]], 2) == [
        "train.epochs=2", "loss.drw_epoch=1", "optim.rho_milestones=[[1,0.2]]"]
    assert spec.epoch_overrides(200, None, [[100, 0.2], [150, 0.3]], 2) == [
        "train.epochs=2", "optim.rho_milestones=[[1,0.3]]"]


def test_bad_spec_and_arguments_are_one_line_errors(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text("tables:\n  '9':\n    title: t\n    script: s\n    config_dir: configs/cifar10_lt\n"
                   "    groups: [{name: A, metrics: [top1, top5]}]\n    rows: []\n")
    with pytest.raises(spec.UserError, match="unknown metric 'top5'"):
        spec.load_tables(str(bad))
    bad.write_text("tables:\n  '9':\n    title: t\n    script: s\n    config_dir: configs/cifar10_lt\n"
                   "    groups: [{name: A, metrics: [head, top1]}]\n    rows: [{name: r, config: la_sgd, paper: {A: [1.0]}}]\n")
    with pytest.raises(spec.UserError, match="must be a list of 2"):
        spec.load_tables(str(bad))
    for argv, msg in ((["--table", "4", "--dry-run"], "unknown table '4'"),
                      (["--table", "5", "--dry-run", "--seeds", "a b"], "SEEDS must be integers")):
        p = subprocess.run([sys.executable, "scripts/run_table.py", *argv], cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and msg in p.stderr, p.stderr


# ----------------------------------------------------------------------------- make_tables

def write_final(out_root, key, top1, head=None, best=None, dataset="cifar10_lt", counts=(50, 30, 20)):
    folder = os.path.join(out_root, key)
    os.makedirs(folder, exist_ok=True)
    final = {"top1": top1, "head": head, "medium": None, "tail": None,
             "per_class_acc": [top1 + 10, top1, top1 - 10], "class_counts": list(counts),
             "run": {"dataset": dataset}}
    if best is not None:
        final["best_on_test"] = {"top1": best, "epoch": 3}
    with open(os.path.join(folder, "final.json"), "w") as f:
        json.dump(final, f)


def write_failed(out_root, key):
    os.makedirs(os.path.join(out_root, key), exist_ok=True)
    with open(os.path.join(out_root, key, runner.FAILED), "w") as f:
        f.write("exit 1: error: something\n")


def make_tables(out_root, *extra):
    return subprocess.run([sys.executable, "scripts/make_tables.py", "--spec", SMALL_SPEC, "--out-root", str(out_root),
                           "--seeds", "0 1 2", *extra], cwd=ROOT, capture_output=True, text=True)


def test_make_tables_matches_the_hand_written_golden_files(tmp_path):
    out = str(tmp_path / "runs")
    for seed, (top1, head, best) in enumerate([(70, 80, 75), (72, 81, 76), (74, 85, 77)]):
        write_final(out, f"cifar10_lt/la_sgd/if100/seed{seed}", top1, head, best)
    write_final(out, "cifar10_lt/la_sgd/if10/seed0", 60.5)
    write_failed(out, "cifar10_lt/la_sgd/if10/seed1")       # seed 2: never started
    for seed in range(3):
        write_failed(out, f"cifar10_lt/ce_sam/if100/seed{seed}")
    write_final(out, "cifar10_lt/ce_sam/if10/seed0", 55.25)
    os.makedirs(os.path.join(out, "cifar10_lt/ce_sam/if10/seed1"))  # started, no checkpoint yet: missing
    p = make_tables(out, "--per-class", "7:IF100")
    assert p.returncode == 0, p.stderr
    report = os.path.join(out, "report")
    for name in ("table7.md", "table7.csv"):
        with open(os.path.join(report, name)) as f, open(os.path.join(GOLDEN, name)) as g:
            assert f.read() == g.read(), name
    with open(os.path.join(GOLDEN, "table7.md")) as g:
        assert g.read() in p.stdout
    for png in ("table7.png", "table7_per_class_if100.png"):
        path = os.path.join(report, png)
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
            assert im.size[0] > 200 and im.size[1] > 100


def test_tables_from_synthetic_runs_say_so(tmp_path):
    out = str(tmp_path / "runs")
    write_final(out, "cifar10_lt/la_sgd/if100/seed0", 50.0, dataset="synthetic")
    p = make_tables(out)
    assert p.returncode == 0, p.stderr
    assert "SMOKE: built from runs on synthetic data" in p.stdout


def test_make_tables_bad_input_is_one_line(tmp_path):
    p = make_tables(tmp_path / "nothing")
    assert p.returncode == 2 and "no runs under" in p.stderr and p.stderr.count("\n") == 1
    os.makedirs(tmp_path / "runs")
    p = make_tables(tmp_path / "runs", "--per-class", "7:IF3")
    assert p.returncode == 2 and "give TABLE:GROUP" in p.stderr and "IF100, IF10" in p.stderr


# ----------------------------------------------------------------------------- the runner

def test_slots_share_gpus_and_give_multi_gpu_runs_whole_devices():
    s = runner.Slots(["0", "1"], 2)
    assert [s.take(1) for _ in range(4)] == [["0"], ["1"], ["0"], ["1"]] and s.take(1) is None
    s.give(["0"], 1)
    assert s.take(2) is None                 # a 2-GPU run waits for two idle GPUs
    s.give(["0"], 1), s.give(["1"], 1), s.give(["1"], 1)
    assert s.take(2) == ["0", "1"] and s.take(1) is None
    s.give(["0", "1"], 2)
    assert s.load == {"0": 0, "1": 0}
    assert not runner.Slots(["0", "1"], 4).fits(4) and runner.Slots(["cpu"], 1).fits(4)


def test_state_and_commands(tmp_path):
    run = spec.Run("a/seed1", "configs/smoke.yaml", ("train.epochs=1",), 1, 1)
    folder = str(tmp_path / "a")
    assert runner.run_state(folder) == "new"
    cmd = runner.command(run, folder, python="py")
    assert cmd[0] == "py" and cmd[-4:] == ["--set", "seed=1", "--set", "train.epochs=1"] and "--out" in cmd
    os.makedirs(folder)
    open(os.path.join(folder, "last.pt"), "w").close()
    assert runner.run_state(folder) == "resume"
    assert runner.command(run, folder, resume=True, python="py")[-2:] == ["--resume", folder]
    multi = spec.Run("b", "configs/imagenet_lt/la_sgd.yaml", (), 0, 4)
    assert runner.command(multi, folder, python="py")[:5] == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert runner.data_root_set("configs/imagenet_lt/la_sgd.yaml", "/d") == "data.root=/d/ImageNet_LT"
    assert runner.data_root_set("configs/cifar10_lt/la_sgd.yaml", "/d") == "data.root=/d"


def test_runner_skips_resumes_and_survives_a_failure(tmp_path):
    """Three real tiny runs: one fine, one that fails (bad value), one half-finished."""
    out = str(tmp_path / "runs")
    tiny = ("data.max_per_class=30", "data.test_per_class=4", "train.epochs=2", "train.batch_size=16")
    good = spec.Run("good/seed0", "configs/smoke.yaml", tiny, 0, 1)
    bad = spec.Run("bad/seed0", "configs/smoke.yaml", tiny + ("optim.lrr=0.1",), 0, 1)
    half = spec.Run("half/seed0", "configs/smoke.yaml", tiny, 0, 1)
    # `half`: a finished run whose final.json is taken away, so only last.pt says where it stands;
    # the runner must resume it (train.py --resume), which writes final.json again
    said = []
    assert runner.execute([half], out, runner.Slots(["cpu"], 1), say=said.append)["done"] == ["half/seed0"]
    os.remove(os.path.join(out, half.key, "final.json"))
    said.clear()
    result = runner.execute([good, bad, half], out, runner.Slots(["cpu"], 2), say=said.append, poll=0.1)
    assert sorted(result["done"]) == ["good/seed0", "half/seed0"] and result["failed"] == ["bad/seed0"]
    assert any(s.startswith("[start resume] half/seed0") for s in said)
    with open(os.path.join(out, "bad/seed0", runner.FAILED)) as f:
        assert "exit 2: error: config error: optim.lrr: unknown key" in f.read()
    with open(os.path.join(out, "half/seed0", runner.LOG)) as f:
        assert f.read().count("=== ") == 2      # each attempt appends to the run's log
    # a second sitting: finished runs skipped, the failed one tried again
    said.clear()
    result = runner.execute([good, bad, half], out, runner.Slots(["cpu"], 1), say=said.append, poll=0.1)
    assert sorted(result["skipped"]) == ["good/seed0", "half/seed0"] and result["failed"] == ["bad/seed0"]


def test_table_scripts_dry_run_list_their_runs(tmp_path):
    env = dict(os.environ, DRY_RUN="1", OUT_ROOT=str(tmp_path / "runs"), SEEDS="0 1 2", PYTHON=sys.executable)
    counts = {"table1_timing.sh": 4, "table2_cifar100_lt.sh": 120, "table3_large.sh": 24,
              "table5_cifar10_lt.sh": 240, "table6_cifar100_lt.sh": 120, "table8_10_sam_1p5x.sh": 27}
    for script, n in counts.items():
        p = subprocess.run(["bash", os.path.join("scripts", script)], cwd=ROOT, env=env, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert f"\n{n} runs ({n} new) under {tmp_path / 'runs'}" in p.stdout, p.stdout[-500:]
        assert p.stdout.count("\n       python ") == n   # each run listed with its command


def test_smoke_fills_a_table_end_to_end(tmp_path):
    """run_table --smoke on the small table, then make_tables: every cell filled, marked synthetic."""
    out = str(tmp_path / "runs")
    p = subprocess.run([sys.executable, "scripts/run_table.py", "--spec", SMALL_SPEC, "--table", "7", "--smoke",
                        "--seeds", "0", "--gpus", "cpu", "--out-root", out], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "4 finished now, 0 done before, 0 failed" in p.stdout
    p = make_tables(out, "--seeds", "0")
    assert p.returncode == 0, p.stderr
    rows = [l for l in p.stdout.splitlines() if l.startswith("| LA |") or l.startswith("| CE + SAM |")]
    assert len(rows) == 2 and "SMOKE" in p.stdout
    for line in rows:
        assert not any(w in line for w in ("missing", "failed", "n/a")) and line.endswith("| 2/2 |"), line


def test_table1_smoke_times_every_optimizer_and_prints_the_table(tmp_path):
    """Table 1 on synthetic data: bench_step per dataset (ResNet-32 and ResNet-50), then the table."""
    out = str(tmp_path / "runs")
    p = subprocess.run([sys.executable, "scripts/run_table.py", "--table", "1", "--smoke", "--gpus", "cpu",
                        "--out-root", out], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    with open(os.path.join(out, "table1", "imagenet_lt", "bench.json")) as f:
        bench = json.load(f)
    assert set(bench["rows"]) == set(OPTIMS.values()) and bench["batch"] == 8
    for r in bench["rows"].values():
        assert r["seconds_per_step"] > 0 and r["best_seconds_per_step"] <= r["median_seconds_per_step"]
    p = subprocess.run([sys.executable, "scripts/make_tables.py", "--table", "1", "--out-root", out],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    focal = [l for l in p.stdout.splitlines() if l.startswith("| focal_sam |")][0]
    assert focal.count("x SAM) / –") == 4 and "missing" not in focal
