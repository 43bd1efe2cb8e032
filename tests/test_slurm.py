"""The slurm launcher (repro/slurm.py, run_table.py --launcher slurm) against a real one-node SLURM
that scripts/slurm_local.sh installs (Debian's slurm-wlm and munge) and starts for this module,
and stops however the tests end.

The integration test submits a small table, holds one job still after its first epoch's
checkpoint (tests/slurm/pause/sitecustomize.py), requeues it as a preemption would, and checks
that the job comes back, resumes from last.pt and ends with exactly the weights, metrics and
table of the same table run by the local launcher (float32 on one machine with one thread is
bit-reproducible, and the trainer's resume is exact)."""
import glob
import json
import os
import subprocess
import time

import pytest
import torch

from conftest import call_script, ROOT
from repro import slurm, spec

SPEC = os.path.join(ROOT, "tests", "data", "tables_slurm.yaml")
PAUSE = os.path.join(ROOT, "tests", "slurm", "pause")
CLUSTER_SCRIPT = os.path.join(ROOT, "scripts", "slurm_local.sh")
TABLE = ["--spec", SPEC, "--table", "7", "--seeds", "0 1", "--stack-seeds"]
SLURM = ["--launcher", "slurm", "--gpus-per-node", "0", "--cpus-per-gpu", "1", "--mem-per-gpu", "1", "--time", "20"]
WAIT_S = 600   # a guard against a hang only: the table takes well under a minute on a quiet machine


call = call_script


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
    """Poll `condition`; fail with the jobs' logs when a run of `folder` failed, or after WAIT_S."""
    deadline = time.time() + WAIT_S
    while not condition():
        failed = glob.glob(os.path.join(folder, "**", "FAILED"), recursive=True) or ended_unfinished(folder)
        if time.time() > deadline or failed:
            logs = [p for p in glob.glob(os.path.join(folder, "**", "*log*"), recursive=True) if os.path.isfile(p)]
            text = "".join(f"--- {p}\n{open(p, errors='replace').read()[-1500:]}\n" for p in logs)
            pytest.fail(f"{'a run failed' if failed else f'waited {WAIT_S} s'} waiting for {what}; logs:\n{text}")
        time.sleep(0.3)


def ended_unfinished(folder: str) -> list:
    """Run folders under `folder` whose SLURM job ended without finishing them."""
    records = {os.path.dirname(p): slurm.read_record(os.path.dirname(p))
               for p in glob.glob(os.path.join(folder, "**", slurm.RECORD), recursive=True)}
    queue = slurm.queue_states([r["job_id"] for r in records.values()])
    return [d for d, r in records.items() if queue.get(r["job_id"], ("GONE",))[0] not in slurm.QUEUED | slurm.RUNNING
            and not os.path.exists(os.path.join(d, "final.json"))]


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


# ----------------------------------------------------------------------------- without a cluster

def test_slurm_time_formats():
    assert [slurm.parse_time(t) for t in ("90", "30:30", "1:30:00", "2-3", "2-3:15", "1-00:00:00")] == \
        [90, 31, 90, 3060, 3075, 1440]
    for bad in ("-5", "0", "1:2:3:4", "x", "1-"):
        with pytest.raises(slurm.UserError, match="--time"):
            slurm.parse_time(bad)


