"""The per-epoch values of a run (learning rate, the optimizer's param-group values such as rho,
DRW class weights), expanded once from the config and applied at the start of every epoch.
Because each value is a function of the epoch index alone, a resumed run sets exactly what the
uninterrupted run would have.

(`optim/schedules.py` holds the pure expansions, and each optimizer's options say which values
it schedules (`group_values`); this file applies them to a run's optimizer and loss.)"""
from typing import Sequence

from losses.drw import drw_weights
from optim.schedules import cosine_lr


class EpochValues:
    def __init__(self, cfg, class_counts: Sequence[int]):
        t = cfg.train
        self.lr = cosine_lr(cfg.optim.lr, t.epochs, t.warmup_epochs)
        self.groups = cfg.optim.group_values(self.lr)          # [{"rho": ...}, ...]; {} for plain SGD
        self.class_counts, self.drw_epoch, self.drw_beta = list(class_counts), cfg.loss.drw_epoch, cfg.loss.drw_beta

    def rho(self, epoch: int):
        """The radius in force at `epoch`, None without one (plain SGD: logged as none)."""
        return self.groups[epoch].get("rho")

    def apply(self, epoch: int, optimizer, criterion) -> dict:
        """Set this epoch's values on the optimizer's param groups and the loss; return them."""
        for group in optimizer.param_groups:
            group.update(lr=self.lr[epoch], **self.groups[epoch])
        criterion.set_class_weight(drw_weights(epoch, self.class_counts, self.drw_epoch, self.drw_beta))
        return {"lr": self.lr[epoch], "rho": self.rho(epoch),
                "drw": self.drw_epoch is not None and epoch >= self.drw_epoch}
