"""Files every layer writes and reads the same way.

Every whole-file write goes through `atomic_write`: a temporary file unique to the writer in the
same folder, flushed and fsynced, renamed over the destination, then the folder fsynced, so a
crash or a full disk leaves the old file or the whole new one, never a part, and two writers
never share a temporary name. A signal that arrives meanwhile (Ctrl-C, SIGTERM) takes effect once
the file is in place. A write that fails raises WriteFailed: one line naming the file and the
reason.
"""
import contextlib
import json
import os
import signal
import tempfile
import threading
from typing import IO, Callable, Optional

from core.errors import UserError

TMP_SUFFIX = ".tmp"
RUN_REPORT = "final.json"     # a finished run's report, in its folder (engine/records.py writes it)


class WriteFailed(UserError):
    """A file could not be written (a full disk, a read-only folder)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a finished file gets the mode that open()
# would have given it (0666 less the umask), like every other file the user makes.
FILE_MODE = 0o666 & ~_umask()


def fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable (POSIX: the directory entry is data of the folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM that arrive inside the block take effect when it ends.

    Their handlers raise an exception wherever the main thread is; inside torch.save that is a
    Python callback of its C++ zip writer, which then failed with "unexpected pos" or aborted
    the process ("terminate called ... write to closed file"). Held, they are raised again
    (`signal.raise_signal`) once the file is complete and in place.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    # A signal the process ignores (SIGINT in a job started with `&` by a non-interactive shell)
    # stays ignored.
    caught = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in caught}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


def write_failed(path: str, error: OSError) -> WriteFailed:
    return WriteFailed(f"cannot write {path}: {error.strerror or error}")


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Call `write(file)` on a fresh temporary file next to `path`, then put it in place."""
    with signals_held():
        _atomic_write(path, write)


def _atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=TMP_SUFFIX)
    except OSError as e:
        raise write_failed(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        fsync_folder(folder)
    except OSError as e:
        _remove(tmp)
        raise write_failed(path, e) from None
    except BaseException:  # Ctrl-C mid-write: the destination stays as it was
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_text(path: str, text: str) -> None:
    """UTF-8, line ends as given (a list keeps its '\\n' on every platform)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def read_json(path: str):
    """The parsed content of a JSON file; UserError naming it when it cannot be read or parsed."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


def read_run_report(folder: str) -> Optional[dict]:
    """A run folder's final.json: None while the run has not finished; UserError when the file is
    there but cannot be read (torn, hand-edited)."""
    path = os.path.join(folder, RUN_REPORT)
    return read_json(path) if os.path.isfile(path) else None
