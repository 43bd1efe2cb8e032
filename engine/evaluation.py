"""Evaluation: the predictions of a model (or of stacked members) over a test set, gathered from
every rank; the report of each; and a trained run loaded back from its checkpoint through the one
assembly (`build_run`), which eval.py, the OOD evaluation and the analysis tools all use."""
import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from core.errors import UserError, mismatch_reason
from engine import distributed as dist_utils
from engine.build import Run, build_run
from engine.checkpoint import check_class_counts, load_checkpoint
from engine.config import Config
from engine.guards import NonFiniteLoss, check_finite_report
from engine.loaders import eval_loader
from engine.metrics import summarize
from engine.report import git_revision, report_line, write_json
from optim.base import AMP_DTYPES
from optim.members import members


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


@dataclass
class TrainedRun:
    """A run built from its config with the trained weights of `checkpoint` loaded (eval mode)."""
    run: Run
    state: dict            # the checkpoint (epoch, class counts, ...)
    checkpoint: str

    @property
    def model(self):
        return self.run.model

    @property
    def epochs_trained(self) -> Optional[int]:
        return self.state.get("epoch")


def load_trained(cfg: Config, checkpoint: str, device: torch.device, load_data: bool = True) -> TrainedRun:
    """The one way back from a checkpoint: build the config's run (the checkpoint holds every
    weight, so a CLIP model is built without its weights file), check that it was trained on
    these class counts, load the weights. `load_data=False` reads no image: the counts are the
    checkpoint's."""
    state = load_checkpoint(checkpoint)
    counts = state.get("class_counts")
    if not load_data and not counts:
        raise UserError(f"{checkpoint} records no class counts; it was not written by train.py")
    run = build_run(cfg, device, load_data=load_data, class_counts=None if load_data else counts,
                    trained_state=state["model"])
    check_class_counts(state, run.class_counts, checkpoint)
    try:
        run.model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{checkpoint} does not match model '{cfg.model.name}' with {len(run.class_counts)} "
                        f"classes ({mismatch_reason(e)})") from None
    run.model.to(device).eval()
    return TrainedRun(run, state, checkpoint)


def evaluate_checkpoint(cfg: Config, checkpoint: str, out_path: str) -> dict:
    """Evaluate the weights in `checkpoint` on the config's test set; write the report to out_path."""
    info = dist_utils.init_distributed(cfg.train.device, cfg.train.dist_timeout_minutes)
    try:
        trained = load_trained(cfg, checkpoint, info.device)
        splits = trained.run.splits
        loader = eval_loader(splits.test, cfg.train.eval_batch_size, info, cfg.data)
        report = evaluate(trained.model, loader, info, splits.class_counts, cfg.data, cfg.train.amp)
        try:
            check_finite_report(report)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e}; the weights in {checkpoint} are not usable") from None
        report.update(class_counts=splits.class_counts, class_names=splits.class_names,
                      checkpoint=os.path.abspath(checkpoint), epochs_trained=trained.epochs_trained,
                      git_revision=git_revision(), run={"dataset": cfg.data.name, "model": cfg.model.name,
                                                        "loss": cfg.loss.name, "optim": cfg.optim.name, "seed": cfg.seed})
        if info.is_main:
            write_json(out_path, report)
            print(f"{report_line(report)}  -> {out_path}", flush=True)
        return report
    finally:
        dist_utils.cleanup()