def test_resources_per_dataset_and_over_nodes():
    """A 4-process iNaturalist run: 4 GPUs on one node, or 2 nodes of 2 with --gpus-per-node 2;
    CPUs and memory per GPU from the dataset's defaults unless given."""
    run = spec.Run("inat2018/la_sam/seed0", "configs/inat2018/la_sam.yaml", (), 0, 4)
    d = slurm.DEFAULTS["inat2018"]
    one = slurm.resources(run, "inat2018", slurm.Options())
    assert (one.nodes, one.procs_per_node, one.gpus, one.cpus_per_task, one.mem_gb, one.time_min) == \
        (1, 4, True, 4 * d.cpus_per_gpu, 4 * d.mem_per_gpu_gb, d.time_min)
    opts = slurm.Options(gpus_per_node=2, cpus_per_gpu=3, time_min=60, partition="gpu", extra=(("account", "lab"),))
    two = slurm.resources(run, "inat2018", opts)
    assert (two.nodes, two.procs_per_node, two.cpus_per_task, two.time_min) == (2, 2, 6, 60)
    p = two.parameters(opts)
    assert (p["nodes"], p["gpus_per_node"], p["ntasks_per_node"], p["partition"]) == (2, 2, 1, "gpu")
    assert p["additional_parameters"] == {"requeue": True, "account": "lab"} and p["signal_delay_s"] == slurm.SIGNAL_DELAY_S
    cpu = slurm.resources(run, "inat2018", slurm.Options(gpus_per_node=0))
    assert (cpu.nodes, cpu.procs_per_node, cpu.gpus) == (1, 4, False) and "gpus_per_node" not in cpu.parameters(slurm.Options())


def test_dry_run_shows_each_jobs_request(tmp_path, capsys):
    code, out, err = call("run_table", ["--table", "3", "--seeds", "0", "--rows", "Focal", "--launcher", "slurm",
                                        "--gpus-per-node", "2", "--dry-run", "--out-root", tmp_path], capsys)
    lines = [l.strip() for l in out.splitlines() if l.strip().startswith("SLURM job:")]
    assert code == 0 and len(lines) == 2, out + err
    assert lines[0].startswith("SLURM job: 1 node(s) x 2 GPUs, 18 CPUs, 64 GB, 1440 min")     # ImageNet-LT
    assert lines[1].startswith("SLURM job: 2 node(s) x 2 GPUs, 18 CPUs, 64 GB, 1440 min")     # iNaturalist
    assert "launch_multi_node.sh" in lines[1]


class FakeEnvironment:
    """What TableJob reads of submitit.JobEnvironment on a node."""
    job_id, hostname, hostnames, global_rank = "1234", "node-a", ["node-a", "node-b"], 0


def test_a_multi_node_job_runs_launch_multi_node_with_slurms_rendezvous(tmp_path, monkeypatch):
    run = spec.Run("imagenet_lt/la_sam/seed0", "configs/imagenet_lt/la_sam.yaml", ("train.epochs=3",), 0, 4)
    res = slurm.resources(run, "imagenet_lt", slurm.Options(gpus_per_node=2))
    job = slurm.TableJob([run], str(tmp_path), res, python="/venv/bin/python")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    cmd, env = job.command([run], False, FakeEnvironment())
    folder = os.path.join(str(tmp_path), run.key)
    assert cmd[:2] == ["bash", os.path.join(ROOT, "scripts", "launch_multi_node.sh")]
    assert cmd[2:] == ["--config", os.path.join(ROOT, run.config), "--out", folder, "--set", "seed=0",
                       "--set", "train.epochs=3"]
    assert env == {"NNODES": "2", "GPUS": "2", "RDZV_HOST": "node-a", "RDZV_PORT": str(20000 + 1234),
                   "JOB_ID": "lt-sam-1234-2", "PYTHON": "/venv/bin/python"}
    assert job.command([run], True, FakeEnvironment())[0][2:] == ["--resume", folder]
    # the script passes them to torchrun: every node the same rendezvous, train.py's arguments as given
    show = subprocess.run(["bash", cmd[1], "--resume", folder], env={**os.environ, **env, "PYTHON": "echo"},
                          capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    assert show.stdout.split() == ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "2",
                                   "--rdzv_backend", "c10d", "--rdzv_endpoint", "node-a:21234", "--rdzv_id",
                                   "lt-sam-1234-2", "--max-restarts", "0",
                                   os.path.join(ROOT, "scripts", "..", "train.py"), "--resume", folder]


def _checkpoint(folder, epoch):
    os.makedirs(folder, exist_ok=True)
    torch.save({"epoch": epoch}, os.path.join(folder, "last.pt"))


