"""The slurm launcher (repro/slurm.py, run_table.py --launcher slurm) against a real one-node SLURM
that scripts/slurm_local.sh installs (Debian's slurm-wlm and munge) and starts for this module,
and stops however the tests end.

The integration test submits a small table, holds one job still after its first epoch's
checkpoint (tests/slurm/pause/sitecustomize.py), requeues it as a preemption would, and checks
that the job comes back, resumes from last.pt and ends with exactly the weights, metrics and
table of the same table run by the local launcher (float32 on one machine with one thread is
bit-reproducible, and the trainer's resume is exact)."""
import glob
import importlib.util
import json
import os
import shutil
import subprocess
import time

import pytest
import torch

from conftest import ROOT
from repro import slurm, spec

SPEC = os.path.join(ROOT, "tests", "data", "tables_slurm.yaml")
PAUSE = os.path.join(ROOT, "tests", "slurm", "pause")
CLUSTER_SCRIPT = os.path.join(ROOT, "scripts", "slurm_local.sh")
TABLE = ["--spec", SPEC, "--table", "7", "--seeds", "0 1", "--stack-seeds"]
SLURM = ["--launcher", "slurm", "--gpus-per-node", "0", "--cpus-per-gpu", "1", "--mem-per-gpu", "1", "--time", "20"]
WAIT_S = 600   # a guard against a hang only: the table takes well under a minute on a quiet machine


def script(name):
    path = os.path.join(ROOT, "scripts", f"{name}.py")
    module_spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def call(name, argv, capsys):
    """-> (exit code, stdout, stderr) of scripts/<name>.py main(argv), in this process."""
    try:
        code = script(name).main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A one-node SLURM for this module: -> its slurm.conf. Installing it needs root and apt-get;
    CI has both, so there a failure to install or start fails the tests. Elsewhere (a
    developer's machine without root) the tests are skipped with the reason."""
    folder = str(tmp_path_factory.mktemp("slurm"))
    start = subprocess.run(["bash", CLUSTER_SCRIPT, "start", folder], capture_output=True, text=True, timeout=900)
    try:
        if start.returncode != 0:
            reason = (start.stderr.strip().splitlines() or ["slurm_local.sh start failed"])[-1]
            if os.environ.get("CI") or os.geteuid() == 0:
                pytest.fail(f"no SLURM for the tests: {reason}")
            pytest.skip(f"no SLURM for the tests (needs root to install it): {reason}")
        yield os.path.join(folder, "slurm.conf")
    finally:
        subprocess.run(["bash", CLUSTER_SCRIPT, "stop", folder], capture_output=True, timeout=300)


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    """SLURM's commands talk to the test cluster; one thread per process (jobs and local runs
    compute alike, and a busy 2-core machine does not crawl under OpenMP's spinning)."""
    monkeypatch.setenv("SLURM_CONF", cluster)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return cluster


def scontrol(*args) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def wait_until(condition, what: str, folder: str):
    deadline = time.time() + WAIT_S
    while not condition():
        if time.time() > deadline:
            logs = "".join(open(p).read()[-2000:] for p in glob.glob(os.path.join(folder, "**", "*.log*"), recursive=True))
            pytest.fail(f"waited {WAIT_S} s for {what}; logs:\n{logs}")
        time.sleep(0.3)


def job_state(job_id: str) -> str:
    return slurm.queue_states([job_id]).get(job_id, ("", ""))[0]


def comparable_final(path: str) -> dict:
    with open(path) as f:
        final = json.load(f)
    for key in ("wall_seconds", "seconds_per_epoch"):   # the clock, not the computation
        final.pop(key)
    return final


def comparable_metrics(path: str) -> list:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]


