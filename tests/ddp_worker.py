"""Run under torchrun by tests/test_distributed.py: every optimizer for a few steps under DDP
(gloo, CPU, float64, a model without BatchNorm; then a GroupNorm and a BatchNorm model), each
rank on its shard x[rank::world] of the same global batches; rank 0 saves the final weights for
the test to compare with one process.

    torchrun --nproc_per_node 2 tests/ddp_worker.py OUT.pt
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engine import distributed as dist_utils          # noqa: E402
from reference import ConvBN, ConvGN, MLP, per_sample_ce                          # noqa: E402
from ddp_cases import CASES, NORM_CASES, batches, drw_weights_loss, image_batches, make_optimizer  # noqa: E402


def main(out_path: str) -> None:
    info = dist_utils.init_distributed("cpu")
    results = {}
    for name, mode in CASES:
        torch.manual_seed(0)
        model = MLP(head="linear").double()
        ddp = DistributedDataParallel(model)
        opt = make_optimizer(name, model, mode)
        for x, y in batches():
            opt.step(ddp, x[info.rank::info.world_size], y[info.rank::info.world_size], per_sample_ce)
        results[f"{name}/{mode}"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    # DRW weights reduction: normalised over the global batch, as one process on all of it.
    torch.manual_seed(0)
    model = MLP(head="linear").double()
    ddp, opt, loss = DistributedDataParallel(model), make_optimizer("focal_sam", model, "global"), \
        drw_weights_loss(dist.group.WORLD)
    for x, y in batches():
        opt.step(ddp, x[info.rank::info.world_size], y[info.rank::info.world_size], loss)
    results["drw_weights"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    # Models with a normalisation layer: GroupNorm (per sample) and BatchNorm (per rank's share).
    for norm, name in NORM_CASES:
        torch.manual_seed(0)
        model = (ConvGN if norm == "groupnorm" else ConvBN)().double()
        ddp = DistributedDataParallel(model)
        opt = make_optimizer(name, model, "global")
        for x, y in image_batches():
            opt.step(ddp, x[info.rank::info.world_size], y[info.rank::info.world_size], per_sample_ce)
        results[f"{norm}/{name}"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    # BN frozen in the perturbed pass under DDP: statistics = rank 0's buffers after its clean forward.
    torch.manual_seed(0)
    bn_model = ConvBN().double()
    start = {k: v.clone() for k, v in bn_model.state_dict().items()}
    ddp = DistributedDataParallel(bn_model)
    opt = make_optimizer("sam", bn_model, "global", bn_mode="freeze")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 5, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (8,), generator=g)
    opt.step(ddp, x[info.rank::info.world_size], y[info.rank::info.world_size], per_sample_ce)
    results["bn_freeze"] = {"start": start, "after": {k: v.clone() for k, v in bn_model.state_dict().items()},
                            "x0": x[0::info.world_size]}
    if info.is_main:
        torch.save(results, out_path)
    dist_utils.cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
