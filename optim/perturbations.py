"""Perturbation rules: how the weighted sharpness step (optim/sharpness.py) turns the ascent
direction u = grad L_c(w) into the perturbation eps that it evaluates grad L_c at.

A rule is the second axis of the sharpness methods, independent of the per-class weighting (the
first axis: which classes' losses form L_c, optim/class_weights.py): `optim.perturb: sam` with
`optim.name: focal_sam` is Focal-SAM as published, `optim.perturb: asam` the same weighting with
ASAM's perturbation. With rho the radius of each parameter's param group:

    sam       eps = rho u / ||u||                                  SAM (Foret et al. ICLR 2021, Eq. 2)
    asam      eps = rho T^2 u / ||T u||,  T = |w| + eta            ASAM (Kwon et al. ICML 2021, Eq. 9)
                                          (T = 1 on biases, as its code)
    friendly  eps = rho d / ||d||,  d = u - sigma m                F-SAM (Li et al. CVPR 2024, Alg. 1)
              m <- lambda m + (1 - lambda) u   (m: EMA of the ascent gradients, first m = u)
    random    eps ~ N(0, (rho ||w_f||)^2) per filter f             RWP (Li et al. 2022), no gradient read

(T acts elementwise; norms are over all perturbed parameters; "filter": a slice along a weight's
first axis, a whole tensor for 1-D parameters; for `random` rho is RWP's gamma, a standard
deviation relative to the filter's norm.) A rule is an object with

    needs_gradient   whether it reads u (a rule that does not saves the ascent backward pass)
    capturable       whether it runs without reading a value back to the host (CUDA graphs)
    __call__(params, u, rhos, model, skip=None) -> eps, one tensor per parameter (it may reuse u's
                     storage); skip (N,) bool, stacked models only: members whose perturbed pass
                     does not count (ImbSAM without a tail sample), whose state must not change
    state_dict() / load_state_dict(d)   what a resumed run needs (per-parameter tensors (N, ...)
                     and per-member values (N, 1) for a stacked model, so that models/stacked.py
                     slices them per member)

Norms are taken per member when `model` is stacked (optim/members.py), so a rule's eps for
member k is the eps that member k alone would get. A rule's parameters are keys of the `optim`
section prefixed with its name (`asam_eta`, `friendly_sigma`, `friendly_momentum`,
`random_seed`: `RuleOptions`); one that is set for a rule other than `perturb` is an error, never
silently ignored. A new rule is one class here and one entry in RULES (plus its option fields).
"""
import inspect
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Sequence

import torch

from core.errors import OptionError
from core.options import opt, require
from optim.base import PerturbOptions
from optim.members import broadcast, members, total_norm


def normalised(u: List[torch.Tensor], rhos: Sequence[float], model) -> List[torch.Tensor]:
    """rho u / (||u||_2 + 1e-12), in u's storage: one norm over every tensor (per member)."""
    norm = total_norm(u, model) + 1e-12                    # a scalar, or (N,) per member
    return [g.mul_(broadcast(rho / norm, g)) for g, rho in zip(u, rhos)]


class Stateless:
    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state: Dict) -> None:
        pass


class SAMRule(Stateless):
    """SAM's first-order solution of max_{||eps|| <= rho} L_c(w + eps) (Foret et al. 2021, Eq. 2;
    Focal-SAM's Eq. 7): eps = rho u / (||u||_2 + 1e-12), one norm over every perturbed parameter."""
    needs_gradient, capturable = True, True

    def __call__(self, params, u, rhos, model, skip=None):
        return normalised(u, rhos, model)


class ASAMRule(Stateless):
    """ASAM's adaptive sharpness (Kwon et al. 2021, Eq. 9): the SAM solution in the space
    rescaled by T_w = |w| + eta (elementwise), eps = rho T^2 u / ||T u||, so that a rescaling of
    the weights that leaves the loss unchanged leaves the sharpness unchanged. As the official
    code (SamsungLabs/ASAM asam.py, which scales the parameters named "weight"), biases keep
    T = 1 (eps = rho u / ||T u|| on them); docs/sam_family.md."""
    needs_gradient, capturable = True, True

    def __init__(self, eta: float = 0.01):
        require("asam_eta", eta >= 0, "must be >= 0 (ASAM: T_w = |w| + eta)", eta)
        self.eta = eta

    def __call__(self, params, u, rhos, model, skip=None):
        bias = {id(p) for n, p in model.named_parameters() if n.endswith("bias")}
        t = [None if id(p) in bias else p.detach().abs().add_(self.eta) for p in params]
        tu = [g if ti is None else g.mul_(ti) for g, ti in zip(u, t)]                    # T u
        eps = normalised(tu, rhos, model)                                                  # rho T u / ||T u||
        return [e if ti is None else e.mul_(ti) for e, ti in zip(eps, t)]


