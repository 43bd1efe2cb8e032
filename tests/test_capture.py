"""train.capture=step: the whole optimizer step replayed from a CUDA graph equals the eager step.

On the CPU, a stand-in recorder checks the plumbing: it 'records' by running the step on a
snapshot that it then puts back (so recording trains nothing, as with a CUDA graph) and 'replays'
by running the recorded closure again on the static input tensors. If the static inputs were
not refreshed, a batch trained twice or skipped, the last partial batch or a new epoch's lr
mishandled, the weights would differ from the eager run's. On a CUDA device the real graph is
compared with eager (skipped without one).
"""
import pytest
import torch
import torch.nn as nn

from conftest import NoSideStream, stand_in_record
from engine.capture import CapturedStep, why_not_capturable
from models.resnet_cifar import CifarResNet
from optim import SAM, SGD, FocalSAM, ImbSAM

COUNTS = [30, 12, 5]


def batches(device, steps=7, b=8, last=3):
    """`steps` full batches and a partial one of `last`."""
    g = torch.Generator().manual_seed(0)
    out = [(torch.randn(b, 3, 8, 8, generator=g), torch.randint(0, 3, (b,), generator=g)) for _ in range(steps)]
    out.append((torch.randn(last, 3, 8, 8, generator=g), torch.randint(0, 3, (last,), generator=g)))
    return [(x.to(device), y.to(device)) for x, y in out]


MAKERS = {
    "sgd": lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, class_counts=COUNTS),
    "sam": lambda p: SAM(p, lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1, class_counts=COUNTS),
    "focal_sam": lambda p: FocalSAM(p, lr=0.05, momentum=0.9, rho=0.1, gamma=2.0, lam=0.8, class_counts=COUNTS),
}


def train(name, device, captured, epochs=2, fake=False):
    torch.manual_seed(3)
    model = CifarResNet(8, len(COUNTS), "linear").to(device)
    opt = MAKERS[name](model.parameters())
    crit = nn.CrossEntropyLoss(reduction="none")
    stepper = opt
    if captured:
        extra = dict(record=stand_in_record, side_stream=NoSideStream) if fake else {}
        stepper = CapturedStep(opt, warmup=2, **extra)
    losses = []
    for epoch in range(epochs):
        for g in opt.param_groups:           # a new epoch's lr and rho, as EpochValues sets them
            g["lr"], g["rho"] = 0.05 / (1 + epoch), 0.1 * (1 + epoch)
        if captured:
            stepper.reset()
        for x, y in batches(device):
            loss, logits = stepper.step(model, x, y, crit)
            losses.append(float(loss))
    return model.state_dict(), opt.state_dict(), losses, stepper


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_captured_step_plumbing_equals_eager(single_thread, name):
    """Stand-in graph on the CPU: float32, bit for bit (the same kernels run in the same order)."""
    ref_model, ref_opt, ref_losses, _ = train(name, "cpu", captured=False)
    model, opt, losses, stepper = train(name, "cpu", captured=True, fake=True)
    assert stepper.captures == 2            # one graph per epoch, the partial batches eager
    assert losses == ref_losses
    for k, t in ref_model.items():
        assert torch.equal(model[k], t), k
    for i, st in ref_opt["base"]["state"].items():
        assert torch.equal(opt["base"]["state"][i]["momentum_buffer"], st["momentum_buffer"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_cuda_graph_step_equals_eager(name):
    """The real CUDA graph; tolerance 1e-5 relative (cuDNN may pick other kernels on replay)."""
    ref_model, ref_opt, ref_losses, _ = train(name, "cuda", captured=False)
    model, opt, losses, stepper = train(name, "cuda", captured=True)
    assert stepper.captures == 2
    assert losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
    for k, t in ref_model.items():
        torch.testing.assert_close(model[k], t, rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_of_seeds_trained_together_equals_eager():
    """Seeds trained together (one StackedModels) under the real CUDA graph: the captured Focal-SAM
    step of the stacked members equals their eager step, as train.py --seeds with train.capture=step
    runs it; tolerance as above."""
    from models.stacked import StackedModels

    def run(captured):
        torch.manual_seed(3)
        model = StackedModels([CifarResNet(8, len(COUNTS), "linear") for _ in range(3)]).cuda()
        opt = MAKERS["focal_sam"](model.parameters())
        stepper = CapturedStep(opt, warmup=2) if captured else opt
        crit = nn.CrossEntropyLoss(reduction="none")
        g = torch.Generator().manual_seed(1)
        for _ in range(6):
            x, y = torch.randn(3, 8, 3, 8, 8, generator=g), torch.randint(0, 3, (3, 8), generator=g)
            stepper.step(model, x.cuda(), y.cuda(), crit)
        return model.state_dict(), stepper
    (ref, _), (got, stepper) = run(False), run(True)
    assert stepper.captures == 1
    for k, t in ref.items():
        torch.testing.assert_close(got[k], t, rtol=1e-5, atol=1e-6, msg=k)


def test_what_cannot_be_captured():
    p = [nn.Parameter(torch.zeros(2))]
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert "CUDA device" in why_not_capturable(SAM(p, lr=0.1), "none", cpu, False)
    assert why_not_capturable(SAM(p, lr=0.1), "none", cuda, False) == ""
    assert why_not_capturable(FocalSAM(p, lr=0.1, class_counts=COUNTS), "bf16", cuda, False) == ""
    assert "ImbSAM" in why_not_capturable(ImbSAM(p, lr=0.1, class_counts=COUNTS, eta=10), "none", cuda, False)
    assert "fp16" in why_not_capturable(SAM(p, lr=0.1), "fp16", cuda, False)
    assert "torchrun" in why_not_capturable(SAM(p, lr=0.1), "none", cuda, True)


def test_capture_option_refused_on_cpu_in_one_line(tiny_config):
    from conftest import assert_one_line_error, run_cli
    proc = run_cli("train.py", "--config", tiny_config(), "--set", "train.capture=step", "--set", "train.device=cpu",
                   "--out", str(__import__("tempfile").mkdtemp()))
    assert_one_line_error(proc, "train.capture", "CUDA device", "train.capture=none")