def assert_same_runs(local: str, cluster_out: str, keys) -> None:
    for key in keys:
        a, b = os.path.join(local, key), os.path.join(cluster_out, key)
        assert comparable_final(os.path.join(a, "final.json")) == comparable_final(os.path.join(b, "final.json")), key
        assert comparable_metrics(os.path.join(a, "metrics.jsonl")) == comparable_metrics(os.path.join(b, "metrics.jsonl"))
        ca, cb = (torch.load(os.path.join(d, "last.pt"), weights_only=True) for d in (a, b))
        assert ca["epoch"] == cb["epoch"] == 2
        for part in ("model", "optimizer"):
            flat_a, flat_b = _tensors(ca[part]), _tensors(cb[part])
            assert flat_a.keys() == flat_b.keys()
            for name, t in flat_a.items():
                assert torch.equal(t, flat_b[name]), f"{key} {part} {name}"


def _tensors(tree, prefix="") -> dict:
    if torch.is_tensor(tree):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    return {k: v for key, sub in items for k, v in _tensors(sub, f"{prefix}/{key}").items()}


def test_a_table_on_slurm_survives_a_requeue_and_equals_the_local_run(on_cluster, tmp_path, monkeypatch, capsys):
    keys = [r.key for r in spec.unique_runs(spec.plan_runs(spec.load_tables(SPEC)["7"], [0, 1]))]
    local, out = str(tmp_path / "local"), str(tmp_path / "slurm")
    code, stdout, err = call("run_table", TABLE + ["--out-root", local, "--gpus", "cpu", "--runs-per-gpu", "2"], capsys)
    assert code == 0 and "4 finished now" in stdout, stdout + err

    # seed 1 of the IF4 row (trained with seed 0 in one job) stops after its first checkpoint
    paused = os.path.join(out, "configs", "smoke", "if4", "seed1")
    marker = str(tmp_path / "paused")
    monkeypatch.setenv("LTSAM_TEST_PAUSE", f"{paused}|1|{marker}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([PAUSE, ROOT, os.environ.get("PYTHONPATH", "")]))
    argv = TABLE + ["--out-root", out] + SLURM
    code, stdout, err = call("run_table", argv, capsys)
    assert code == 0 and "submitted 4 runs as 2 SLURM jobs" in stdout, stdout + err
    with open(os.path.join(paused, slurm.RECORD)) as f:
        job_id = json.load(f)["job_id"]
    assert "_" in job_id                    # the two jobs went in one array
    wait_until(lambda: os.path.exists(marker), "the paused run's first epoch", out)

    scontrol("requeue", job_id)             # what a preemption does: the job is stopped and queued again
    wait_until(lambda: job_state(job_id) == "PENDING", "the requeued job to be pending", out)
    code, stdout, err = call("run_table", argv, capsys)    # a later call: the state of each run
    assert code == 0 and "submitted" not in stdout, stdout + err
    assert f"  queued   configs/smoke/if4/seed1  job {job_id}" in stdout, stdout
    scontrol("update", f"JobId={job_id}", "StartTime=now")  # SLURM holds a requeued job 2 min; skip that

    code, stdout, err = call("run_table", argv + ["--wait", "--poll", "0.5"], capsys)
    assert code == 0 and "Table 7 on SLURM: 4 finished, 0 running, 0 queued, 0 failed" in stdout, stdout + err
    assert "Restarts=1" in scontrol("show", "job", job_id)
    with open(os.path.join(os.path.dirname(paused), "seed0", "train.log")) as f:   # the job's output
        log = f.read()
    attempts = log.split("\n=== ")[1:]
    assert len(attempts) == 2 and "--seeds 0 1" in attempts[0], log
    assert "--resume" in attempts[1] and "resuming" in attempts[1] and "after epoch 1 of 2" in attempts[1], log

    assert_same_runs(local, out, keys)
    tables = [call("make_tables", ["--spec", SPEC, "--table", "7", "--out-root", root, "--seeds", "0 1"], capsys)
              for root in (local, out)]
    assert tables[0][0] == tables[1][0] == 0
    assert tables[0][1].replace(local, "OUT") == tables[1][1].replace(out, "OUT")
