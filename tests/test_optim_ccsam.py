"""CC-SAM against a brute-force per-class computation (a parameter copy per class, the official
radius written out), float64, tolerance 1e-10; the vectorised linear-head path and the generic
path agree with it on batches with one and with several classes."""
import math

import pytest
import torch

from optim import CCSAM
from optim.ccsam import radius_scales
from reference import MLP, ConvBN, ccsam_reference, params_of, per_sample_ce, reference_copy

COUNTS = [400, 120, 30, 1]   # a one-image class: (n_k - 1) must not divide by zero
LR, WD = 0.1, 5e-4


def data(kind, classes_per_batch, steps=3, b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in range(steps):
        x = torch.randn((b, 6) if kind != "convbn" else (b, 3, 5, 5), generator=g, dtype=torch.float64)
        y = torch.randint(0, classes_per_batch, (b,), generator=g) if classes_per_batch > 1 else torch.full((b,), s % 4)
        out.append((x, y))
    return out


def model_of(kind, seed=0):
    torch.manual_seed(seed)
    return {"mlp": lambda: MLP(), "cosine": lambda: MLP(head="cosine"), "convbn": lambda: ConvBN()}[kind]().double()


def check(kind, classes_per_batch, rule, rho, ratio=0.3, momentum=0.9, scope="classifier", generic=False):
    model = model_of(kind)
    ref_model, params, bufs = reference_copy(model), params_of(model), {}
    opt = CCSAM(model.parameters(), lr=LR, momentum=momentum, weight_decay=WD, class_counts=COUNTS, rho=rho,
                ratio=ratio, radius=rule, scope=scope)
    if generic:   # the same linear head behind a module that is not nn.Linear takes the generic path
        model.classifier = torch.nn.Sequential(model.classifier)
        ref_model = reference_copy(model)
        params = params_of(model)
        opt = CCSAM(model.parameters(), lr=LR, momentum=momentum, weight_decay=WD, class_counts=COUNTS, rho=rho,
                    ratio=ratio, radius=rule, scope=scope)
    for x, y in data(kind, classes_per_batch):
        opt.step(model, x, y, per_sample_ce)
        params = ccsam_reference(ref_model, params, bufs, x, y, COUNTS, rho, ratio, rule, LR, momentum, WD, scope)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[n], rtol=0, atol=1e-10, msg=n)


@pytest.mark.parametrize("generic", [False, True], ids=["closed-form", "generic"])
@pytest.mark.parametrize("classes_per_batch", [1, 4])
@pytest.mark.parametrize("rule, rho", [("official", 0.5), ("plain", 0.5)])
def test_linear_head(generic, classes_per_batch, rule, rho):
    check("mlp", classes_per_batch, rule, rho, generic=generic)


@pytest.mark.parametrize("classes_per_batch", [1, 4])
def test_cosine_head_generic_path(classes_per_batch):
    check("cosine", classes_per_batch, "official", 2.0)


def test_with_batchnorm_and_no_momentum():
    check("convbn", 4, "official", 0.5, momentum=0.0)


def test_scope_all_perturbs_every_parameter_per_class():
    check("mlp", 4, "plain", 0.2, scope="all")


