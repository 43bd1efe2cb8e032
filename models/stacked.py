"""N independent models of one architecture as one module, trained in one process (issue 17).

`StackedModels([m0, m1, ...])` holds every parameter and buffer of the N members stacked on a
leading axis (shape (N, ...)), under the members' own names, inside a copy of the members'
module tree; so `named_parameters()`, `modules()` (BatchNorm layers, biases) and an optimizer
built from `parameters()` look like one model whose tensors have an extra leading axis.
`forward(x)` takes one batch per member, x of shape (N, B, ...), and returns (N, B, ...): it runs
the member architecture once per member through `torch.func.functional_call` under `torch.vmap`,
so member k sees only its own weights, its own batch and its own BatchNorm statistics (the
running statistics are updated in place, per member, as in eager training). `forward_shared(x)`
gives every member the same batch (evaluation).

The members never interact: a loss that is a sum of per-member terms has, for member k's slice
of every parameter, exactly member k's gradient; any elementwise optimizer (SGD with momentum and
weight decay) then updates each member as if it ran alone. What is not elementwise (the
perturbation norm of SAM and its variants) is taken per member by the optimizers in `optim/`.

vmap runs the member architecture batched: its convolutions become grouped convolutions, so the
arithmetic differs from N separate models in rounding only (float32: about 1e-6 relative).
Models that draw random numbers in forward (dropout) are refused by vmap.
"""
import copy
from typing import Dict, List, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call


class StackedModels(nn.Module):
    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if len(models) < 2:
            raise ValueError("StackedModels needs at least two models")
        first = models[0]
        shapes = _shapes(first)
        for k, m in enumerate(models[1:], 1):
            if _shapes(m) != shapes:
                raise ValueError(f"model {k} does not have the architecture of model 0 "
                                 "(parameter or buffer names, shapes or dtypes differ)")
        self.members = len(models)
        self.stack = copy.deepcopy(first)
        with torch.no_grad():
            for name, p in first.named_parameters():
                owner, leaf = _owner(self.stack, name)
                tensors = [dict(m.named_parameters())[name].detach() for m in models]
                setattr(owner, leaf, nn.Parameter(torch.stack(tensors).clone(), requires_grad=p.requires_grad))
            for name, _ in first.named_buffers():
                owner, leaf = _owner(self.stack, name)
                setattr(owner, leaf, torch.stack([dict(m.named_buffers())[name] for m in models]).clone())
        # The architecture without storage: functional_call swaps in one member's tensors per call.
        # A list, so that it is not a submodule (its meta tensors are nobody's parameters).
        self._template: List[nn.Module] = [copy.deepcopy(first).to("meta")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, B, ...): member k's batch at x[k]; -> (N, B, ...)."""
        if x.shape[0] != self.members:
            raise ValueError(f"expected one batch per member: leading size {self.members}, got {tuple(x.shape)}")
        return self._vmapped(0)(*self._tensors(), x)

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, ...), the same batch for every member; -> (N, B, ...)."""
        return self._vmapped(None)(*self._tensors(), x)

    def _tensors(self):
        # Read at every call: optimizers may swap buffers (BatchNorm freeze) or move weights.
        return dict(self.stack.named_parameters()), dict(self.stack.named_buffers())

    def _vmapped(self, x_dim):
        template = self._template[0]
        template.train(self.training)

        def one(params, buffers, x):
            return functional_call(template, (params, buffers), (x,))
        return torch.vmap(one, in_dims=(0, 0, x_dim))

    # ------------------------------------------------------------------ one member's view
    def member_state_dict(self, k: int) -> Dict[str, torch.Tensor]:
        """Member k's state_dict, with the keys and shapes of the model it was built from."""
        return {name: t[k].detach().clone() for name, t in self.stack.state_dict().items()}

    def load_member_state_dict(self, k: int, state: Dict[str, torch.Tensor]) -> None:
        """Member k from a state_dict of one model (raises RuntimeError on missing, unexpected or
        mis-shaped keys, like nn.Module.load_state_dict)."""
        own = self.stack.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise RuntimeError(f"Missing key(s) in state_dict: {missing[:3]}. Unexpected key(s) in state_dict: "
                               f"{unexpected[:3]}.")
        for name, t in own.items():
            if tuple(state[name].shape) != tuple(t.shape[1:]):
                raise RuntimeError(f"size mismatch for {name}: copying a param with shape {tuple(state[name].shape)}, "
                                   f"the model has {tuple(t.shape[1:])}")
        with torch.no_grad():
            for name, t in own.items():
                t[k].copy_(state[name])


def _shapes(model: nn.Module):
    return [(n, tuple(t.shape), t.dtype) for n, t in list(model.named_parameters()) + list(model.named_buffers())]


def _owner(root: nn.Module, name: str):
    prefix, _, leaf = name.rpartition(".")
    return (root.get_submodule(prefix) if prefix else root), leaf



# --------------------------------------------------------------- an optimizer's state, per member
def member_optimizer_state(state: dict, k: int) -> dict:
    """Member k's part of the state_dict of an optimizer that steps a stacked model: every
    per-parameter tensor (N, ...) sliced at k, the rest (param groups, step counts, a loss
    scale) as it is; it loads into the optimizer of member k's model alone. Nested dicts (a
    wrapper's base optimizer, a perturbation rule's state) are sliced the same way."""
    def part(v):
        if isinstance(v, dict):
            return {key: part(x) for key, x in v.items()}
        return v[k].clone() if torch.is_tensor(v) and v.dim() > 0 else v
    return {key: (part(v) if key == "state" or isinstance(v, dict) else v) for key, v in state.items()}


def stacked_optimizer_state(states: Sequence[dict]) -> dict:
    """The inverse: one state_dict per member (as `member_optimizer_state` writes them, or each
    run's own) stacked into the stacked optimizer's. Hyper-parameters are member 0's."""
    first = states[0]

    def merge(values, path):
        v0 = values[0]
        if isinstance(v0, dict):
            keys = set(v0)
            for v in values[1:]:
                if not isinstance(v, dict) or set(v) != keys:
                    raise ValueError(f"optimizer state {path or 'root'} differs in structure between the members' "
                                     "checkpoints (a parameter with state in some of them only?)")
            return {key: merge([v[key] for v in values], f"{path}.{key}") for key in v0}
        if torch.is_tensor(v0) and v0.dim() > 0:
            return torch.stack(values)
        return v0
    return {key: (merge([s[key] for s in states], key) if isinstance(first[key], dict) else first[key])
            for key in first}
