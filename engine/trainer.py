"""The one trainer: `fit` builds everything from the config and runs epochs; `train_one_epoch`
and `evaluate` do the work. Nothing here branches on the method: every optimizer runs its own
passes inside `optimizer.step(model, images, targets, criterion)`."""
import math
import os
import sys
import time
from typing import List, Sequence

import torch
import torch.distributed
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from core.errors import ConfigError, UserError, mismatch_reason
from engine import distributed as dist_utils
from engine.build import build_run
from engine.capture import CapturedStep, why_not_capturable
from engine.group import build_group, train_batches
from engine.checkpoint import load_checkpoint
from engine.config import Config
from engine.guards import NonFiniteLoss, check_finite_report, check_finite_state
from engine.records import RunRecord, percent, same_epoch
from engine.loaders import eval_loader
from engine.metrics import summarize
from engine.report import git_revision, write_json
from optim.base import AMP_DTYPES
from optim.members import members

CHECK_EVERY = 20  # steps between host-side checks of the running loss (each one syncs the GPU)




def progress_enabled(setting: str, info) -> bool:
    if not info.is_main or setting == "off":
        return False
    return setting == "on" or (sys.stderr.isatty() and not os.environ.get("CI"))


def train_one_epoch(model, optimizer, criterion, loader, epoch: int, cfg_train, info, checkpoint_note) -> List[dict]:
    """One pass over the (sharded) training set; returns each member's mean loss and accuracy (%)
    (one dict for one model). `checkpoint_note`: what a stop says, one string per member."""
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
                    raise NonFiniteLoss(f"non-finite training loss in epoch {epoch}, steps {checked}-{step}; "
                                        f"{_member(checkpoint_note, k)}")
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


def _member(notes, k: int) -> str:
    return notes if isinstance(notes, str) else notes[k]


@torch.no_grad()
def predict(model, loader, info, amp: str = "none"):
    """(predictions, confidences, labels) over the whole test set, gathered from every rank; for
    a stacked model, predictions and confidences are (N, n): one row per member."""
    was_training = model.training
    model.eval()
    preds, confs, labels = [], [], []
    dtype = AMP_DTYPES[amp]
    stacked = members(model) > 0
    for images, targets in loader:
        images = images.to(info.device, non_blocking=True)
        with torch.autocast(info.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model.forward_shared(images) if stacked else model(images)
        conf, pred = F.softmax(logits.float(), dim=-1).max(dim=-1)
        preds.append(pred)
        confs.append(conf)
        labels.append(targets.to(info.device))
    model.train(was_training)
    cat = lambda xs, dt: torch.cat(xs, dim=-1) if xs else torch.zeros(0, dtype=dt, device=info.device)
    out = [dist_utils.gather_variable(cat(x, dt)) for x, dt in
           ((preds, torch.long), (confs, torch.float32), (labels, torch.long))]
    return [t.cpu().numpy() for t in out]


def evaluate_members(model, loader, info, class_counts, data_cfg, amp: str = "none") -> List[dict]:
    """The evaluation report (percent) of each member (one for one model): balanced top-1,
    head / medium / tail, per-class, ECE."""
    if info.distributed:
        dist_utils.broadcast_buffers(model)  # every rank evaluates rank 0's BN statistics
    preds, confs, labels = predict(model, loader, info, amp)
    if preds.ndim == 1:
        preds, confs = preds[None], confs[None]
    return [summarize(p, c, labels, class_counts, data_cfg.head_threshold, data_cfg.tail_threshold)
            for p, c in zip(preds, confs)]


def evaluate(model, loader, info, class_counts, data_cfg, amp: str = "none") -> dict:
    """The evaluation report of one model."""
    return evaluate_members(model, loader, info, class_counts, data_cfg, amp)[0]


def check_class_counts(state: dict, class_counts, path: str) -> None:
    """The checkpoint's training counts must be this config's: Head / Medium / Tail and the
    class-dependent losses and optimizers are functions of them."""
    if state.get("class_counts") != list(class_counts):
        raise UserError(f"{path} was trained on other class counts than this config's data "
                        f"({len(state.get('class_counts') or [])} classes there, {len(class_counts)} here, or other "
                        "counts); check data.name / data.imb_factor / the split lists")


def _restore(group, states: Sequence[dict], paths: Sequence[str]) -> None:
    for state, path in zip(states, paths):
        check_class_counts(state, group.class_counts, path)
    try:
        group.load_members(states)
    except (RuntimeError, KeyError, ValueError) as e:
        where = paths[0] if len(paths) == 1 else ", ".join(paths)
        raise UserError(f"{where} does not match this config's model or optimizer ({mismatch_reason(e)})") from None


def _compile(model):
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


def _wrap_distributed(model, cfg, info):
    """DDP around the model under torchrun (SyncBatchNorm first when asked); the model itself otherwise.
    With train.compile=model the module the optimizer steps is torch.compile'd, inside DDP, so the
    optimizers still see the DDP module and reduce gradients themselves; checkpoints and
    evaluation use the eager `model`, which shares its parameters and buffers.

    The optimizers run every pass under `no_sync()` and reduce gradients themselves (optim/base.py);
    DDP still broadcasts rank 0's parameters at construction and its buffers before each forward.
    """
    if not info.distributed:
        return _compile(model) if cfg.train.compile == "model" else model
    if cfg.train.sync_bn:
        if info.device.type != "cuda":
            raise UserError("train.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU kernel); "
                            "set train.sync_bn=false")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.compile == "model":
        model = _compile(model)
    return DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None)