class FriendlyRule:
    """F-SAM (Li et al. CVPR 2024): the ascent gradient minus sigma times an EMA of the past
    ascent gradients (the estimate of the full-batch gradient), normalised as SAM.

    As the official code (nblt/F-SAM utils.py `FriendlySAM.first_step`): d = u - sigma m_{t-1},
    then m_t = lambda m_{t-1} + (1 - lambda) u, with m initialised to the first u (so the first
    step is SAM's). The paper's Algorithm 1 subtracts sigma m_t (after the update); for sigma = 1,
    its setting, the two directions are the same: g - m_t = lambda (g - m_{t-1}).

    The EMA is optimizer state (`state_dict`): one tensor per perturbed parameter and a flag
    "seen" per member ((N, 1) for a stacked model, sliced per member like the momentum buffers).
    It changes at every step that perturbs (not at steps the fp16 scaler skips, nor for ImbSAM
    batches without a tail sample: `skip` marks such members of a stacked model)."""
    needs_gradient, capturable = True, True

    def __init__(self, sigma: float = 1.0, momentum: float = 0.6):
        require("friendly_sigma", sigma >= 0, "must be >= 0 (F-SAM: weight of the removed full gradient)", sigma)
        require("friendly_momentum", 0 <= momentum < 1, "must be in [0, 1) (F-SAM: EMA factor lambda)", momentum)
        self.sigma, self.momentum = sigma, momentum
        self.ema: Optional[List[torch.Tensor]] = None
        self.seen: Optional[torch.Tensor] = None

    def __call__(self, params, u, rhos, model, skip=None):
        if self.ema is None:
            self.ema = [torch.zeros_like(g) for g in u]
            self.seen = torch.zeros(max(members(model), 1), 1, dtype=torch.bool, device=u[0].device)
        self.ema = [m.to(g) for m, g in zip(self.ema, u)]    # a loaded state onto the device (no-op after)
        self.seen = self.seen.to(u[0].device)
        seen = per_member(self.seen, model)
        counts = torch.ones_like(seen) if skip is None else ~skip.to(seen.device)
        for g, m in zip(u, self.ema):
            s, c = broadcast(seen, g), broadcast(counts, g)
            d = torch.where(s, g - self.sigma * m, g)                     # u - sigma m_{t-1}; the first: u
            m.copy_(torch.where(c, torch.where(s, self.momentum * m + (1.0 - self.momentum) * g, g), m))
            g.copy_(d)
        self.seen |= counts.view(-1, 1)
        return normalised(u, rhos, model)

    def state_dict(self) -> Dict:
        return {} if self.ema is None else {"ema": {str(i): m for i, m in enumerate(self.ema)}, "seen": self.seen}

    def load_state_dict(self, state: Dict) -> None:
        ema = state.get("ema")
        self.ema = None if ema is None else [ema[str(i)].clone() for i in range(len(ema))]
        self.seen = None if ema is None else state["seen"].reshape(-1, 1).clone()


class RandomRule:
    """RWP's filter-wise random weight perturbation (Li et al. 2022, "Efficient generalization
    improvement guided by random weight perturbation", nblt/RWP): each filter f (a slice along a
    weight's first axis; a 1-D parameter as a whole) gets Gaussian noise of standard deviation
    rho ||w_f||. No gradient is read, so the weighted step runs no ascent backward pass.

    The noise z comes from a generator on the parameters' device seeded by seed * 1_000_003 +
    (perturbations so far): the same on every DDP rank, and after a resume (the count is state,
    one per member of a stacked model, (N, 1), so that each member draws what it would alone)."""
    needs_gradient, capturable = False, False   # a new seed every step: a graph would replay one noise

    def __init__(self, seed: int = 0):
        require("random_seed", seed >= 0, "must be >= 0", seed)
        self.seed, self.counts = seed, None

    def __call__(self, params, u, rhos, model, skip=None):
        n = members(model)
        if self.counts is None:
            self.counts = torch.zeros(max(n, 1), 1, dtype=torch.long)
        draws = [self.draw(params, int(count), n > 0) for count in self.counts.view(-1)]   # per member
        eps = []
        for i, (p, rho) in enumerate(zip(params, rhos)):
            z = torch.stack([d[i] for d in draws]) if n else draws[0][i]
            eps.append(z.mul_(rho * filter_norms(p.detach(), int(n > 0))))
        self.counts += 1 if skip is None else (~skip).view(-1, 1).long().cpu()
        return eps

    def draw(self, params, count: int, stacked: bool) -> List[torch.Tensor]:
        """z ~ N(0, I) shaped like each parameter (of one member)."""
        g = torch.Generator(device=params[0].device).manual_seed(self.seed * 1_000_003 + count)
        return [torch.randn(p.shape[int(stacked):], generator=g, device=p.device, dtype=p.dtype) for p in params]

    def state_dict(self) -> Dict:
        return {} if self.counts is None else {"counts": self.counts}

    def load_state_dict(self, state: Dict) -> None:
        counts = state.get("counts")
        self.counts = None if counts is None else counts.reshape(-1, 1).long().clone()