def test_a_requeued_job_resumes_together_or_alone(tmp_path):
    """The next attempt of a job of two seeds: both new -> trained together again; both stopped
    after one epoch -> resumed together; after different epochs -> one by one; done -> skipped."""
    out = str(tmp_path)
    runs = [spec.Run(f"row/seed{s}", "configs/smoke.yaml", (), s, 1) for s in (0, 1)]
    res = slurm.resources(runs[0], "synthetic", slurm.Options(gpus_per_node=0))
    job = slurm.TableJob(runs, out, res)
    assert job.plan() == [(runs, False)]
    for s in (0, 1):
        _checkpoint(os.path.join(out, "row", f"seed{s}"), 1)
    assert job.plan() == [(runs, True)]
    assert runner_command(job, runs, True)[2:] == ["--resume", os.path.join(out, "row", "seed0"),
                                                    os.path.join(out, "row", "seed1")]
    _checkpoint(os.path.join(out, "row", "seed1"), 2)
    assert job.plan() == [([runs[0]], True), ([runs[1]], True)]
    open(os.path.join(out, "row", "seed0", "final.json"), "w").close()
    assert job.plan() == [([runs[1]], True)]


def runner_command(job, part, resume):
    cmd, env = job.command(part, resume, FakeEnvironment())
    assert env == {"CUDA_VISIBLE_DEVICES": ""}       # a CPU-only job sees no GPU, as local CPU runs
    return cmd


def test_a_job_that_checkpoints_nothing_before_its_limit_is_not_requeued(tmp_path):
    """Requeued after progress (a new last.pt), failed without: a limit shorter than an epoch
    would otherwise requeue forever."""
    import submitit
    run = spec.Run("r/seed0", "configs/smoke.yaml", (), 0, 1)
    res = slurm.resources(run, "synthetic", slurm.Options(gpus_per_node=0, time_min=2))
    job = slurm.TableJob([run], str(tmp_path), res)
    job.started = time.time() - 0.9 * 120                  # near the limit: SLURM's warning came
    _checkpoint(str(tmp_path / "r" / "seed0"), 1)         # ... after a checkpoint of this attempt
    again = job.checkpoint()
    assert isinstance(again, submitit.helpers.DelayedSubmission) and again.function.job == [run]
    os.utime(tmp_path / "r" / "seed0" / "last.pt", (0, 0))   # the checkpoint predates the attempt
    assert job.checkpoint() is None
    assert "no epoch finished within --time 2 min" in (tmp_path / "r" / "seed0" / "FAILED").read_text()
    job.started = time.time()                             # a preemption early in the attempt: requeued
    assert job.checkpoint() is not None


def one_line(code, out, err, *fragments):
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), (code, out, err)
    for f in fragments:
        assert f in err, (f, err)


def test_slurm_bad_inputs_are_one_line(tmp_path, monkeypatch, capsys):
    """Refused before anything is submitted: one line, exit 2."""
    out = str(tmp_path / "runs")
    base = TABLE + ["--out-root", out, "--launcher", "slurm"]
    monkeypatch.setenv("PATH", str(tmp_path))                # no SLURM commands
    one_line(*call("run_table", base, capsys), "sbatch is not on PATH", "--launcher local")
    # a time limit shorter than one epoch: from the paper's Table 1 (iNaturalist Focal-SAM: 17.8 min
    # on an RTX 3090, /3 for a faster GPU), or from the epochs a run folder logged
    one_line(*call("run_table", ["--table", "3", "--seeds", "0", "--rows", "^LA[+]Focal-SAM$", "--out-root", out,
                                 "--launcher", "slurm", "--time", "5"], capsys),
             "--time 5 min leaves 3.5 min", "inat2018/la_focal_sam/seed0", "17.8 min per focal_sam epoch")
    folder = tmp_path / "runs" / "configs" / "smoke" / "if4" / "seed0"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "epoch_seconds": 500.0}) + "\n")
    one_line(*call("run_table", base + ["--time", "9"], capsys), "its epochs took up to 8.3 min")
    for argv, msg in ((["--time", "1:2:3:4"], "--time '1:2:3:4'"), (["--gpus", "0"], "with --launcher slurm give --gpus-per-node"),
                      (["--sbatch", "array=0-3"], "give KEY=VALUE of an sbatch option (not array"),
                      (["--gpus-per-node", "x"], "argument --gpus-per-node: expected an integer >= 0, got 'x'")):
        one_line(*call("run_table", base + argv, capsys), msg)
    one_line(*call("run_table", TABLE + ["--out-root", out, "--wait"], capsys), "--wait is an option of --launcher slurm")
    one_line(*call("run_table", TABLE + ["--bogus"], capsys), "unrecognized arguments: --bogus")
    one_line(*call("run_table", ["--table", "3", "--launcher", "slurm", "--gpus-per-node", "3"], capsys),
             "2 processes do not split over nodes of --gpus-per-node 3")
    assert not os.path.exists(os.path.join(out, "slurm"))