def _stepper(optimizer, cfg, info):
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
    net = _wrap_distributed(model, cfg, info)
    stepper = _stepper(optimizer, cfg, info)
    train_dl = train_batches(group, info)
    test_dl = eval_loader(group.runs[0].splits.test, cfg.train.eval_batch_size, info, cfg.data)
    evaluate_all = lambda: evaluate_members(model, test_dl, info, counts, cfg.data, cfg.train.amp)
    reports = [None] * n
    try:
        for r in records:
            r.open(start_epoch)
        for epoch in range(start_epoch, cfg.train.epochs):
            t0 = time.time()
            values = group.epoch_values.apply(epoch, optimizer, criterion)
            if isinstance(stepper, CapturedStep):
                stepper.reset()      # the captured step baked in the last epoch's lr, rho and DRW weights
            train_dl.sampler.set_epoch(epoch)
            for run in group.runs:
                run.splits.train.set_epoch(epoch)
            notes = [r.note(epoch, group.epoch_values) for r in records]
            stats = train_one_epoch(net, stepper, criterion, train_dl, epoch, cfg.train, info, notes)
            check_finite_state(model, optimizer, epoch, "; ".join(notes))   # never log or save NaN weights
            evaluated = epoch == cfg.train.epochs - 1 or (epoch + 1) % cfg.train.eval_every == 0
            reports = evaluate_all() if evaluated else [None] * n
            seconds = time.time() - t0
            for k, r in enumerate(records):
                r.end_epoch(epoch, values, stats[k], reports[k], seconds, notes[k],
                            lambda k=k: group.member_state(k), counts)
        if reports[0] is None:  # resumed a finished run: evaluate the final weights again
            reports = evaluate_all()
        together = [c.seed for c in cfgs] if n > 1 else None
        return [r.finish(report, counts, run.splits.class_names, info,
                         notes[k] if cfg.train.epochs > start_epoch else "the checkpoint is not usable", together)
                for k, (r, report, run) in enumerate(zip(records, reports, group.runs))]
    finally:
        for r in records:
            r.close()


def evaluate_checkpoint(cfg: Config, checkpoint: str, out_path: str) -> dict:
    """Evaluate the weights in `checkpoint` on the config's test set; write the report to out_path."""
    info = dist_utils.init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
    try:
        state = load_checkpoint(checkpoint)
        run = build_run(cfg, info.device, trained_state=state["model"])   # the checkpoint holds every weight
        splits, model = run.splits, run.model
        check_class_counts(state, splits.class_counts, checkpoint)
        try:
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as e:
            raise UserError(f"{checkpoint} does not match model '{cfg.model.name}' with {splits.num_classes} "
                            f"classes ({mismatch_reason(e)})") from None
        loader = eval_loader(splits.test, cfg.train.eval_batch_size, info, cfg.data)
        report = evaluate(model, loader, info, splits.class_counts, cfg.data, cfg.train.amp)
        check_finite_report(report, f"the weights in {checkpoint} are not usable")
        report.update(class_counts=splits.class_counts, class_names=splits.class_names, checkpoint=os.path.abspath(checkpoint),
                      epochs_trained=state.get("epoch"), git_revision=git_revision(),
                      run={"dataset": cfg.data.name, "model": cfg.model.name, "loss": cfg.loss.name,
                           "optim": cfg.optim.name, "seed": cfg.seed})
        if info.is_main:
            write_json(out_path, report)
            print(f"top1 {report['top1']:.2f}  head {percent(report['head'])}  medium {percent(report['medium'])}  "
                  f"tail {percent(report['tail'])}  ece {report['ece']:.2f}  -> {out_path}", flush=True)
        return report
    finally:
        dist_utils.cleanup()
