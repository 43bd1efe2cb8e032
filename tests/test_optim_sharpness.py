"""SGD, SAM, ImbSAM and Focal-SAM against a direct float64 autograd computation of the formula
(tests/reference.py), with and without BatchNorm, momentum 0 and 0.9, weight decay on."""
import pytest
import torch

from optim import SAM, SGD, FocalSAM, ImbSAM
from optim.class_weights import focal_sam_weights, imbsam_weights
from reference import MLP, ConvBN, params_of, per_sample_ce, reference_copy, sgd_update, weighted_sam_reference

COUNTS = [400, 120, 30, 8]
LR, WD, RHO = 0.1, 5e-4, 0.3


def batches(model_kind, n_steps=3, b=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        x = torch.randn((b, 6) if model_kind == "mlp" else (b, 3, 5, 5), generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (b,), generator=g)
        out.append((x, y))
    return out


def make_model(kind, seed=0):
    torch.manual_seed(seed)
    return (MLP() if kind == "mlp" else ConvBN()).double()


def run_and_compare(kind, momentum, make_opt, a, c, data=None, device="cpu"):
    """`device`: where the optimizer runs (the float64 reference runs on the CPU)."""
    model = make_model(kind)
    ref_model, params, bufs = reference_copy(model), params_of(model), {}
    model.to(device)
    opt = make_opt(model)
    for x, y in data or batches(kind):
        opt.step(model, x.to(device), y.to(device), per_sample_ce)
        params = weighted_sam_reference(ref_model, params, bufs, x, y, a, c, RHO, LR, momentum, WD)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach().cpu(), params[n], rtol=0, atol=1e-10, msg=n)
    return model


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@CUDA
@pytest.mark.parametrize("name", ["sam", "imbsam", "focal_sam"])
def test_steps_on_cuda_equal_the_float64_reference(name):
    """The same float64 check with the optimizer on the GPU (cuDNN's convolutions, device-side
    class weights): every pass of the update, exactly as on the CPU."""
    if name == "sam":
        a, c = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        make = lambda m: SAM(m.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO)
    elif name == "imbsam":
        a, c = imbsam_weights(COUNTS, eta=100)
        make = lambda m: ImbSAM(m.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO, eta=100,
                                class_counts=COUNTS)
    else:
        a, c = focal_sam_weights(COUNTS, 3.0, 0.8)
        make = lambda m: FocalSAM(m.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO, gamma=3.0,
                                  lam=0.8, class_counts=COUNTS)
    run_and_compare("convbn", 0.9, make, a, c, device="cuda")


@CUDA
def test_bf16_focal_sam_step_on_cuda_is_close_to_fp32():
    """bf16 autocast keeps 8 bits of mantissa: one step's update stays within 10% of fp32's (in
    norm), and the weights stay float32."""
    deltas = []
    for amp in ("none", "bf16"):
        model = make_model("convbn").float().cuda()
        before = [p.detach().clone() for p in model.parameters()]
        opt = FocalSAM(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO, gamma=3.0, lam=0.8,
                       class_counts=COUNTS, amp=amp)
        x, y = batches("convbn")[0]
        opt.step(model, x.float().cuda(), y.cuda(), per_sample_ce)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        deltas.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)]))
    fp32, bf16 = deltas
    assert float((bf16 - fp32).norm() / fp32.norm()) < 0.1


