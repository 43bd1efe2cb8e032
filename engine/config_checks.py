"""The engine's own value checks: its keys (`seed`, the `train` section) and the relations between
sections. Each component's options check their own values when they are built (core.options.Checked:
an optimizer's lr, a loss's beta, a dataset's sizes), with the validators its library constructor
calls; the loader turns their OptionError into the config error naming the key.

A negative epoch count, a device that does not exist or DRW after the last epoch would otherwise
start a run that fails minutes later inside PyTorch with a traceback.
"""
import re

from core.args import SEED_MAX   # numpy.random.seed and np.random.default_rng accept 0 .. 2**32 - 1
from core.errors import ConfigError, OptionError
from core.options import require

MAX_EPOCHS = 100_000              # schedules are expanded into one value per epoch at start-up
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_train(t) -> None:
    """The `train` section (engine/config.py TrainConfig), OptionError naming the key."""
    require("epochs", t.epochs >= 1, "must be >= 1", t.epochs)
    require("epochs", t.epochs <= MAX_EPOCHS, f"must be <= {MAX_EPOCHS:,}", t.epochs)
    for key in ("batch_size", "eval_batch_size", "eval_every"):
        require(key, getattr(t, key) >= 1, "must be >= 1", getattr(t, key))
    require("max_steps_per_epoch", t.max_steps_per_epoch is None or t.max_steps_per_epoch >= 1,
            "must be >= 1 or null", t.max_steps_per_epoch)
    require("warmup_epochs", 0 <= t.warmup_epochs < t.epochs, f"must be in [0, epochs={t.epochs})", t.warmup_epochs)
    require("device", bool(DEVICE.match(t.device)), "must be auto, cpu, cuda, cuda:N or mps", t.device)
    require("dist_timeout_minutes", t.dist_timeout_minutes > 0, "must be > 0 (minutes)", t.dist_timeout_minutes)
    require("loggers", len(set(t.loggers)) == len(t.loggers), "names a logger twice", list(t.loggers))
    unused = [k for k in ("wandb_entity", "wandb_group", "wandb_name") if getattr(t, k) is not None]
    if "wandb" not in t.loggers and (unused or t.wandb_project != type(t).wandb_project):
        raise OptionError(unused[0] if unused else "wandb_project",
                          "is read only with wandb in train.loggers; add wandb there or remove it")


def check_seed(seed: int) -> None:
    require("seed", 0 <= seed <= SEED_MAX, f"must be in 0..{SEED_MAX} (numpy's seed range)", seed)


def check_relations(cfg) -> None:
    """What one section's value requires of another's."""
    t = cfg.train
    if cfg.loss.drw_epoch is not None and not cfg.loss.drw_epoch < t.epochs:
        raise ConfigError("loss.drw_epoch", f"DRW would start at epoch {cfg.loss.drw_epoch}, "
                          f"outside the run's epochs 0..{t.epochs - 1}")
    try:
        cfg.optim.check_epochs(t.epochs)
    except OptionError as e:
        raise ConfigError(f"optim.{e.key}", e.message) from None
    if cfg.model.precision == "fp16" and t.amp != "none":
        raise ConfigError("model.precision", "fp16 holds the weights themselves in fp16 and trains them without "
                          f"autocast or loss scaler (the official code's --prec fp16); train.amp={t.amp} would "
                          "add both: set train.amp=none")
    reason = cfg.optim.why_not_compiled()
    if t.compile == "model" and reason:
        key, _, value = reason.partition("=")
        raise ConfigError(key, f"{value} cannot run through a compiled model (train.compile=model); change {key} "
                          "or set train.compile=none")
