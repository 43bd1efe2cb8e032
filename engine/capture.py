"""The whole optimizer step as one CUDA graph (`train.capture: step`).

A sharpness-aware step of a small model (ResNet-32, batch 64) launches hundreds of small kernels
for two forward and two or three backward passes, the perturbation and the SGD update; on a
fast GPU the launches, not the arithmetic, set the pace. A CUDA graph records them once and
replays them with one launch. What a graph replays is fixed at capture, so:

- inputs are copied into static tensors (same shape every step); a batch of another shape (the
  last, partial batch of an epoch unless train.drop_last) runs the eager step, the same math;
- Python numbers read during the step are baked in: the epoch's lr and rho, and the loss's
  per-epoch state (DRW weights). The trainer calls `reset()` after setting each epoch's values,
  and the next full batch is captured anew (one capture per epoch);
- the step must not wait on the host: optimizers whose step reads a value back (ImbSAM looks at
  each batch for a tail sample; fp16 checks the gradients for overflow; DDP's collectives here)
  are refused when the run is built (`why_not_capturable`).

The first `warmup` steps run eagerly on a side stream (they allocate the momentum buffers and
initialise the libraries, as CUDA graph capture requires); the captured step is then replayed
once for the batch it was captured on, so every batch is trained exactly once.
"""
from typing import Callable, Optional

import torch


def why_not_capturable(optimizer, amp: str, device: torch.device, distributed: bool) -> str:
    """'' when `optimizer.step` can be captured on this run, else what prevents it."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if distributed:
        return "the steps under torchrun synchronise across processes"
    if amp == "fp16":
        return "fp16 checks every step's gradients for overflow on the host (use bf16)"
    if not getattr(optimizer, "capturable", False):
        return f"{type(optimizer).__name__}'s step reads values back to the host (e.g. ImbSAM's tail check)"
    return ""


def record_cuda_graph(fn: Callable, model=None, optimizer=None):
    """Record `fn()` into a CUDA graph without running it: -> (replay, outputs of fn). (`model`
    and `optimizer`, whose state `fn` changes, are for stand-ins that must undo a real run.)"""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph.replay, outputs


class CapturedStep:
    """`step(model, images, targets, criterion)` like the optimizer's, replayed from a graph.

    `record(fn, model, optimizer) -> (replay, outputs)` records without running (`record_cuda_graph`);
    `side_stream()` is the context of the warm-up steps. Tests pass stand-ins for both to check
    the plumbing on the CPU.
    """

    def __init__(self, optimizer, warmup: int = 3, record: Optional[Callable] = None,
                 side_stream: Optional[Callable] = None):
        self.optimizer, self.warmup = optimizer, warmup
        self.record = record or record_cuda_graph
        self.side_stream = side_stream or _cuda_side_stream
        self.warmed = 0
        self.captures = 0          # how many graphs were recorded (tests, logs)
        self.reset()

    def reset(self) -> None:
        """Forget the graph: the epoch's lr, rho or loss state changed."""
        self.replay = self.key = self.static = self.outputs = None

    def step(self, model, images, targets, criterion):
        key = (tuple(images.shape), images.dtype, tuple(targets.shape), id(model), id(criterion))
        if self.replay is not None and key == self.key:
            self.static[0].copy_(images)
            self.static[1].copy_(targets)
            self.replay()
            return self.outputs
        if self.warmed < self.warmup:
            self.warmed += 1
            with self.side_stream():
                return self.optimizer.step(model, images, targets, criterion)
        if self.replay is not None:   # another shape than the captured one: the partial last batch
            return self.optimizer.step(model, images, targets, criterion)
        self.static = (images.clone(), targets.clone())
        self.replay, self.outputs = self.record(lambda: self.optimizer.step(model, *self.static, criterion),
                                                model, self.optimizer)
        self.key = key
        self.captures += 1
        self.replay()              # recording ran nothing: now train on this batch
        return self.outputs


class _cuda_side_stream:
    """Warm-up steps on a side stream, as torch.cuda.graph's documentation asks."""

    def __enter__(self):
        self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        self.ctx = torch.cuda.stream(self.stream)
        self.ctx.__enter__()

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        torch.cuda.current_stream().wait_stream(self.stream)
        return False
