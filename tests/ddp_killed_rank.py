"""train.py whose rank 1 is killed (SIGKILL) as it starts epoch 3 of torchrun's first attempt: a
rank lost mid-run at a point fixed by the training, not by how fast the machine runs it (a test
that watched for the checkpoint from outside could miss every epoch on a busy machine).

    torchrun --nproc_per_node 2 --max-restarts N tests/ddp_killed_rank.py --config ... --out DIR
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine.trainer                                    # noqa: E402
import train                                             # noqa: E402
from engine.distributed import env_rank, restart_count   # noqa: E402

KILLED_EPOCH = 3   # rank 1 got here through epoch 2's collectives, so rank 0 has saved epochs 0 and 1 at least
real_train_one_epoch = engine.trainer.train_one_epoch


def dying(*args, **kwargs):
    if args[4] == KILLED_EPOCH and env_rank() == 1 and restart_count() == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_train_one_epoch(*args, **kwargs)


engine.trainer.train_one_epoch = dying

if __name__ == "__main__":
    train.main()
