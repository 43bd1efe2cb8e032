"""What every optimizer here shares: options, the wrapped base SGD, and the plumbing of a
multi-pass step (mixed precision, BatchNorm in the perturbed pass, DDP gradient sums).

An optimizer here is called once per batch as `opt.step(model, images, targets, criterion)` and
runs every forward and backward pass itself, then the base SGD update; `criterion(logits,
targets)` must return per-sample losses. It wraps `torch.optim.SGD` and shares its
`param_groups` (the pattern of the popular SAM wrapper), so torch's LR schedulers work on it and
`rho` is a param-group value like `lr` (each parameter is perturbed with its own group's rho).
Weight decay and momentum belong to the base step only.

Many models at once: `model` may be an `models.stacked.StackedModels` of N members (images
(N, B, ...), targets (N, B)); what is not elementwise is then taken per member by the helpers of
optim/members.py, and `step` returns per-member mean losses (N,). Not with fp16 (one loss scale
would couple the members).

Distributed: when `model` is a DistributedDataParallel module, every pass runs under
`model.no_sync()` and the gradients that need it are summed across DDP's process group here, in
coalesced buckets. DDP's own reducer cannot serve a sharpness-aware step: it expects exactly one
backward per forward (pytorch issue 47260), while these steps run two or three backward passes on
one forward, and the perturbation needs a reduced gradient in the middle of the step. Losses are
normalised by the GLOBAL batch size and summed across ranks, so the result equals one process on
the whole batch.
"""
import contextlib
from dataclasses import dataclass
from typing import ClassVar, List, Literal, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from core.collectives import all_reduce_sum_
from core.options import FLOAT32_MAX, Checked, opt, require
from optim.members import keep_skipped, members, per_sample_losses
from optim.schedules import piecewise_rho

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
NORM_LAYERS = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)


# ---------------------------------------------------------------------------------- options
def check_base_step(lr: float, momentum: float, weight_decay: float, nesterov: bool) -> None:
    """The base SGD step's values (OptionError naming the keyword)."""
    require("lr", lr > 0, "must be > 0", lr)
    require("momentum", 0 <= momentum < 1, "must be in [0, 1)", momentum)
    require("weight_decay", weight_decay >= 0, "must be >= 0", weight_decay)
    require("nesterov", not nesterov or momentum > 0,
            "Nesterov needs momentum > 0 (momentum is 0); set nesterov false or a momentum", nesterov)


def check_radius(rho: float, milestones: Sequence = ()) -> None:
    """rho >= 0; milestones [[epoch, rho], ...] at increasing epochs > 0, each rho finite and >= 0."""
    require("rho", rho >= 0, "must be >= 0", rho)
    last = 0
    for i, (epoch, value) in enumerate(milestones):
        require(f"rho_milestones[{i}]", abs(value) <= FLOAT32_MAX, "rho must be a finite number", value)
        require(f"rho_milestones[{i}]", epoch > last, "epochs must be increasing and > 0", epoch)
        require(f"rho_milestones[{i}]", value >= 0, "rho must be >= 0", value)
        last = epoch


# ---------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class OptimOptions(Checked):
    """Keys of the `optim` section every optimizer has: the base SGD step (plain SGD reads only these)."""
    name: str = opt("sgd", "the optimizer (registry name)")
    lr: float = opt(0.1, "base learning rate (cosine-annealed per epoch to 0)")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(5e-4, "L2 weight decay of the base step")
    nesterov: bool = opt(False, "Nesterov momentum (needs momentum > 0)")

    def check(self) -> None:
        check_base_step(self.lr, self.momentum, self.weight_decay, self.nesterov)

    # What the engine asks every optimizer (answered here for those without a radius).
    rho_milestones = ()
    # Options that only the engine's per-epoch schedule reads (group_values), not the constructor.
    schedule_keys: ClassVar[Tuple[str, ...]] = ("rho_milestones",)

    def group_values(self, lrs: Sequence[float]) -> List[dict]:
        """The param-group values of each epoch beside its learning rate lrs[e] (the engine sets
        them at the start of every epoch): {} for plain SGD; {"rho": ...} for the methods with a
        radius. A method whose per-epoch state is a schedule (a radius tied to the lr, a stage
        switch) adds its values here, and its step reads them from the param groups."""
        return [{} for _ in lrs]

    def check_epochs(self, epochs: int) -> None:
        """Epoch-indexed options against the run's length (OptionError)."""

    def why_not_compiled(self) -> str:
        """'' when the step can run through a torch.compile'd model, else the option that forbids it."""
        return ""


