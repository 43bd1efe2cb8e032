"""The one trainer: `fit` builds everything from the config and runs epochs; `start_epoch_setup` and
`train_one_epoch` do the work (engine/evaluation.py evaluates). Nothing here branches on the
method: every optimizer runs its own passes inside `optimizer.step(model, images, targets, criterion)`.

A failure is raised where it happens, as a fact (NonFiniteLoss: which epoch, which steps, which
tensor); `_fit` explains it once, where it is caught, with the run's last good checkpoint and the
likely cause in its config."""
import math
import os
import sys
import time
from typing import List, Sequence

import torch
import torch.distributed
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from core.errors import ConfigError, UserError, mismatch_reason
from engine import distributed as dist_utils
from engine.capture import CapturedStep, why_not_capturable
from engine.group import build_group, train_batches
from engine.checkpoint import check_class_counts
from engine.evaluation import evaluate_members
from engine.config import Config
from engine.guards import NonFiniteLoss, check_finite_state
from engine.records import RunRecord, same_epoch
from engine.loaders import eval_loader
from optim.members import members

CHECK_EVERY = 20  # steps between host-side checks of the running loss (each one syncs the GPU)




def progress_enabled(setting: str, info) -> bool:
    if not info.is_main or setting == "off":
        return False
    return setting == "on" or (sys.stderr.isatty() and not os.environ.get("CI"))


def start_epoch_setup(epoch: int, epoch_values, optimizer, criterion, train_dl, datasets, stepper) -> dict:
    """What every epoch starts with, for the trainer and the benchmark alike: the epoch's lr, rho
    and DRW weights set, the captured step forgotten (it baked in the last epoch's values), the
    sampler and the datasets' augmentation moved to this epoch. Returns the epoch's values."""
    values = epoch_values.apply(epoch, optimizer, criterion)
    if isinstance(stepper, CapturedStep):
        stepper.reset()
    train_dl.sampler.set_epoch(epoch)
    for dataset in datasets:
        dataset.set_epoch(epoch)
    return values


def train_one_epoch(model, optimizer, criterion, loader, epoch: int, cfg_train, info) -> List[dict]:
    """One pass over the (sharded) training set; returns each member's mean loss and accuracy (%)
    (one dict for one model). A non-finite loss raises NonFiniteLoss naming the steps (and the
    member of a stacked model)."""
    model.train()
    steps = len(loader) if cfg_train.max_steps_per_epoch is None else min(len(loader), cfg_train.max_steps_per_epoch)
    n = max(1, members(model))
    totals = torch.zeros(2, n, dtype=torch.float64, device=info.device)  # loss sum, correct (on device: no sync)
    seen = 0
    bar = None
    if progress_enabled(cfg_train.progress, info):
        from tqdm import tqdm
        bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
    checked = 0
    for step, (images, targets) in enumerate(loader):
        if step >= steps:
            break
        images = images.to(info.device, non_blocking=True)
        targets = targets.to(info.device, non_blocking=True)
        loss, logits = optimizer.step(model, images, targets, criterion)
        b = targets.shape[-1]
        totals += torch.stack([loss.double() * b, (logits.argmax(-1) == targets).sum(-1).double()]).view(2, n)
        seen += b
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
            loss_sums = totals[0].tolist()
            for k, loss_sum in enumerate(loss_sums):
                if not math.isfinite(loss_sum):
                    raise NonFiniteLoss(f"non-finite training loss in epoch {epoch}, steps {checked}-{step}",
                                        member=k if n > 1 else None)
            checked = step + 1
            if bar is not None:
                bar.update(step + 1 - bar.n)
                bar.set_postfix(loss=f"{sum(loss_sums) / n / seen:.4f}")
    if bar is not None:
        bar.close()
    totals = torch.cat([totals, torch.full((1, n), float(seen), dtype=torch.float64, device=info.device)])
    if info.distributed:
        dist_utils.all_reduce_sum_([totals])
    return [{"train_loss": loss_sum / max(seen, 1), "train_acc": 100.0 * correct / max(seen, 1)}
            for loss_sum, correct, seen in totals.t().tolist()]


def _restore(group, states: Sequence[dict], paths: Sequence[str]) -> None:
    for state, path in zip(states, paths):
        check_class_counts(state, group.class_counts, path)
    try:
        group.load_members(states)
    except (RuntimeError, KeyError, ValueError) as e:
        where = paths[0] if len(paths) == 1 else ", ".join(paths)
        raise UserError(f"{where} does not match this config's model or optimizer ({mismatch_reason(e)})") from None


def compile_model(model):
    """torch.compile for the sharpness steps, which run two backward passes through one forward
    (retain_graph=True: the clean gradient and the perturbation direction):
    - AOTAutograd's donated buffers forbid that ("compiled with non-empty donated buffers"):
      switched off (a private config, the only switch torch offers; it saves memory, not math);
    - compiled code left in the process by another model made a later model's compiled
      Focal-SAM step wrong on torch 2.14 (weights 0.014 off after 3 steps, ResNet-8 after a
      conv+BN model; `tests/test_compile.py`), so each compile starts from a clean dynamo state.
      The trainer compiles one model per process; this matters to tests and benchmarks."""
    import torch._functorch.config
    torch._functorch.config.donated_buffer = False
    torch._dynamo.reset()
    return torch.compile(model)


