"""Test-only: hold one run still after a given epoch's checkpoint, so that tests/test_slurm.py
kills its SLURM job at a known point of the training, whatever the machine's speed.

Python imports `sitecustomize` at start-up from PYTHONPATH; the test puts this folder first on
the PYTHONPATH of the jobs it submits and sets LTSAM_TEST_PAUSE=FOLDER|EPOCHS|MARKER. A train.py
process that has just checkpointed EPOCHS epochs of the run in FOLDER creates MARKER and sleeps
until it is killed; once MARKER exists (the requeued attempt) every run trains through.
"""
import os
import sys

_PAUSE = os.environ.get("LTSAM_TEST_PAUSE")

if _PAUSE and sys.argv and sys.argv[0].endswith("train.py"):
    import time

    from engine import records

    _folder, _epochs, _marker = _PAUSE.split("|")
    _end_epoch = records.RunRecord.end_epoch

    def _end_epoch_then_pause(self, epoch, *args, **kwargs):
        _end_epoch(self, epoch, *args, **kwargs)
        here = os.path.realpath(self.out_dir) == os.path.realpath(_folder)
        if here and epoch + 1 == int(_epochs) and not os.path.exists(_marker):
            with open(_marker, "w") as f:
                f.write(f"{os.getpid()}\n")
            while True:   # SIGTERM (the requeue) ends the run here, its checkpoint written
                time.sleep(1)

    records.RunRecord.end_epoch = _end_epoch_then_pause