def test_ratio_zero_is_plain_sgd():
    model, sgd_model = model_of("mlp"), model_of("mlp")
    opt = CCSAM(model.parameters(), lr=LR, momentum=0.9, weight_decay=WD, class_counts=COUNTS, rho=0.5, ratio=0.0)
    ref = torch.optim.SGD(sgd_model.parameters(), lr=LR, momentum=0.9, weight_decay=WD)
    for x, y in data("mlp", 4):
        opt.step(model, x, y, per_sample_ce)
        ref.zero_grad()
        per_sample_ce(sgd_model(x), y).mean().backward()
        ref.step()
    for p, q in zip(model.parameters(), sgd_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_radius_rules_by_hand():
    g = torch.tensor([[4.0, 1.0], [0.0, 9.0]], dtype=torch.float64)       # 2 classes x 2 tensors
    theta = torch.tensor(16.0, dtype=torch.float64)                       # ONE norm over both tensors
    counts = torch.tensor([17.0, 2.0], dtype=torch.float64)
    s = radius_scales(g, theta, 81, counts, rho=0.1, n_min=2.0, rule="official")
    # class 0, tensor 0: r = 0.1 * sqrt(16) * 81^(1/4) / (sqrt2 * 16^(1/4) * sqrt(4)) = 0.3/sqrt2; scale = r / 4
    assert s[0, 0].item() == pytest.approx(0.3 / math.sqrt(2) / 4)
    # class 0, tensor 1: the same ||theta||, its own ||g|| = 1: r = 0.1 * 4 * 3 / (sqrt2 * 2 * 1); scale = r / 1
    assert s[0, 1].item() == pytest.approx(0.6 / math.sqrt(2))
    assert s[1, 0].item() == 0.0                                          # zero gradient: no perturbation
    # class 1: n_k - 1 = 1; tensor 1: r = 0.1 * 4 * 3 / (sqrt2 * 1 * 3) = 0.4/sqrt2; scale = r / 9
    assert s[1, 1].item() == pytest.approx(0.4 / math.sqrt(2) / 9)
    per_tensor_rho = radius_scales(g, theta, 81, counts, rho=torch.tensor([0.1, 0.2]), n_min=2.0, rule="official")
    assert per_tensor_rho[0, 1].item() == pytest.approx(2 * s[0, 1].item())   # each tensor its group's rho
    p = radius_scales(g, theta, 81, counts, rho=0.1, n_min=2.0, rule="plain")
    assert p[0, 0].item() == pytest.approx(0.1 * (2 / 17) ** 0.25 / math.sqrt(17))   # ||g_0|| = sqrt(16 + 1)
    assert p[1, 1].item() == pytest.approx(0.1 / 9)                                   # rarest class: rho


def test_bad_arguments():
    model = model_of("mlp")
    with pytest.raises(ValueError, match="ratio must be in"):
        CCSAM(model.parameters(), lr=0.1, class_counts=COUNTS, ratio=1.5)
    with pytest.raises(ValueError, match="radius"):
        CCSAM(model.parameters(), lr=0.1, class_counts=COUNTS, radius="huge")
    with pytest.raises(ValueError, match="scope"):
        CCSAM(model.parameters(), lr=0.1, class_counts=COUNTS, scope="backbone")


def original_loop_step(model, x, y, counts, noise_ratio, flat_ratio, lr):
    """One stage-1 step of the official CC-SAM code (zzpustc/CC-SAM train_cifar.py `train`, no
    mixup), transcribed loop for loop: per class, the classifier's data is moved in place by the
    official noise and restored; then one backward and plain SGD (no momentum, no decay)."""
    feats, logits = model(x, return_features=True)
    loss_ori = per_sample_ce(logits, y)
    disturb = list(model.classifier.parameters())
    origin = [p.detach().clone() for p in disturb]
    params_num = sum(p.numel() for p in disturb)
    grad_list = {k: torch.autograd.grad(loss_ori[y == k].mean(), disturb, retain_graph=True)
                 for k in torch.unique(y).tolist()}
    param_norm = torch.norm(torch.stack([p.norm(p=2) for p in disturb]), p=2) + 1e-12   # utils/pytorch.py grad_norm
    loss_list = []
    for k in torch.unique(y).tolist():
        for param, grad_c in zip(disturb, grad_list[k]):
            grad_c_norm = torch.norm(grad_c)
            rho_c = (noise_ratio * torch.sqrt(param_norm) / torch.sqrt(grad_c_norm) / math.sqrt(2)
                     / math.sqrt(math.sqrt(counts[k] - 1)) / math.sqrt(math.sqrt(params_num)))
            noise = rho_c * (grad_c / grad_c_norm) * math.sqrt(params_num)
            param.data = param.data + noise
        loss_list.extend(per_sample_ce(model.classifier(feats[y == k]), y[y == k]))
        for param, o in zip(disturb, origin):
            param.data = o.clone()
    loss = (1 - flat_ratio) * loss_ori.mean() + flat_ratio * torch.stack(loss_list).mean()
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


def test_official_radius_equals_a_transcription_of_the_original_loop():
    counts = [400, 120, 30, 9]            # n_k > 1, as the original needs (it divides by (n_k - 1)^(1/4))
    model = model_of("mlp")
    twin = reference_copy(model)
    x, y = data("mlp", 4, steps=1)[0]
    opt = CCSAM(model.parameters(), lr=0.1, momentum=0.0, weight_decay=0.0, class_counts=counts, rho=0.5,
                ratio=0.3, radius="official")
    opt.step(model, x, y, per_sample_ce)
    original_loop_step(twin, x, y, counts, noise_ratio=0.5, flat_ratio=0.3, lr=0.1)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12, msg=n)


def test_each_tensor_takes_its_own_groups_rho():
    """rho is a per-group value: a classifier group with rho 0 leaves the classifier unperturbed
    (the perturbed loss equals the clean one, so the step is plain SGD), whatever the rho of the
    backbone group."""
    model, twin = model_of("mlp"), model_of("mlp")
    head = list(model.classifier.parameters())
    body = [p for p in model.parameters() if all(p is not q for q in head)]
    opt = CCSAM([{"params": body, "rho": 5.0}, {"params": head, "rho": 0.0}], lr=LR, momentum=0.0,
                weight_decay=0.0, class_counts=COUNTS, rho=0.5, ratio=0.5, radius="official")
    sgd = torch.optim.SGD(twin.parameters(), lr=LR)
    for x, y in data("mlp", 4):
        opt.step(model, x, y, per_sample_ce)
        sgd.zero_grad()
        per_sample_ce(twin(x), y).mean().backward()
        sgd.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)


def test_global_gather_uses_ddps_process_group(monkeypatch, tmp_path):
    """Features are gathered on the group DDP reduces on, not on the default group."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    import optim.ccsam
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        group = dist.new_group([0])
        model = model_of("mlp")
        ddp = DistributedDataParallel(model, process_group=group)
        seen = []
        monkeypatch.setattr(optim.ccsam, "gather_variable", lambda t, g=None: seen.append(g) or t)
        opt = CCSAM(model.parameters(), lr=LR, class_counts=COUNTS, rho=0.5)
        x, y = data("mlp", 4, steps=1)[0]
        opt.step(ddp, x, y, per_sample_ce)
        assert seen and all(g is group for g in seen)
    finally:
        dist.destroy_process_group()
