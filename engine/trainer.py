"""The one trainer: `fit` builds everything from the config and runs epochs; `train_one_epoch`
and `evaluate` do the work. Nothing here branches on the method: every optimizer runs its own
passes inside `optimizer.step(model, images, targets, criterion)`."""
import math
import os
import sys
import time

import torch
import torch.distributed
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from core.errors import UserError
from engine import distributed as dist_utils
from engine.build import build_run
from engine.checkpoint import TRAINING_KEYS, load_checkpoint, mismatch_reason, save_checkpoint
from engine.config import Config, config_to_dict
from engine.guards import NonFiniteLoss, check_finite_report, check_finite_state, stop_note
from engine.loaders import eval_loader, train_loader
from engine.metrics import summarize
from engine.report import RunWriter, git_revision, write_json, write_yaml
from optim.base import AMP_DTYPES

CHECK_EVERY = 20  # steps between host-side checks of the running loss (each one syncs the GPU)




def progress_enabled(setting: str, info) -> bool:
    if not info.is_main or setting == "off":
        return False
    return setting == "on" or (sys.stderr.isatty() and not os.environ.get("CI"))


def train_one_epoch(model, optimizer, criterion, loader, epoch: int, cfg_train, info, checkpoint_note: str) -> dict:
    """One pass over the (sharded) training set; returns the epoch's mean loss and accuracy (%)."""
    model.train()
    steps = len(loader) if cfg_train.max_steps_per_epoch is None else min(len(loader), cfg_train.max_steps_per_epoch)
    totals = torch.zeros(2, dtype=torch.float64, device=info.device)  # loss sum, correct (on device: no sync)
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
        totals += torch.stack([loss.double() * len(targets), (logits.argmax(1) == targets).sum().double()])
        seen += len(targets)
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
            loss_sum = totals[0].item()
            if not math.isfinite(loss_sum):
                raise NonFiniteLoss(f"non-finite training loss in epoch {epoch}, steps {checked}-{step}; "
                                    f"{checkpoint_note}")
            checked = step + 1
            if bar is not None:
                bar.update(step + 1 - bar.n)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
    if bar is not None:
        bar.close()
    totals = torch.cat([totals, torch.tensor([float(seen)], dtype=torch.float64, device=info.device)])
    if info.distributed:
        dist_utils.all_reduce_sum_([totals])
    loss_sum, correct, seen = totals.tolist()
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": 100.0 * correct / max(seen, 1)}


