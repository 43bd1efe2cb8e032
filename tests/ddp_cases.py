"""The optimizer cases shared by the DDP worker and its test (same batches, same settings)."""
import torch

from optim import CCSAM, GSAM, RWP, SAM, SGD, SSESAM, FocalSAM, ImbSAM, LookSAM

COUNTS = [400, 120, 30, 8]
CASES = [("sgd", "global"), ("sam", "global"), ("imbsam", "global"), ("focal_sam", "global"), ("cc_sam", "global"),
         ("sam", "local"), ("focal_sam", "local"), ("cc_sam", "local"),
         ("imbsam_batched", "global"), ("focal_sam_batched", "global"), ("focal_sam_batched", "local"),
         # the SAM family (issue 25): perturbation rules on a weighting, GSAM, LookSAM, m-RWP
         ("sam_asam", "global"), ("focal_sam_friendly", "global"), ("imbsam_random", "global"), ("rwp", "global"),
         ("gsam", "global"), ("gsam", "local"), ("looksam", "global"),
         ("sse_sam", "global"), ("sse_sam_batched", "global")]
RULES = {"asam": dict(perturb="asam", asam_eta=0.05), "friendly": dict(perturb="friendly", friendly_momentum=0.7),
         "random": dict(perturb="random", random_seed=3)}
KW = dict(lr=0.1, momentum=0.9, weight_decay=5e-4)


def make_optimizer(name, model, mode, bn_mode="update"):
    p = model.parameters()
    if name == "sgd":
        return SGD(p, **KW)
    common = dict(KW, perturbation=mode, bn_mode=bn_mode)
    if name.endswith("_batched"):    # the clean gradient and u from one batched backward
        name, common = name[:-len("_batched")], dict(common, clean_backward="batched")
    if name.rpartition("_")[2] in RULES:   # a weighting with a perturbation rule: sam_asam, ...
        name, _, rule = name.rpartition("_")
        common = dict(common, **RULES[rule])
    if name == "gsam":
        return GSAM(p, rho=0.3, alpha=0.5, **common)
    if name == "looksam":
        return LookSAM(p, rho=0.3, alpha=0.7, k=2, **common)
    if name == "rwp":
        return RWP(p, rho=0.05, alpha=0.5, random_seed=3, **common)
    if name == "sam":
        return SAM(p, rho=0.3, **common)
    if name == "imbsam":
        return ImbSAM(p, rho=0.3, eta=100, class_counts=COUNTS, **common)
    if name == "focal_sam":
        return FocalSAM(p, rho=0.3, gamma=2.0, lam=0.8, class_counts=COUNTS, **common)
    if name == "sse_sam":            # stage 1: the head and the tail each at its own perturbed point
        return SSESAM(p, rho=0.3, head_rho=0.2, eta=100, class_counts=COUNTS, **common)
    return CCSAM(p, rho=0.5, ratio=0.3, radius="plain", class_counts=COUNTS, **common)


def drw_weights_loss(process_group=None):
    """LA with DRW class weights and the "weights" reduction: sum w l / sum w over the batch."""
    from losses import LAOptions, build_loss
    from losses.drw import class_balanced_weights
    loss = build_loss(LAOptions(name="la", drw_reduction="weights"), COUNTS).double()
    loss.set_class_weight(class_balanced_weights(COUNTS, 0.999))
    loss.process_group = process_group
    return loss


def batches(steps=3, b=12):
    """Global batches; rank r of W takes x[r::W]. The second batch has no tail sample (ImbSAM
    then skips its perturbed pass on every rank, decided globally)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for s in range(steps):
        x = torch.randn(b, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (b,), generator=g)
        if s == 1:
            y = y % 2
        if s == 2:
            y[1] = 3        # one tail sample, on rank 1 only
            y[0::2] = y[0::2] % 2
        out.append((x, y))
    return out


NORM_CASES = [("groupnorm", "sam"), ("groupnorm", "focal_sam"), ("batchnorm", "sam")]


def image_batches(steps=3, b=12):
    """Global batches of small float64 images for the normalisation cases; rank r takes x[r::W]."""
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(b, 3, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (b,), generator=g))
            for _ in range(steps)]
