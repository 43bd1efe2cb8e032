"""DistributedDataParallel under torchrun on CPU (gloo): exact equality with one process on the
same global batch, the per-replica mode against its own reference, BN-frozen passes, the
end-to-end two-process run, and a rank killed mid-run."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from ddp_cases import CASES, COUNTS, NORM_CASES, batches, drw_weights_loss, image_batches, make_optimizer
from optim.class_weights import focal_sam_weights, imbsam_weights
from reference import (ConvBN, ConvGN, MLP, ccsam_grads, per_sample_ce, sgd_update, sum_over_shards,
                       weighted_sam_grads)
from reference_sam_family import gsam_grads

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def torchrun(*args, nproc=2, extra=(), timeout=600, **popen):
    """torchrun in its own process group: on a timeout the group goes (torchrun and its workers),
    so no worker is left waiting for a peer after the test failed."""
    cmd = TORCHRUN + ["--nproc_per_node", str(nproc), "--standalone", *extra, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun {' '.join(args)} did not end within {timeout} s; its output:\n{(out + err)[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "weights.pt"
    proc = torchrun("tests/ddp_worker.py", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def one_process(name, mode="global"):
    torch.manual_seed(0)
    model = MLP(head="linear").double()
    opt = make_optimizer(name, model, mode)
    for x, y in batches():
        opt.step(model, x, y, per_sample_ce)
    return {n: p.detach() for n, p in model.named_parameters()}


WEIGHTS = {"sam": (torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)),
           "focal_sam": focal_sam_weights(COUNTS, 2.0, 0.8), "imbsam": imbsam_weights(COUNTS, 100)}
WEIGHTS["focal_sam_batched"] = WEIGHTS["focal_sam"]


def local_reference(name, world=2):
    """Per-replica perturbation, written out: shard r perturbs along its own gradient."""
    torch.manual_seed(0)
    model = MLP(head="linear").double()
    params, bufs = {n: p.detach().clone() for n, p in model.named_parameters()}, {}
    for x, y in batches():
        if name == "cc_sam":
            g = sum_over_shards(ccsam_grads, x, y, world, model=model, params=params, counts=COUNTS, rho=0.5,
                                ratio=0.3, rule="plain")
        elif name == "gsam":     # each replica corrects its own gradients (the official per-worker GSAM)
            g = sum_over_shards(gsam_grads, x, y, world, model=model, params=params, a=WEIGHTS["sam"][0],
                                c=WEIGHTS["sam"][1], rho=0.3, alpha=0.5)
        else:
            a, c = WEIGHTS[name]
            g = sum_over_shards(weighted_sam_grads, x, y, world, model=model, params=params, a=a, c=c, rho=0.3)
        params = sgd_update(params, g, bufs, lr=0.1, momentum=0.9, weight_decay=5e-4)
    return params


@pytest.mark.parametrize("name", [n for n, m in CASES if m == "global"])
def test_global_mode_equals_one_process(ddp_results, name):
    ddp, single = ddp_results[f"{name}/global"], one_process(name.removesuffix("_batched"))  # batched = 2 passes
    for n in single:
        torch.testing.assert_close(ddp[n], single[n], rtol=0, atol=1e-15, msg=f"{name}: {n}")   # float64 rounding


@pytest.mark.parametrize("name", [n for n, m in CASES if m == "local"])
def test_local_mode_differs_and_matches_its_reference(ddp_results, name):
    ddp, single, ref = ddp_results[f"{name}/local"], one_process(name), local_reference(name)
    assert max((ddp[n] - single[n]).abs().max().item() for n in single) > 1e-6
    for n in ref:
        torch.testing.assert_close(ddp[n], ref[n], rtol=0, atol=1e-10, msg=f"{name}: {n}")


def test_drw_weights_reduction_under_ddp_equals_one_process(ddp_results):
    torch.manual_seed(0)
    model = MLP(head="linear").double()
    opt, loss = make_optimizer("focal_sam", model, "global"), drw_weights_loss()
    for x, y in batches():
        opt.step(model, x, y, loss)
    for n, p in model.named_parameters():
        torch.testing.assert_close(ddp_results["drw_weights"][n], p.detach(), rtol=0, atol=1e-10, msg=n)


def one_process_norm(norm, name):
    torch.manual_seed(0)
    model = (ConvGN if norm == "groupnorm" else ConvBN)().double()
    opt = make_optimizer(name, model, "global")
    for x, y in image_batches():
        opt.step(model, x, y, per_sample_ce)
    return {n: p.detach() for n, p in model.named_parameters()}


def max_difference(a, b):
    return max((a[n] - b[n]).abs().max().item() for n in b)


@pytest.mark.parametrize("name", [n for norm, n in NORM_CASES if norm == "groupnorm"])
def test_groupnorm_two_processes_equal_one_to_float64_rounding(ddp_results, name):
    """What the README claims: with a per-sample normalisation the gradient exchange makes two
    processes compute what one computes on the whole batch, to float64 rounding."""
    assert max_difference(ddp_results[f"groupnorm/{name}"], one_process_norm("groupnorm", name)) < 1e-15


def test_batchnorm_two_processes_differ_from_one(ddp_results):
    """What the README says is not equal: BatchNorm normalises over each rank's share of the
    batch (as DataParallel did in the paper's runs), so the weights differ from one process."""
    assert max_difference(ddp_results["batchnorm/sam"], one_process_norm("batchnorm", "sam")) > 1e-4


def test_bn_frozen_perturbed_pass_under_ddp(ddp_results):
    r = ddp_results["bn_freeze"]
    model = ConvBN().double()
    model.load_state_dict(r["start"])
    model(r["x0"])                        # rank 0's clean forward only
    for k, v in model.state_dict().items():
        if "running" in k or "num_batches" in k:
            assert torch.equal(r["after"][k], v), k


def test_two_process_run_writes_one_set_of_outputs(tiny_config, tmp_path):
    out = tmp_path / "ddp"
    cfg = tiny_config({"train": {"batch_size": 16, "eval_batch_size": 10}})   # 4 x 6 test images: uneven shards
    proc = torchrun("train.py", "--config", cfg, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final: top1") == 1 and proc.stdout.count("epoch 3/3") == 1
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [0, 1, 2]
    assert len([p for p in (out / "tb").iterdir() if p.name.startswith("events")]) == 1
    final = json.loads((out / "final.json").read_text())
    assert final["world_size"] == 2 and sum(final["group_sizes"].values()) == 4
    # The gathered two-process evaluation equals one process evaluating the same checkpoint.
    proc = subprocess.run([sys.executable, "eval.py", "--checkpoint", str(out / "last.pt"), "--out",
                           str(tmp_path / "e.json")], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["num_test"] == final["num_test"] == 24
    for key in ("top1", "accuracy", "head", "medium", "tail", "per_class_acc"):
        assert ev[key] == final[key], key
    assert ev["ece"] == pytest.approx(final["ece"], abs=1e-4)


def _kill_a_rank_after_epoch(tiny_config, tmp_path, restarts):
    """torchrun of tests/ddp_killed_rank.py: rank 1 dies by SIGKILL as it starts epoch 3 of the
    first attempt, whatever the machine's speed."""
    out = tmp_path / "run"
    cfg = tiny_config({"data": {"max_per_class": 60}, "train": {"epochs": 8}})
    proc = torchrun(os.path.join("tests", "ddp_killed_rank.py"), "--config", cfg, "--out", str(out),
                    extra=("--max-restarts", str(restarts)), timeout=600)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] >= 2, proc.stderr[-3000:]
    return proc.returncode, proc.stdout, proc.stderr, out


def test_killed_rank_with_restart_resumes_and_finishes(tiny_config, tmp_path):
    rc, stdout, stderr, out = _kill_a_rank_after_epoch(tiny_config, tmp_path, restarts=1)
    assert rc == 0, stderr[-3000:]
    assert "resuming" in stdout
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == list(range(8))      # every epoch once: nothing lost, nothing twice
    assert json.loads((out / "final.json").read_text())["epochs"] == 8


def test_killed_rank_without_restart_stops_with_a_clear_message(tiny_config, tmp_path):
    rc, stdout, stderr, out = _kill_a_rank_after_epoch(tiny_config, tmp_path, restarts=0)
    assert rc != 0
    assert "--resume" in stderr and ("lost contact with another rank" in stderr or "stopped by SIGTERM" in stderr)
    assert (out / "last.pt").exists() and not (out / "final.json").exists()


@pytest.mark.parametrize("error, lost", [
    (RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1"), True),
    (RuntimeError("[gloo] Connection reset by peer"), True),
    (RuntimeError("Tensors must be CUDA and dense; gloo does not support this op"), False),
    (RuntimeError("NCCL error: invalid usage (run with NCCL_DEBUG=WARN for details)"), False),
    (RuntimeError("the data loader timed out after 60 s"), False),
    (ValueError("mean of an empty NCCL tensor"), False),
])
def test_only_peer_loss_counts_as_a_communication_failure(error, lost):
    from engine.distributed import is_communication_failure
    assert is_communication_failure(error) is lost
