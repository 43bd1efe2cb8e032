"""SSE-SAM (Lyu et al. AAAI 2025, "Balancing Head and Tail Classes Gradually through Stage-Wise
SAM"), as its authors' code computes it (github.com/Zemdalk/SSE-SAM, ssesam.py `SSESAM` and
utils/trainval.py `forbackward`, commit 819ca92).

Two groups of classes, head (n_k >= eta) and tail (n_k < eta, strict as in the code), each with
its own SAM perturbation and radius. With L_h, L_t the head / tail parts of the batch loss (each
a sum over its samples divided by the WHOLE batch size b):

    stage 1 (epochs before the switch):  g = grad L_h(w + eps_h) + grad L_t(w + eps_t)
    stage 2 (from the switch on):        g = grad L_h(w)         + grad L_t(w + eps_t)
    eps_h = rho_head u_h / ||u_h||,  u_h = grad L_h(w);   eps_t = rho u_t / ||u_t||,  u_t = grad L_t(w)

Stage 1 follows the majority (head) samples' saddle points, stage 2 only the tail's. The code's
stage 2 is its stage 1 with rho_head set to 0 (`update_rho`), so the head gradient is taken at w:
that is the weighted step of optim/sharpness.py with a = head mask, c = tail mask (ImbSAM's
update with the tail set n_k < eta and the tail loss weighted 1), which this class inherits.
Stage 1 is not one weighting of one perturbation (each group moves along its own gradient), so
it adds the head's own perturbed pass: one forward at w gives u_h and u_t (two backward passes
through one graph, or one batched backward with clean_backward="batched"), then one perturbed
forward and backward per group: 3 forward / 4 backward passes in stage 1, 2 / 3 in stage 2 (the
code runs 4 / 4 in both: it recomputes the clean forward for the tail, and runs the head's
perturbed pass at eps = 0 in stage 2).

The stage is the param-group value `head_rho` (rho_head in stage 1, 0 from the switch on), which
`SSESAMOptions.group_values` schedules per epoch for the engine. The switch epoch is the code's:
its `update_rho` runs after every training epoch and zeroes rho_head once the count of finished
epochs reaches gamma * epochs, so the first epoch of stage 2 (0-based) is ceil(gamma * epochs).
In your own loop, `set_stage` does what the engine does:

    opt = SSESAM(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, rho=0.1, head_rho=0.05,
                 gamma=0.7, eta=100, class_counts=counts)
    for epoch in range(epochs):
        opt.set_stage(epoch, epochs)                     # head_rho: 0.05 before the switch, then 0
        for x, y in loader:
            loss, logits = opt.step(model, x, y, nn.CrossEntropyLoss(reduction="none"))

The perturbation is SAM's rule (optim/perturbations.py `sam`) for both groups. A batch without a
tail (head) sample skips that group's passes, as ImbSAM's step does (the code's empty-group pass
has u = 0, eps = 0 and a zero gradient: the same numbers). DDP (perturbation="global"), fp16 /
bf16 and stacked models as in optim/base.py: each group's u is summed over the replicas before
its norm; stacked members without a sample of a group ride along in its perturbed pass with
eps = 0 and weight 0, their BatchNorm statistics kept as they were.
"""
import math
from dataclasses import dataclass
from typing import List, Literal, Sequence

import torch

from core.options import opt, require
from optim.base import PerturbOptions
from optim.class_weights import _counts
from optim.members import members, sharp_members
from optim.sharpness import ImbSAM, TwoPartOptions, WeightedSAM


def check_sse_sam(head_rho: float, eta: float, gamma: float = 0.0) -> None:
    require("head_rho", head_rho >= 0, "must be >= 0 (SSE-SAM: the head classes' radius in stage 1)", head_rho)
    require("eta", eta >= 0, "must be >= 0 (SSE-SAM: tail = classes with n_k < eta)", eta)
    require("gamma", 0.0 <= gamma <= 1.0,
            "must be in [0, 1] (SSE-SAM: the fraction of the epochs in stage 1; 0: stage 2 only, 1: stage 1 only)",
            gamma)


def sse_sam_groups(class_counts, eta: float):
    """(a, c) = (head mask, tail mask), tail = n_k < eta: the classes of the code's
    `train_few_classes = torch.where(counts < eta)`."""
    tail = (_counts(class_counts) < eta).double()
    return 1.0 - tail, tail


def switch_epoch(gamma: float, epochs: int) -> int:
    """The first epoch (0-based) of stage 2: the code zeroes rho_head after the epoch whose
    finished-epoch count reaches `total_epochs * gamma` (the same float product)."""
    return math.ceil(epochs * gamma)


def head_rho_at(head_rho: float, gamma: float, epochs: int) -> List[float]:
    """rho_head of each epoch: `head_rho` in stage 1, 0 from the switch epoch on."""
    first = switch_epoch(gamma, epochs)
    return [head_rho if e < first else 0.0 for e in range(epochs)]


@dataclass(frozen=True)
class SSESAMOptions(PerturbOptions):
    """PerturbOptions, not the options of a perturbation rule: each group is perturbed by SAM's
    rule, as in the code (a rule with state, F-SAM's EMA of u, would see both groups' u in turn)."""
    rho: float = opt(0.1, "SSE-SAM: rho_tail, the tail classes' radius in both stages (code: --tail_rho)")
    head_rho: float = opt(0.05, "SSE-SAM: rho_head, the head classes' radius in stage 1 (code: --head_rho)")
    gamma: float = opt(0.7, "SSE-SAM: fraction of the epochs in stage 1, in [0, 1]; stage 2 from epoch "
                            "ceil(gamma * epochs) (code: --gamma)")
    eta: float = opt(100.0, "SSE-SAM: tail = classes with n_k < eta, strictly (code: --eta)")
    clean_backward: Literal["separate", "batched"] = opt(
        "separate", "SSE-SAM: u_h and u_t from two backward passes, or one batched backward (same numbers)")
    why_not_compiled = TwoPartOptions.why_not_compiled   # vmap over a compiled backward: no batching rule

    def check(self) -> None:
        super().check()
        check_sse_sam(self.head_rho, self.eta, self.gamma)

    def group_values(self, lrs: Sequence[float]) -> List[dict]:
        """rho (the tail radius, with its milestones) and head_rho (the stage) of each epoch."""
        heads = head_rho_at(self.head_rho, self.gamma, len(lrs))
        return [{**values, "head_rho": h} for values, h in zip(super().group_values(lrs), heads)]