def test_slurm_refusals_from_the_cluster_are_one_line(on_cluster, tmp_path, capsys):
    out = str(tmp_path / "runs")
    base = TABLE + ["--out-root", out, "--launcher", "slurm"]
    one_line(*call("run_table", base + ["--partition", "nope"], capsys),
             "--partition nope: SLURM has no such partition (partitions: debug)")
    one_line(*call("run_table", base + ["--gpus-per-node", "1"], capsys),   # a CPU-only cluster
             "sbatch refused the jobs: sbatch: error: Invalid generic resource (gres) specification")
    assert glob.glob(os.path.join(out, "slurm", "*.pkl")) == [] and not glob.glob(os.path.join(out, "**", slurm.RECORD),
                                                                                  recursive=True)


def test_wait_reports_a_job_that_can_never_start_instead_of_waiting(on_cluster, tmp_path, capsys):
    """More CPUs than the node has: SLURM keeps the job PENDING (PartitionConfig) for ever. --wait
    says so and ends, with what to do (it once waited until CI's limit: the test cluster had been
    given 1 CPU by `nproc`, which answers OMP_NUM_THREADS)."""
    out = str(tmp_path / "runs")
    too_many = [a if a != "1" or SLURM[i - 1] != "--cpus-per-gpu" else str(4 * os.cpu_count()) for i, a in enumerate(SLURM)]
    code, stdout, err = call("run_table", ["--spec", SPEC, "--table", "8", "--seeds", "0", "--out-root", out] + too_many
                             + ["--wait", "--poll", "0.5"], capsys)
    assert code == 1 and "1 never to start" in stdout and "PartitionConfig" in stdout, stdout + err
    job = json.load(open(os.path.join(out, "configs", "smoke", "ddp", "seed0", "slurm.json")))["job_id"]
    assert f"scancel {job.split('_')[0]}" in stdout, stdout
    subprocess.run(["scancel", job.split("_")[0]], check=True)


def test_a_two_process_run_is_one_job_with_the_rendezvous_from_slurm(on_cluster, tmp_path, capsys):
    """A run of 2 processes (as ImageNet-LT's 2 GPUs, here on CPUs with gloo): one job whose task
    starts launch_multi_node.sh with the rendezvous on the job's first node."""
    out = str(tmp_path / "runs")
    code, stdout, err = call("run_table", ["--spec", SPEC, "--table", "8", "--seeds", "0", "--out-root", out] + SLURM
                             + ["--wait", "--poll", "0.5"], capsys)
    assert code == 0 and "1 finished, 0 running, 0 queued, 0 failed" in stdout, stdout + err
    folder = os.path.join(out, "configs", "smoke", "ddp", "seed0")
    with open(os.path.join(folder, "final.json")) as f:
        assert json.load(f)["world_size"] == 2
    with open(os.path.join(folder, "train.log")) as f:
        log = f.read()
    assert "scripts/launch_multi_node.sh --config" in log and "final: top1" in log, log
