"""Downloading public split lists and writing list files atomically.

`http_get` is the only function here that touches the network, so tests replace it. A list is
downloaded into memory and checked before `write_atomic` puts it in place: a failed download or
check never leaves a partial file where the trainer would read it.
"""
import http.client
import os
import urllib.error
import urllib.request
from typing import Sequence, Tuple

from core.errors import UserError
from core.files import WriteFailed, write_text


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


def write_atomic(path: str, text: str) -> None:
    """`text` put in place atomically (core.files: the old file or the whole new one, never a
    part; '\n' line ends kept, as in the public lists), its folder made first."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_text(path, text)
    except (OSError, WriteFailed) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e).split(": ", 1)[-1]
        raise UserError(f"cannot write {path}: {reason}; choose a writable folder") from None
