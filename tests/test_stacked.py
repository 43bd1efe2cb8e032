"""N models trained in one process as one StackedModels equal N models trained alone (issue 17).

The reference is the plain path: each model with its own optimizer, its own batches. float64
throughout, so the only difference is the order of floating-point sums (vmap runs the members'
convolutions as one grouped convolution): tolerance 1e-9 relative to each tensor's scale.
"""
import copy

import pytest
import torch
import torch.nn as nn

from models.resnet_cifar import CifarResNet
from models.stacked import StackedModels
from optim import SAM, SGD, FocalSAM, ImbSAM
from optim.base import member_norms

COUNTS = [40, 20, 10, 5]     # ImbSAM eta=10: classes 2, 3 are the tail
TOL = 1e-9


def make_models(n):
    models = []
    for k in range(n):
        torch.manual_seed(100 + k)
        models.append(CifarResNet(8, len(COUNTS), "linear").double())
    return models


def batches(n_models, steps, b=6, tail_free=()):
    """Per step: images (N, b, 3, 8, 8), targets (N, b). Members in `tail_free` get no tail sample
    in step 0 (ImbSAM then skips their perturbed pass)."""
    g = torch.Generator().manual_seed(7)
    out = []
    for s in range(steps):
        x = torch.randn(n_models, b, 3, 8, 8, generator=g, dtype=torch.float64)
        y = torch.randint(0, len(COUNTS), (n_models, b), generator=g)
        for k in tail_free:
            if s == 0:
                y[k] = torch.randint(0, 2, (b,), generator=g)
        out.append((x, y))
    return out


OPTIMIZERS = {
    "sgd": lambda p, **kw: SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, class_counts=COUNTS, **kw),
    "sam": lambda p, **kw: SAM(p, lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1, class_counts=COUNTS, **kw),
    "imbsam": lambda p, **kw: ImbSAM(p, lr=0.05, momentum=0.9, rho=0.1, eta=10, class_counts=COUNTS, **kw),
    "focal_sam": lambda p, **kw: FocalSAM(p, lr=0.05, momentum=0.9, weight_decay=5e-4, rho=0.1, gamma=2.0,
                                          lam=0.7, class_counts=COUNTS, **kw),
}


def close(a, b):
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    return float((a.double() - b.double()).abs().max()) <= TOL * scale if a.numel() else True


@pytest.mark.parametrize("name,extra", [("sgd", {}), ("sam", {}), ("imbsam", {}), ("focal_sam", {}),
                                        ("focal_sam", {"clean_backward": "batched"}),
                                        ("sam", {"bn_mode": "freeze"}), ("imbsam", {"bn_mode": "freeze"}),
                                        ("sam", {"exclude_bn_bias": True})])
def test_stacked_steps_equal_separate_runs(single_thread, name, extra):
    n, steps = 3, 3
    alone = make_models(n)
    stacked = StackedModels(copy.deepcopy(alone))
    data = batches(n, steps, tail_free=(1,))
    crit = nn.CrossEntropyLoss(reduction="none")
    opts = [OPTIMIZERS[name](m.parameters(), **extra) for m in alone]
    sopt = OPTIMIZERS[name](stacked.parameters(), **extra)
    for x, y in data:
        ref = [opt.step(m, x[k], y[k], crit) for k, (m, opt) in enumerate(zip(alone, opts))]
        loss, logits = sopt.step(stacked, x, y, crit)
        assert loss.shape == (n,) and logits.shape == (n, x.shape[1], len(COUNTS))
        for k, (l_ref, z_ref) in enumerate(ref):
            assert close(loss[k], l_ref) and close(logits[k], z_ref)
    for k, m in enumerate(alone):
        mine = stacked.member_state_dict(k)
        for key, t in m.state_dict().items():      # weights and BN running statistics
            assert close(mine[key], t), (name, k, key)
        momentum = [sopt.base_optimizer.state[p]["momentum_buffer"][k] for p in stacked.parameters()]
        for mb, p in zip(momentum, m.parameters()):
            assert close(mb, opts[k].base_optimizer.state[p]["momentum_buffer"])


def test_imbsam_member_without_tail_keeps_its_bn_statistics(single_thread):
    """Member 1 has no tail sample in the batch: alone, ImbSAM skips its perturbed pass, so its BN
    statistics see one forward; stacked, it must not see the second one either."""
    alone = make_models(2)
    stacked = StackedModels(copy.deepcopy(alone))
    (x, y), = batches(2, 1, tail_free=(1,))
    assert not bool((y[1] >= 2).any()) and bool((y[0] >= 2).any())
    crit = nn.CrossEntropyLoss(reduction="none")
    sopt = OPTIMIZERS["imbsam"](stacked.parameters())
    sopt.step(stacked, x, y, crit)
    opt1 = OPTIMIZERS["imbsam"](alone[1].parameters())
    opt1.step(alone[1], x[1], y[1], crit)
    assert int(stacked.member_state_dict(1)["bn1.num_batches_tracked"]) == 1
    assert int(stacked.member_state_dict(0)["bn1.num_batches_tracked"]) == 2
    assert close(stacked.member_state_dict(1)["bn1.running_mean"], alone[1].bn1.running_mean)


def test_member_norms_is_each_members_total_norm():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)]
    for k in range(3):
        direct = torch.sqrt(sum((t[k] ** 2).sum() for t in tensors))
        assert abs(float(member_norms(tensors)[k] - direct)) < 1e-12


def test_member_state_round_trip_and_bad_inputs():
    models = make_models(2)
    stacked = StackedModels(models)
    assert stacked.members == 2
    assert [n for n, _ in stacked.named_parameters()] == [f"stack.{n}" for n, _ in models[0].named_parameters()]
    other = CifarResNet(8, len(COUNTS), "linear").double()
    stacked.load_member_state_dict(1, other.state_dict())
    for key, t in other.state_dict().items():
        assert torch.equal(stacked.member_state_dict(1)[key], t)
        assert torch.equal(stacked.member_state_dict(0)[key], models[0].state_dict()[key])
    with pytest.raises(RuntimeError, match="size mismatch"):
        stacked.load_member_state_dict(0, CifarResNet(8, 3, "linear").double().state_dict())
    with pytest.raises(ValueError, match="architecture"):
        StackedModels([models[0], CifarResNet(20, len(COUNTS), "linear").double()])
    with pytest.raises(ValueError, match="one batch per member"):
        stacked(torch.zeros(3, 2, 3, 8, 8, dtype=torch.float64))
    assert stacked.forward_shared(torch.zeros(2, 3, 8, 8, dtype=torch.float64)).shape == (2, 2, len(COUNTS))
    with pytest.raises(ValueError, match="fp16"):
        SAM(stacked.parameters(), lr=0.1, amp="fp16").step(
            stacked, torch.zeros(2, 2, 3, 8, 8, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.long),
            nn.CrossEntropyLoss(reduction="none"))
