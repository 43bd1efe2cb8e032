"""AdaptFormer adapters (Chen et al., NeurIPS 2022) as LIFT uses them (Shi et al., ICML 2024).

Each transformer block gets a bottleneck MLP parallel to its own MLP, read from the same
residual stream x (the block's input to its MLP branch):

    x <- x + MLP(LN_2(x)) + s * Up(ReLU(Down(LN_a(x))))

with its own LayerNorm LN_a, Down: D -> r, Up: r -> D, and a learnable scalar s (initialised to
1). Up starts at zero, so a freshly adapted model computes exactly what the backbone computes.
The bottleneck r follows LIFT's rule, 2^max(0, floor(log2(C / (2 L)))) for C classes and L blocks
(ViT-B/16: 1 for CIFAR-10, 4 for CIFAR-100, 32 for ImageNet-LT, 256 for iNaturalist 2018), which
keeps the adapters smaller than the classifier.

Wiring: a block computes `x + ls_2(mlp(ln_2(x)))` (open_clip's ResidualAttentionBlock); the
adapter needs x itself, so the block's `ln_2` moves into the wrapper below and is replaced by an
identity. The block's own code is unchanged and the pretrained weights are loaded before wiring.
"""
import math
from typing import List

import torch
import torch.nn as nn


def lift_adapter_dim(num_classes: int, num_layers: int) -> int:
    """LIFT's bottleneck width: the largest power of two <= C / (2 L), at least 1."""
    return 2 ** max(0, int(math.floor(math.log2(num_classes / (2 * num_layers)))))


class AdaptFormer(nn.Module):
    """x (..., D) -> s * Up(ReLU(Down(LN(x)))), zero at initialisation."""

    def __init__(self, dim: int, bottleneck: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.scale = nn.Parameter(torch.ones(1))
        # Down: Kaiming init as for a ReLU layer; Up and both biases zero, so the branch is 0.
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(torch.relu(self.down(self.norm(x)))) * self.scale


class ParallelAdapterMLP(nn.Module):
    """Stands in for a block's `mlp` once its `ln_2` is an identity: mlp(norm(x)) + adapter(x)."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, adapter: AdaptFormer):
        super().__init__()
        self.norm, self.mlp, self.adapter = norm, mlp, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(x)) + self.adapter(x)


def add_adaptformer(blocks: nn.ModuleList, dim: int, bottleneck: int) -> List[AdaptFormer]:
    """Wire one AdaptFormer into each block of `blocks` (in place); return the adapters (they
    are registered inside the blocks, at `block.mlp.adapter`).

    Each block must compute `x + ls_2(mlp(ln_2(x)))` with an identity layer scale `ls_2` (the
    OpenAI CLIP blocks): a layer scale would also scale the adapter, which AdaptFormer does not do.
    """
    adapters = []
    for i, block in enumerate(blocks):
        if not isinstance(getattr(block, "ls_2", nn.Identity()), nn.Identity):
            raise ValueError(f"block {i} has a layer scale on its MLP branch; AdaptFormer wiring expects none")
        adapter = AdaptFormer(dim, bottleneck)
        block.mlp = ParallelAdapterMLP(block.ln_2, block.mlp, adapter)
        block.ln_2 = nn.Identity()
        adapters.append(adapter)
    return adapters