def per_member(flags: torch.Tensor, model) -> torch.Tensor:
    """A per-member state (N, 1) as (N,) for a stacked model, as a scalar for one model."""
    return flags.view(-1) if members(model) else flags.view(())


def filter_norms(w: torch.Tensor, stacked: int) -> torch.Tensor:
    """||w_f||, shaped to broadcast against w: per slice of the first axis for a weight of two or
    more axes, over the whole tensor for a 1-D (or scalar) one; a stacked tensor's leading member
    axis is kept."""
    own = w.dim() - stacked
    dims = tuple(range(stacked + (own > 1), w.dim()))
    return torch.linalg.vector_norm(w, dim=dims, keepdim=True) if dims else w.abs()


RULES = {"sam": SAMRule, "asam": ASAMRule, "friendly": FriendlyRule, "random": RandomRule}


def rule_default(option: str):
    """The default of a rule's option (`asam_eta` -> ASAMRule's eta): one source for the
    constructor and the options class."""
    rule, _, param = option.partition("_")
    return inspect.signature(RULES[rule]).parameters[param].default


def rule_options(values: Dict) -> Dict:
    """The entries of `values` that are rule options (`<rule>_<param>`)."""
    return {k: v for k, v in values.items() if k.partition("_")[0] in RULES and "_" in k}


def build_rule(name: str, **options):
    """The rule `name` from its options (`<name>_<param>` keywords). An option of another rule
    that differs from its default would be ignored: an OptionError names it."""
    require("perturb", name in RULES, f"must be one of {sorted(RULES)}", name)
    for key, value in options.items():
        rule = key.partition("_")[0]
        if rule != name and value != rule_default(key):
            raise OptionError(key, f"is read only with perturb: {rule} (perturb is {name}); remove it or set "
                                   f"perturb: {rule}")
    return RULES[name](**{k.partition("_")[2]: v for k, v in options.items() if k.partition("_")[0] == name})


def check_rule_mode(perturb: str, perturbation: str) -> None:
    """F-SAM's EMA is one state for all replicas only when they perturb along one (global) gradient."""
    require("perturb", perturb != "friendly" or perturbation == "global",
            "friendly needs perturbation: global (each replica's own EMA could not be saved and resumed as one)",
            perturb)


def pop_rule_options(kwargs: Dict) -> Dict:
    """Remove the rule options from a constructor's keyword arguments and return them."""
    return {k: kwargs.pop(k) for k in list(rule_options(kwargs))}


class KeepAscent:
    """A rule that also keeps the u it was given (summed over the replicas, unscaled), for
    updates that use the gradient at w besides eps (GSAM, LookSAM). `u` is None until called."""

    def __init__(self, rule):
        self.rule, self.u = rule, None
        self.needs_gradient, self.capturable = rule.needs_gradient, rule.capturable

    def __call__(self, params, u, rhos, model, skip=None):
        self.u = [g.clone() for g in u]
        return self.rule(params, u, rhos, model, skip)

    def state_dict(self) -> Dict:
        return self.rule.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        self.rule.load_state_dict(state)


@dataclass(frozen=True)
class RuleOptions(PerturbOptions):
    """The methods with a perturbation rule: which rule, and each rule's parameters."""
    perturb: Literal[tuple(RULES)] = opt("sam", "perturbation rule: sam, asam, friendly or random "
                                                "(optim/perturbations.py)")
    asam_eta: float = opt(rule_default("asam_eta"), "perturb asam: eta of T_w = abs(w) + eta, >= 0 (official 0.01)")
    friendly_sigma: float = opt(rule_default("friendly_sigma"),
                                "perturb friendly: weight sigma of the removed EMA gradient, >= 0 (F-SAM: 1)")
    friendly_momentum: float = opt(rule_default("friendly_momentum"),
                                   "perturb friendly: EMA factor lambda in [0, 1) (F-SAM's CIFAR run.sh: 0.6)")
    random_seed: int = opt(rule_default("random_seed"), "perturb random (and rwp): seed of the noise, >= 0")

    def check(self) -> None:
        super().check()
        build_rule(self.perturb, **rule_options(vars(self)))
        check_rule_mode(self.perturb, self.perturbation)