@torch.no_grad()
def predict(model, loader, info, amp: str = "none"):
    """(predictions, confidences, labels) over the whole test set, gathered from every rank."""
    was_training = model.training
    model.eval()
    preds, confs, labels = [], [], []
    dtype = AMP_DTYPES[amp]
    for images, targets in loader:
        with torch.autocast(info.device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(images.to(info.device, non_blocking=True))
        conf, pred = F.softmax(logits.float(), dim=1).max(dim=1)
        preds.append(pred)
        confs.append(conf)
        labels.append(targets.to(info.device))
    model.train(was_training)
    cat = lambda xs, dt: torch.cat(xs) if xs else torch.zeros(0, dtype=dt, device=info.device)
    out = [dist_utils.gather_variable(cat(x, dt)) for x, dt in
           ((preds, torch.long), (confs, torch.float32), (labels, torch.long))]
    return [t.cpu().numpy() for t in out]


def evaluate(model, loader, info, class_counts, data_cfg, amp: str = "none") -> dict:
    """The evaluation report (percent): balanced top-1, head / medium / tail, per-class, ECE."""
    if info.distributed:
        dist_utils.broadcast_buffers(model)  # every rank evaluates rank 0's BN statistics
    preds, confs, labels = predict(model, loader, info, amp)
    return summarize(preds, confs, labels, class_counts, data_cfg.head_threshold, data_cfg.tail_threshold)


def check_class_counts(state: dict, class_counts, path: str) -> None:
    """The checkpoint's training counts must be this config's: Head / Medium / Tail and the
    class-dependent losses and optimizers are functions of them."""
    if state.get("class_counts") != list(class_counts):
        raise UserError(f"{path} was trained on other class counts than this config's data "
                        f"({len(state.get('class_counts') or [])} classes there, {len(class_counts)} here, or other "
                        "counts); check data.name / data.imb_factor / the split lists")


def _restore(state: dict, model, optimizer, class_counts, path: str) -> None:
    check_class_counts(state, class_counts, path)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise UserError(f"{path} does not match this config's model or optimizer ({mismatch_reason(e)})") from None


def _wrap_distributed(model, cfg, info):
    """DDP around the model under torchrun (SyncBatchNorm first when asked); the model itself otherwise.
    With train.compile=model the module the optimizer steps is torch.compile'd, inside DDP, so the
    optimizers still see the DDP module and reduce gradients themselves; checkpoints and
    evaluation use the eager `model`, which shares its parameters and buffers.

    The optimizers run every pass under `no_sync()` and reduce gradients themselves (optim/base.py);
    DDP still broadcasts rank 0's parameters at construction and its buffers before each forward.
    """
    if not info.distributed:
        return torch.compile(model) if cfg.train.compile == "model" else model
    if cfg.train.sync_bn:
        if info.device.type != "cuda":
            raise UserError("train.sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU kernel); "
                            "set train.sync_bn=false")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.train.compile == "model":
        model = torch.compile(model)
    return DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None)


def fit(cfg: Config, out_dir: str, resume: bool = False) -> dict:
    """Train `cfg` into `out_dir` (or continue it from out_dir/last.pt); return the final report."""
    info = dist_utils.init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
    try:
        return _fit(cfg, out_dir, resume, info)
    except RuntimeError as e:
        if info.distributed and dist_utils.is_communication_failure(e):
            raise UserError(f"rank {info.rank} lost contact with another rank ({str(e).splitlines()[0][:120]}); "
                            f"the last checkpoint in {out_dir} is kept: relaunch with --resume {out_dir}, or "
                            "give torchrun --max-restarts N to resume automatically") from None
        raise
    finally:
        dist_utils.cleanup()


