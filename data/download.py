"""Downloading public split lists and writing list files atomically.

`http_get` is the only function here that touches the network, so tests replace it. A list is
downloaded into memory and checked before `write_atomic` puts it in place: a failed download or
check never leaves a partial file where the trainer would read it.
"""
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from typing import Sequence, Tuple

from core.errors import UserError


def http_get(url: str, timeout: float) -> bytes:
    """The body of `url`. Raises OSError (URLError, HTTPError, a timeout) or HTTPException."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _reason(error: Exception) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def fetch_text(urls: Sequence[str], timeout: float, hint: str) -> Tuple[str, str]:
    """-> (text, url) from the first of `urls` that answers; mirrors of one file, tried in order.

    If none answers, one UserError lists each URL's reason and ends with `hint` (what to do).
    """
    failures = []
    for url in urls:
        try:
            body = http_get(url, timeout)
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures.append(f"{url} ({_reason(e)})")
            continue
        try:
            return body.decode("utf-8"), url
        except UnicodeDecodeError:
            raise UserError(f"{url} did not return UTF-8 text; {hint}") from None
    raise UserError(f"download failed: {'; '.join(failures)}; {hint}")


def _file_mode() -> int:
    """The mode open() gives a new file: 0666 less the umask (mkstemp's files are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and os.replace, so a
    reader sees the old file or the whole new one, never a part. The file ends with the mode of
    any other file the user writes (a list is shared data, not a secret)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}; choose a writable folder") from None
    try:
        # newline="" keeps '\n' line ends on every platform, as in the public lists.
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise UserError(f"cannot write {path}: {e.strerror or e}; choose a writable folder") from None
    except BaseException:  # Ctrl-C while writing: the destination stays as it was
        os.unlink(tmp)
        raise