@dataclass(frozen=True)
class RhoOptions(OptimOptions):
    """Every optimizer that perturbs the weights: the radius and its schedule."""
    rho: float = opt(0.05, "perturbation radius at epoch 0")
    rho_milestones: Tuple[Tuple[int, float], ...] = opt((), "[[epoch, rho], ...]: rho from that 0-based epoch on")
    bn_mode: Literal["update", "freeze"] = opt("update", "BN running stats in the perturbed pass: update (official) or freeze")
    perturbation: Literal["global", "local"] = opt("global", "DDP: perturb along the global or each replica's gradient")

    def check(self) -> None:
        super().check()
        check_radius(self.rho, self.rho_milestones)

    def group_values(self, lrs: Sequence[float]) -> List[dict]:
        return [{"rho": rho} for rho in piecewise_rho(self.rho, self.rho_milestones, len(lrs))]

    def check_epochs(self, epochs: int) -> None:
        for i, (epoch, _) in enumerate(self.rho_milestones):
            require(f"rho_milestones[{i}]", epoch < epochs, f"epoch {epoch} must be < epochs={epochs}", epoch)


# One key, three papers' alpha (each with its own default): the options table shows one doc per key.
ALPHA_DOC = ("gsam: weight of the surrogate-gap ascent (default 0.4); looksam: weight of the reused orthogonal "
             "component (0.7); rwp: weight of the perturbed loss, 1 = plain RWP (0.5)")


@dataclass(frozen=True)
class PerturbOptions(RhoOptions):
    """SAM and the methods that reweight it per class (one perturbation of all weights)."""
    exclude_bn_bias: bool = opt(False, "leave normalisation parameters and biases unperturbed")


def constructor_args(options: OptimOptions) -> dict:
    """The keyword arguments of an optimizer's constructor: every option but the name and the
    schedule's keys (the engine sets each epoch's rho on the param groups)."""
    return {k: v for k, v in vars(options).items() if k != "name" and k not in options.schedule_keys}