def wrap_model(model, cfg, info):
    """DDP around the model under torchrun (SyncBatchNorm first when asked); the model itself otherwise.
    With train.compile=model the module the optimizer steps is torch.compile'd, inside DDP, so the
    optimizers still see the DDP module and reduce gradients themselves; checkpoints and
    evaluation use the eager `model`, which shares its parameters and buffers.

    The optimizers run every pass under `no_sync()` and reduce gradients themselves (optim/base.py);
    DDP still broadcasts rank 0's parameters at construction and its buffers before each forward.
    """
    if not info.distributed:
        return compile_model(model) if cfg.train.compile == "model" else model
    if cfg.train.sync_bn:
        if info.device.type != "cuda":
            raise UserError("train.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU kernel); "
                            "set train.sync_bn=false")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.compile == "model":
        model = compile_model(model)
    return DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None)


def make_stepper(optimizer, cfg, info):
    """The optimizer, or (train.capture=step) its step replayed from a CUDA graph."""
    if cfg.train.capture != "step":
        return optimizer
    reason = why_not_capturable(optimizer, cfg.train.amp, info.device, info.distributed)
    if reason:
        raise ConfigError("train.capture", f"step cannot be captured here: {reason}; set train.capture=none")
    return CapturedStep(optimizer)


def fit(cfg: Config, out_dir: str, resume: bool = False) -> dict:
    """Train `cfg` into `out_dir` (or continue it from out_dir/last.pt); return the final report."""
    return fit_members([cfg], [out_dir], resume)[0]


def fit_members(cfgs: Sequence[Config], out_dirs: Sequence[str], resume: bool = False) -> List[dict]:
    """Train one run, or several seeds of one config in one process (engine/group.py), each into
    its own folder, exactly as if each ran alone; return their final reports."""
    info = dist_utils.init_distributed(cfgs[0].train.device, cfgs[0].train.dist_timeout_minutes)
    try:
        return _fit(list(cfgs), list(out_dirs), resume, info)
    except RuntimeError as e:
        if info.distributed and dist_utils.is_communication_failure(e):
            raise UserError(f"rank {info.rank} lost contact with another rank ({str(e).splitlines()[0][:120]}); "
                            f"the last checkpoint in {out_dirs[0]} is kept: relaunch with --resume {out_dirs[0]}, or "
                            "give torchrun --max-restarts N to resume automatically") from None
        raise
    finally:
        dist_utils.cleanup()


def _fit(cfgs: List[Config], out_dirs: List[str], resume: bool, info) -> List[dict]:
    n = len(cfgs)
    # first: a tracker that cannot start (wandb missing, a foreign W&B run id) stops before any work
    records = [RunRecord(c, d, "" if n == 1 else f"[seed {c.seed}] ", info.is_main, together=n)
               for c, d in zip(cfgs, out_dirs)]
    group = build_group(cfgs, info.device, info.distributed)
    model, criterion, optimizer, counts = group.model, group.criterion, group.optimizer, group.class_counts
    if info.distributed:  # DRW "weights" reduction: normalise over the global batch
        criterion.process_group = torch.distributed.group.WORLD
    start_epoch = 0
    if resume:
        states = [r.load() for r in records]
        start_epoch = same_epoch(states, records)
        _restore(group, states, [r.ckpt_path for r in records])
        if info.is_main:
            for d in out_dirs:
                print(f"resuming {d} after epoch {start_epoch} of {cfgs[0].train.epochs}", flush=True)
    else:
        for r in records:
            r.create()
    dist_utils.barrier()

    cfg = cfgs[0]   # the members' shared settings
    net = wrap_model(model, cfg, info)
    stepper = make_stepper(optimizer, cfg, info)
    train_dl = train_batches(group, info)
    test_dl = eval_loader(group.runs[0].splits.test, cfg.train.eval_batch_size, info, cfg.data)
    evaluate_all = lambda: evaluate_members(model, test_dl, info, counts, cfg.data, cfg.train.amp)
    reports, epoch = [None] * n, start_epoch
    try:
        for r in records:
            r.open(start_epoch)
        for epoch in range(start_epoch, cfg.train.epochs):
            t0 = time.time()
            values = start_epoch_setup(epoch, group.epoch_values, optimizer, criterion, train_dl,
                                       [run.splits.train for run in group.runs], stepper)
            stats = train_one_epoch(net, stepper, criterion, train_dl, epoch, cfg.train, info)
            check_finite_state(model, optimizer, epoch)   # never log or save NaN weights
            evaluated = epoch == cfg.train.epochs - 1 or (epoch + 1) % cfg.train.eval_every == 0
            reports = evaluate_all() if evaluated else [None] * n
            seconds = time.time() - t0
            for k, r in enumerate(records):
                with NonFiniteLoss.of_member(k):
                    r.end_epoch(epoch, values, stats[k], reports[k], seconds, lambda k=k: group.member_state(k),
                                counts)
        if reports[0] is None:  # resumed a finished run: evaluate the final weights again
            reports = evaluate_all()
        together = [c.seed for c in cfgs] if n > 1 else None
        finals = []
        for k, (r, report, run) in enumerate(zip(records, reports, group.runs)):
            with NonFiniteLoss.of_member(k):
                finals.append(r.finish(report, counts, run.splits.class_names, info, together))
        return finals
    except NonFiniteLoss as e:       # the fact, explained once: the good checkpoint and the likely cause
        stopped = records if e.member is None else [records[e.member]]
        if cfg.train.epochs <= start_epoch:
            raise NonFiniteLoss(f"{e}; the checkpoint is not usable") from None
        raise NonFiniteLoss(f"{e}; " + "; ".join(r.note(epoch, group.epoch_values) for r in stopped)) from None
    finally:
        for r in records:
            r.close()