def _fit(cfg: Config, out_dir: str, resume: bool, info) -> dict:
    run = build_run(cfg, info.device)
    splits, counts, model, criterion, optimizer = run.splits, run.class_counts, run.model, run.criterion, run.optimizer
    if info.distributed:  # DRW "weights" reduction: normalise over the global batch
        criterion.process_group = torch.distributed.group.WORLD
    ckpt_path = os.path.join(out_dir, "last.pt")
    start_epoch, elapsed, best = 0, 0.0, None
    if resume:
        state = load_checkpoint(ckpt_path, require=TRAINING_KEYS)
        _restore(state, model, optimizer, counts, ckpt_path)
        start_epoch, elapsed, best = state["epoch"], state["elapsed"], state.get("best_on_test")
        if info.is_main:
            print(f"resuming {out_dir} after epoch {start_epoch} of {cfg.train.epochs}", flush=True)
    elif info.is_main:
        os.makedirs(out_dir, exist_ok=True)
        write_yaml(os.path.join(out_dir, "config.yaml"), config_to_dict(cfg))
    dist_utils.barrier()

    net = _wrap_distributed(model, cfg, info)
    train_dl = train_loader(splits.train, cfg.train.batch_size, info, cfg.seed, cfg.data, cfg.train.drop_last)
    test_dl = eval_loader(splits.test, cfg.train.eval_batch_size, info, cfg.data)
    writer = RunWriter(out_dir, start_epoch, info.is_main)
    report = None
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            t0 = time.time()
            values = run.epoch_values.apply(epoch, optimizer, criterion)
            train_dl.sampler.set_epoch(epoch)
            splits.train.set_epoch(epoch)
            note = stop_note(ckpt_path, epoch, cfg, run.epoch_values)
            stats = train_one_epoch(net, optimizer, criterion, train_dl, epoch, cfg.train, info, note)
            check_finite_state(model, optimizer, epoch, note)   # never log or save NaN weights
            last = epoch == cfg.train.epochs - 1
            report = evaluate(model, test_dl, info, counts, cfg.data, cfg.train.amp) \
                if last or (epoch + 1) % cfg.train.eval_every == 0 else None
            if report is not None:
                check_finite_report(report, note)   # NaN outputs from finite weights (e.g. BN statistics)
            if report is not None and (best is None or report["top1"] > best["top1"]):
                best = {"top1": report["top1"], "epoch": epoch}
            seconds = time.time() - t0
            elapsed += seconds
            row = {"epoch": epoch, "lr": values["lr"], "rho": values["rho"], "drw": values["drw"], **stats,
                   **{k: (report or {}).get(k) for k in ("top1", "head", "medium", "tail", "ece")},
                   "epoch_seconds": seconds}
            writer.log_epoch(row)
            if info.is_main:
                _print_epoch(row, cfg.train.epochs)
                save_checkpoint(ckpt_path, {"epoch": epoch + 1, "elapsed": elapsed, "model": model.state_dict(),
                                            "optimizer": optimizer.state_dict(), "class_counts": list(counts),
                                            "config": config_to_dict(cfg), "best_on_test": best})
        if report is None:  # resumed a finished run: evaluate the final weights again
            report = evaluate(model, test_dl, info, counts, cfg.data, cfg.train.amp)
    finally:
        writer.close()
    final = {**report, "class_counts": list(counts), "class_names": splits.class_names, "epochs": cfg.train.epochs,
             "wall_seconds": elapsed, "seconds_per_epoch": elapsed / max(1, cfg.train.epochs),
             "best_on_test": best, "world_size": info.world_size, "device": str(info.device),
             "git_revision": git_revision(),
             "run": {"dataset": cfg.data.name, "model": cfg.model.name, "loss": cfg.loss.name,
                     "optim": cfg.optim.name, "seed": cfg.seed}}
    check_finite_report(final, note if cfg.train.epochs > start_epoch else "the checkpoint is not usable")
    if info.is_main:
        write_json(os.path.join(out_dir, "final.json"), final)
        print(f"final: top1 {final['top1']:.2f}  head {_fmt(final['head'])}  medium {_fmt(final['medium'])}  "
              f"tail {_fmt(final['tail'])}  ece {final['ece']:.2f}  -> {os.path.join(out_dir, 'final.json')}",
              flush=True)
    return final


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _print_epoch(row: dict, epochs: int) -> None:
    rho = "" if row["rho"] is None else f" rho {row['rho']:.3g}"
    test = "" if row["top1"] is None else (f" | top1 {row['top1']:.2f} head {_fmt(row['head'])} "
                                           f"med {_fmt(row['medium'])} tail {_fmt(row['tail'])}")
    print(f"epoch {row['epoch'] + 1}/{epochs} lr {row['lr']:.4g}{rho} loss {row['train_loss']:.4f} "
          f"train {row['train_acc']:.2f}%{test} ({row['epoch_seconds']:.1f}s)", flush=True)


def evaluate_checkpoint(cfg: Config, checkpoint: str, out_path: str) -> dict:
    """Evaluate the weights in `checkpoint` on the config's test set; write the report to out_path."""
    info = dist_utils.init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
    try:
        state = load_checkpoint(checkpoint)
        run = build_run(cfg, info.device)
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
            print(f"top1 {report['top1']:.2f}  head {_fmt(report['head'])}  medium {_fmt(report['medium'])}  "
                  f"tail {_fmt(report['tail'])}  ece {report['ece']:.2f}  -> {out_path}", flush=True)
        return report
    finally:
        dist_utils.cleanup()