# ---------------------------------------------------------------------------------- the base class
class SharpnessOptimizer(torch.optim.Optimizer):
    """Base class. Subclasses implement `step(model, images, targets, criterion)`.

    Args:
        params: model parameters (or param-group dicts, each may carry its own `rho`).
        lr, momentum, weight_decay, nesterov: the base SGD step.
        rho: perturbation radius (ignored by plain SGD).
        bn_mode: "update" lets BatchNorm running statistics update during the perturbed forward
            pass (the official code); "freeze" keeps them as they were, so only clean passes count.
        exclude_bn_bias: leave normalisation-layer parameters and biases unperturbed.
        perturbation: under DDP, "global" perturbs along the gradient of the whole (global) batch,
            which is what the official single-process DataParallel runs computed; "local" along
            each replica's own gradient (m-sharpness with m = per-process batch).
        amp: "none", "bf16" (autocast, no scaler) or "fp16" (autocast plus one GradScaler for the
            whole multi-pass step: unscale before the norm, skip the step on inf/NaN, update once).
    """

    # Whether `step` trains a stacked model (models/stacked.py) member by member exactly: only
    # an optimizer whose step takes every non-elementwise quantity per member may say True.
    stackable = False
    # Whether `step` runs without reading a value back to the host (so a CUDA graph can record it).
    capturable = False

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, rho: float = 0.05, bn_mode: str = "update",
                 exclude_bn_bias: bool = False, perturbation: str = "global", amp: str = "none"):
        check_choice("bn_mode", bn_mode, ("update", "freeze"))
        check_choice("perturbation", perturbation, ("global", "local"))
        check_choice("amp", amp, tuple(AMP_DTYPES))
        check_base_step(lr, momentum, weight_decay, nesterov)
        check_radius(rho)
        super().__init__(params, dict(rho=rho))
        self.base_optimizer = torch.optim.SGD(self.param_groups, lr=lr, momentum=momentum,
                                              weight_decay=weight_decay, nesterov=nesterov)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.bn_mode, self.exclude_bn_bias, self.perturbation, self.amp = bn_mode, exclude_bn_bias, perturbation, amp
        self._checked = False
        device_type = self.param_groups[0]["params"][0].device.type
        self.scaler = torch.amp.GradScaler(device_type, enabled=(amp == "fp16"))

    def state_dict(self) -> dict:
        """Base SGD state (momentum buffers, param groups with lr and rho) and the loss scaler."""
        return {"base": self.base_optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_optimizer.load_state_dict(state_dict["base"])
        # torch replaces the base optimizer's param_groups list on load: share it again.
        self.param_groups = self.base_optimizer.param_groups
        if state_dict.get("scaler"):
            self.scaler.load_state_dict(state_dict["scaler"])

    # ------------------------------------------------------------------ parameters
    def trainable(self) -> List[nn.Parameter]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def perturbed(self, model: nn.Module) -> Tuple[List[nn.Parameter], List[float]]:
        """The parameters the perturbation moves and the rho of each one's group, read from the
        current param groups at every step (so a rho set after `load_state_dict` counts)."""
        skip = set()
        if self.exclude_bn_bias:
            skip = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(False)}
            skip |= {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
        pairs = [(p, g["rho"]) for g in self.param_groups for p in g["params"] if p.requires_grad and id(p) not in skip]
        return [p for p, _ in pairs], [r for _, r in pairs]

    def start_step(self, model, targets: torch.Tensor, num_classes=None) -> None:
        """Clear the gradients; at the first step, check the model (stacked?) and the targets'
        range against the number of classes the optimizer's weights have."""
        self.zero_grad(set_to_none=True)
        if not self._checked:
            self.check_members(model)
            if num_classes:
                self.check_targets(targets, num_classes)
            self._checked = True

    # ------------------------------------------------------------------ passes
    def gradient(self, loss: torch.Tensor, params, keep_graph: bool) -> List[torch.Tensor]:
        """d loss / d params (times the fp16 loss scale), leaving .grad alone; zeros where unused."""
        g = torch.autograd.grad(self.scaled(loss), params, retain_graph=keep_graph, allow_unused=True)
        return [torch.zeros_like(p) if x is None else x for p, x in zip(params, g)]

    def gradients_batched(self, losses: torch.Tensor, weights: torch.Tensor, params) -> List[torch.Tensor]:
        """One backward for two weightings of the per-sample losses (weights (2, b)): row 0's
        gradient of every trainable parameter into .grad, row 1's gradient of `params` returned
        (autograd.grad with is_grads_batched: vmap over the rows, the numbers of two passes)."""
        every = self.trainable()
        both = torch.autograd.grad(losses, every, grad_outputs=self.scaled(weights), is_grads_batched=True,
                                   allow_unused=True)
        by_id = {id(p): g for p, g in zip(every, both)}
        for p, g in zip(every, both):
            p.grad = None if g is None else like(p, g[0])
        return [torch.zeros_like(p) if by_id.get(id(p)) is None else by_id[id(p)][1] for p in params]

    def perturb(self, model, params, rhos, u, rule, skip=None):
        """eps = rule(u): u first summed over the replicas (perturbation="global") and unscaled
        (fp16); None when the fp16 u overflowed (the scaler then skipped the step). `skip`:
        stacked members whose perturbed pass does not count (optim/perturbations.py)."""
        if u is not None:
            if self.perturbation == "global":
                self.sum_across_ranks(model, u)
            if not self.unscaled_or_skip(params, u, model):
                return None
        return rule(params, u, rhos, model, skip)

    def forward(self, model, images, targets, criterion):
        """One forward pass (under autocast when asked): (logits, per-sample losses, fp32 at least)."""
        with self.autocast(images.device.type):
            logits = model(images)
            losses = per_sample_losses(criterion, logits, targets, model)
        if losses.shape != targets.shape:
            raise ValueError(f"criterion must return per-sample losses of shape {tuple(targets.shape)}, "
                             f"got {tuple(losses.shape)} (use reduction='none')")
        return logits, full_precision(losses)

    def autocast(self, device_type: str):
        dtype = AMP_DTYPES[self.amp]
        return torch.autocast(device_type, dtype=dtype) if dtype else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        """.grad += d loss / dw (times the fp16 loss scale)."""
        self.scaled(loss).backward()

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss) if self.scaler.is_enabled() else loss

    @contextlib.contextmanager
    def moved(self, model, params: Sequence[torch.Tensor], eps: Sequence[torch.Tensor], skip=None):
        """Inside: the weights are w + eps (BN statistics per `bn_mode`); after: exactly w again.
        `skip` (N,) bool, stacked models only: members whose pass does not count (their eps is 0,
        their loss weight 0), whose BN statistics must leave the block unchanged, as if they had
        not run it."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in params]
            for p, e in zip(params, eps):
                p.add_(e)
        try:
            with self.bn_guard(model, skip):
                yield
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)

    @contextlib.contextmanager
    def bn_guard(self, model, skip=None):
        """With bn_mode="freeze", BN running statistics leave the block unchanged; with `skip`
        (stacked models), those of the skipped members do.

        The block runs on clones of the buffers; afterwards the originals (or, per member, a
        choice between them and the clones) are set back. Restoring the originals in place
        instead would bump their version counters before the backward pass, which autograd
        rejects (batch norm's backward takes the running statistics as inputs).
        """
        if self.bn_mode != "freeze" and skip is None:
            yield
            return
        swapped = [(m, name, buf) for m in model.modules() if isinstance(m, _BatchNorm)
                   for name, buf in m.named_buffers(recurse=False)]
        clones = [buf.clone() for _, _, buf in swapped]
        for (m, name, _), c in zip(swapped, clones):
            setattr(m, name, c)   # a registered buffer: Module.__setattr__ replaces it
        try:
            yield
        finally:
            for (m, name, buf), c in zip(swapped, clones):
                setattr(m, name, buf if self.bn_mode == "freeze" else keep_skipped(buf, c, skip))

    # ------------------------------------------------------------------ fp16 and DDP plumbing
    def unscaled_or_skip(self, params, grads: List[torch.Tensor], model) -> bool:
        """fp16: divide `grads` by the loss scale in place and return True; if they hold inf/NaN,
        hand them to the scaler (which skips the step and backs off once) and return False."""
        if not self.scaler.is_enabled():
            return True
        bad = (~torch.isfinite(torch.nn.utils.get_total_norm(grads))).float().reshape(1)
        if self.perturbation == "local":   # ranks found overflow on their own: all must agree to skip
            self.sum_across_ranks(model, [bad])
        if bool(bad.item()):
            for p, g in zip(params, grads):
                p.grad = g
            self.scaler.step(self.base_optimizer)
            self.scaler.update()
            return False
        inv = 1.0 / self.scaler.get_scale()
        for g in grads:
            g.mul_(inv)
        return True

    def check_members(self, model) -> None:
        if members(model) and not self.stackable:
            raise ValueError(f"{type(self).__name__} cannot train stacked models (its step is not taken per member)")
        if members(model) and self.scaler.is_enabled():
            raise ValueError("amp='fp16' cannot train stacked models (one loss scale and its skipped steps "
                             "would be shared by every member); use 'bf16' or 'none'")

    @staticmethod
    def ddp(model):
        return model if isinstance(model, DistributedDataParallel) else None

    def no_sync(self, model):
        ddp = self.ddp(model)
        return ddp.no_sync() if ddp is not None else contextlib.nullcontext()

    def sum_across_ranks(self, model, tensors: List[torch.Tensor]) -> None:
        ddp = self.ddp(model)
        if ddp is not None:
            all_reduce_sum_(tensors, ddp.process_group)

    def global_batch_size(self, model, targets: torch.Tensor):
        """b of the whole batch: the local size, or its sum over DDP's ranks (losses are divided
        by it, so that summing gradients across ranks gives the mean over the global batch)."""
        b = float(targets.shape[-1])        # (B,) or a stacked model's (N, B)
        if self.ddp(model) is None:
            return b
        n = torch.tensor([b], device=targets.device)
        self.sum_across_ranks(model, [n])
        return n[0]

    def finish(self, model) -> None:
        """Sum the final gradient across ranks once, then the base SGD step (through the scaler)."""
        self.sum_gradients(model)
        self.base_step()

    def sum_gradients(self, model) -> None:
        """.grad summed across DDP's ranks (a no-op in one process)."""
        self.sum_across_ranks(model, [p.grad for p in self.trainable() if p.grad is not None])

    def base_step(self) -> None:
        """The base SGD step on .grad, through the fp16 scaler (which skips it on inf/NaN)."""
        if self.scaler.is_enabled():
            self.scaler.step(self.base_optimizer)
            self.scaler.update()
        else:
            self.base_optimizer.step()

    def check_targets(self, targets: torch.Tensor, num_classes: int) -> None:
        if num_classes and targets.numel() and int(targets.max()) >= num_classes:
            raise ValueError(f"target {int(targets.max())} is out of range for {num_classes} classes "
                             f"(class_counts has {num_classes} entries)")


def like(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`g` laid out as `p`: a row of a batched gradient has vmap's strides, and a later backward
    accumulating into a .grad of another layout than its parameter's is slow (and warns)."""
    return g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """Losses in fp32 at least (fp64 stays fp64, for exactness tests)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