@pytest.mark.parametrize("kind", ["mlp", "convbn"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sam_is_a0_c1(kind, momentum):
    a, c = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    run_and_compare(kind, momentum, lambda m: SAM(m.parameters(), lr=LR, momentum=momentum, weight_decay=WD, rho=RHO),
                    a, c)


@pytest.mark.parametrize("kind", ["mlp", "convbn"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_imbsam_head_tail_masks(kind, momentum):
    a, c = imbsam_weights(COUNTS, eta=100)
    assert a.tolist() == [1, 1, 0, 0] and c.tolist() == [0, 0, 1, 1]   # tail: n_k <= 100
    run_and_compare(kind, momentum, lambda m: ImbSAM(m.parameters(), lr=LR, momentum=momentum, weight_decay=WD,
                                                     rho=RHO, eta=100, class_counts=COUNTS), a, c)


def test_imbsam_batch_without_tail_is_a_finite_sgd_step():
    a, c = imbsam_weights(COUNTS, eta=100)
    x = torch.randn(8, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])           # head classes only: u = 0
    model = run_and_compare("mlp", 0.9, lambda m: ImbSAM(m.parameters(), lr=LR, momentum=0.9, weight_decay=WD,
                                                         rho=RHO, eta=100, class_counts=COUNTS), a, c, data=[(x, y)])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    sgd_model = run_and_compare("mlp", 0.9, lambda m: SGD(m.parameters(), lr=LR, momentum=0.9, weight_decay=WD),
                                torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), data=[(x, y)])
    for p, q in zip(model.parameters(), sgd_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def imbsam_code_step(model, bufs, x, y, tail_classes, rho, factor, lr, momentum, wd):
    """One step of ImbSAM's public code (cool-xuan/Imbalanced_SAM, utils/trainval.py
    `forbackward` and imbsam.py), written out on `model` itself with plain autograd: the head loss
    sum / b at w; the tail loss sum / b times `factor` at w, whose gradient g gives
    eps = rho g / ||g||; the same tail loss at w + eps; the two gradients summed, w restored, SGD."""
    params = list(model.parameters())
    b = len(y)
    tail = torch.isin(y, torch.tensor(tail_classes))
    losses = per_sample_ce(model(x), y)
    g_head = torch.autograd.grad(losses[~tail].sum() / b, params, retain_graph=True)
    g_tail = torch.autograd.grad(losses[tail].sum() / b * factor, params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in g_tail))
    eps = [rho * g / (norm + 1e-12) for g in g_tail]
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.add_(e)
    g_moved = torch.autograd.grad(per_sample_ce(model(x), y)[tail].sum() / b * factor, params)
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
    names = [n for n, _ in model.named_parameters()]
    grads = {n: gh + gm for n, gh, gm in zip(names, g_head, g_moved)}
    new = sgd_update({n: p.detach() for n, p in model.named_parameters()}, grads, bufs, lr, momentum, wd)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(new[n])


@pytest.mark.parametrize("factor", [1.0, 2.0])
def test_imbsam_tail_weight_equals_the_public_code(factor):
    """optim.tail_weight = 2 is ImbSAM's public code, 1 its paper: three float64 steps against the
    code's three passes written out (imbsam_code_step), and the two factors train differently."""
    model, code_model, bufs = make_model("mlp"), make_model("mlp"), {}
    opt = ImbSAM(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO, eta=100,
                 tail_weight=factor, class_counts=COUNTS)
    for x, y in batches("mlp"):
        y[0] = 3                                       # a tail sample in every batch
        opt.step(model, x, y, per_sample_ce)
        imbsam_code_step(code_model, bufs, x, y, [2, 3], RHO, factor, LR, 0.9, WD)
    for p, q in zip(model.parameters(), code_model.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)
    other, bufs = make_model("mlp"), {}
    for x, y in batches("mlp"):
        y[0] = 3
        imbsam_code_step(other, bufs, x, y, [2, 3], RHO, 3.0 - factor, LR, 0.9, WD)
    assert max(float((p - q).detach().abs().max()) for p, q in zip(model.parameters(), other.parameters())) > 1e-4


@pytest.mark.parametrize("kind", ["mlp", "convbn"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_focal_sam(kind, momentum):
    a, c = focal_sam_weights(COUNTS, gamma=3.0, lam=0.8)
    pi = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    torch.testing.assert_close(c, 0.8 * (1 - pi) ** 3.0)
    run_and_compare(kind, momentum, lambda m: FocalSAM(m.parameters(), lr=LR, momentum=momentum, weight_decay=WD,
                                                       rho=RHO, gamma=3.0, lam=0.8, class_counts=COUNTS), a, c)


def test_focal_sam_with_negative_clean_weight():
    a, c = focal_sam_weights(COUNTS, gamma=2.0, lam=1.1)   # iNaturalist's lam 1.1: a_k < 0 for some k
    assert (a < 0).any()
    run_and_compare("mlp", 0.9, lambda m: FocalSAM(m.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO,
                                                   gamma=2.0, lam=1.1, class_counts=COUNTS), a, c)


@pytest.mark.parametrize("kind", ["mlp", "convbn"])
@pytest.mark.parametrize("method", ["focal_sam", "imbsam"])
def test_batched_clean_backward_equals_the_formula(kind, method):
    """One batched backward for grad L_a(w) and u: the float64 reference at atol 1e-10 (the
    two-pass path's tolerance), including ImbSAM's batch without a tail sample (one pass)."""
    data = batches(kind) + [(batches(kind, 1, seed=5)[0][0], torch.tensor([0, 1] * 5))]
    if method == "focal_sam":
        a, c = focal_sam_weights(COUNTS, gamma=3.0, lam=0.8)
        make = lambda m: FocalSAM(m.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO, gamma=3.0, lam=0.8,
                                  class_counts=COUNTS, clean_backward="batched")
    else:
        a, c = imbsam_weights(COUNTS, eta=100)
        make = lambda m: ImbSAM(m.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO, eta=100,
                                class_counts=COUNTS, clean_backward="batched")
    run_and_compare(kind, 0.9, make, a, c, data=data)


def test_batched_clean_backward_under_fp16_scaler_equals_two_passes():
    """fp16 autocast + GradScaler (float32 model, CPU autocast): the batched and the two-pass
    steps agree to 1e-5 after three steps and leave the scaler in the same state."""
    if not torch.amp.is_autocast_available("cpu"):
        pytest.skip("no CPU autocast in this torch build")
    out = []
    for mode in ("separate", "batched"):
        model = make_model("convbn").float()
        opt = FocalSAM(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO, gamma=3.0, lam=0.8,
                       class_counts=COUNTS, amp="fp16", clean_backward=mode)
        for x, y in batches("convbn"):
            opt.step(model, x.float(), y, per_sample_ce)
        out.append((model, opt.scaler.get_scale()))
    (m0, s0), (m1, s1) = out
    assert s0 == s1
    for p, q in zip(m0.parameters(), m1.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "convbn"])
def test_focal_sam_gamma0_lam1_equals_sam(kind):
    data = batches(kind)
    m1, m2 = make_model(kind), make_model(kind)
    o1 = FocalSAM(m1.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO, gamma=0.0, lam=1.0, class_counts=COUNTS)
    o2 = SAM(m2.parameters(), lr=LR, momentum=0.9, weight_decay=WD, rho=RHO)
    for x, y in data:
        o1.step(m1, x, y, per_sample_ce)
        o2.step(m2, x, y, per_sample_ce)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["mlp", "convbn"])
def test_sgd_is_a1_c0(kind):
    run_and_compare(kind, 0.9, lambda m: SGD(m.parameters(), lr=LR, momentum=0.9, weight_decay=WD),
                    torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))


def test_step_returns_clean_loss_and_logits():
    model = make_model("mlp")
    x, y = batches("mlp", 1)[0]
    expected_logits = model(x)
    opt = FocalSAM(model.parameters(), lr=LR, rho=RHO, class_counts=COUNTS)
    loss, logits = opt.step(model, x, y, per_sample_ce)
    torch.testing.assert_close(logits, expected_logits.detach())
    torch.testing.assert_close(loss, per_sample_ce(expected_logits, y).mean().detach())


def test_bad_arguments_raise_value_errors():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="rho must be >= 0, got -1"):
        SAM(model.parameters(), lr=0.1, rho=-1)
    with pytest.raises(ValueError, match="bn_mode"):
        SAM(model.parameters(), lr=0.1, bn_mode="eval")
    with pytest.raises(ValueError, match="class_counts"):
        FocalSAM(model.parameters(), lr=0.1, class_counts=[])
    with pytest.raises(ValueError, match="lam must be >= 0"):        # a negative lam would flip the perturbation
        FocalSAM(model.parameters(), lr=0.1, class_counts=[5, 3], lam=-0.5)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        FocalSAM(model.parameters(), lr=0.1, class_counts=[5, 3], gamma=-1.0)
    with pytest.raises(ValueError, match="tail_weight must be > 0"):
        ImbSAM(model.parameters(), lr=0.1, class_counts=[5, 3], eta=4, tail_weight=0.0)
    FocalSAM(model.parameters(), lr=0.1, class_counts=[5, 3], lam=1.1)   # > 1 is allowed (official iNaturalist)
    opt = FocalSAM(model.parameters(), lr=0.1, class_counts=[5, 3])
    with pytest.raises(ValueError, match="target 3 is out of range for 2 classes"):
        opt.step(model, torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 3, 0]), per_sample_ce)
    with pytest.raises(ValueError, match="per-sample losses"):
        SAM(model.parameters(), lr=0.1).step(model, torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0]),
                                             torch.nn.CrossEntropyLoss())