class SSESAM(WeightedSAM):
    """SSE-SAM behind the common `step(model, images, targets, criterion)`; see the module docstring.

    Args (beyond SharpnessOptimizer's): class_counts, rho (rho_tail), head_rho (rho_head: the
    initial `head_rho` of every param group that does not set its own; the stage is that value),
    gamma (the fraction of the epochs in stage 1, for `set_stage`), eta (tail = n_k < eta),
    clean_backward ("separate" | "batched": u_h and u_t from two backward passes or one batched
    one, the same numbers), perturb (only "sam": the code's rule, one per group).
    """
    capturable = False      # which groups a batch holds is read back to the host (ImbSAM's parts)
    parts = ImbSAM.parts    # (b, head present, tail present, members without a tail sample)

    def __init__(self, params, lr: float, class_counts: Sequence, rho: float = 0.1, head_rho: float = 0.05,
                 gamma: float = 0.7, eta: float = 100.0, perturb: str = "sam", **kwargs):
        check_sse_sam(head_rho, eta, gamma)
        if perturb != "sam":   # a stateful rule (an EMA of u) would see both groups' directions in turn
            raise ValueError(f"SSE-SAM perturbs each group by SAM's rule: perturb must be 'sam', got {perturb!r}")
        a, c = sse_sam_groups(class_counts, eta)
        super().__init__(params, lr, a, c, rho=rho, perturb=perturb, **kwargs)
        self.head_rho, self.gamma = head_rho, gamma
        for group in self.param_groups:
            group.setdefault("head_rho", head_rho)

    def set_stage(self, epoch: int, epochs: int) -> None:
        """Every group's head_rho for `epoch` of `epochs`: rho_head in stage 1, 0 in stage 2."""
        value = head_rho_at(self.head_rho, self.gamma, epochs)[epoch]
        for group in self.param_groups:
            group["head_rho"] = value

    def step(self, model, images, targets, criterion):
        """Stage 2 (every head_rho 0): the inherited step, head at w. Stage 1: each group at its
        own perturbed point. Returns (mean clean loss, clean logits), per member when stacked."""
        if not any(g["head_rho"] > 0 for g in self.param_groups):
            return super().step(model, images, targets, criterion)
        self.start_step(model, targets, self.weights.num_classes)
        with self.no_sync(model):
            logits, losses = self.forward(model, images, targets, criterion)         # l_i(w)
            a, c = self.weights.per_sample(targets, losses.dtype)                     # head / tail masks
            b, head, tail, skip_tail = self.parts(model, a, c)            # counted over the ranks
            head, skip_head = self.per_member(model, a, head)
            params, tail_rhos = self.perturbed(model)
            u_head, u_tail = self.ascent_gradients(params, losses, a, c, b, head, tail)
            moves = []                                       # (per-sample weights, eps, members skipped)
            for w, u, rhos, present, skip in ((a, u_head, self.head_radii(params), head, skip_head),
                                              (c, u_tail, tail_rhos, tail, skip_tail)):
                if present:
                    eps = self.perturb(model, params, rhos, u, self.rule)   # rho_g u_g / ||u_g||
                    if eps is None:                          # fp16: u overflowed, the scaler skipped the step
                        return losses.detach().mean(-1), logits.detach()
                    moves.append((w, eps, skip))
            for w, eps, skip in moves:
                with self.moved(model, params, eps, skip):
                    _, moved = self.forward(model, images, targets, criterion)         # l_i(w + eps_g)
                    self.backward((w * moved).sum() / b)     # .grad += grad L_g(w + eps_g)
        self.finish(model)                                   # w -= lr g, momentum, weight decay
        return losses.detach().mean(-1), logits.detach()

    @staticmethod
    def per_member(model, a: torch.Tensor, head: bool):
        """(a head sample in the batch, stacked members without one or None): `parts` answers
        for one model (over the ranks); a stacked model answers per member here."""
        if not members(model):
            return head, None
        has = sharp_members(a)
        return bool(has.any()), (~has if bool(has.any()) and not bool(has.all()) else None)

    def head_radii(self, params) -> List[float]:
        """rho_head of each parameter's group, read at every step (the stage may change)."""
        of = {id(p): g["head_rho"] for g in self.param_groups for p in g["params"]}
        return [of[id(p)] for p in params]

    def ascent_gradients(self, params, losses, a, c, b, head: bool, tail: bool):
        """(u_h, u_t) at w, None for a group absent from the batch. Both present and
        clean_backward="batched": one backward for both (autograd.grad over the two weight rows)."""
        if head and tail and self.batched:
            u_tail = self.gradients_batched(losses, torch.stack([a, c]) / b, params)
            u_head = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            self.zero_grad(set_to_none=True)          # row 0 went to .grad; the update needs it at w + eps_h
            return u_head, u_tail
        u_head = self.gradient((a * losses).sum() / b, params, keep_graph=tail) if head else None
        u_tail = self.gradient((c * losses).sum() / b, params, keep_graph=False) if tail else None
        return u_head, u_tail
