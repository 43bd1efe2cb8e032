"""User-facing errors: one line that says what is wrong and what to do.

Anything raised as `UserError` reaches the command line as a single `error: ...` line with exit
status 2, never as a traceback. Internal bugs keep their tracebacks.
"""


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, corrupt checkpoint).

    Raised inside a DataLoader worker, it reaches the main process re-built from the worker's
    whole traceback text; the constructor keeps only the original one-line message then.
    """

    def __init__(self, message: str = ""):
        text = str(message)
        if text.startswith("Caught ") and "Original Traceback" in text:
            last = text.rstrip().splitlines()[-1]
            text = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(text)


class ConfigError(UserError):
    """The configuration is invalid; the message names the key path."""

    def __init__(self, path: str, message: str):
        self.path = path
        Exception.__init__(self, f"config error: {path}: {message}" if path else f"config error: {message}")


class OptionError(ValueError):
    """A bad value of one option of a component: `key` is the constructor's keyword, which is
    also the option's name in its config section (the config loader prefixes the section)."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(f"{key} {message}")


def mismatch_reason(error: Exception) -> str:
    """The useful line of a load_state_dict error: which tensor and which shapes, or which keys.

    PyTorch's message starts with 'Error(s) in loading state_dict for X:' and lists the
    mismatches on the following lines; the first of those is what the user needs.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    details = [line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))]
    return brief(details[0] if details else (lines[0] if lines else type(error).__name__), 240)


def brief(reason: object, limit: int = 160) -> str:
    """The first non-empty line of an exception's text, cut at a word boundary to `limit` characters.

    Library errors (torchvision decoders, load_state_dict, gloo) can run to many lines; a one-line
    message keeps their first line, never half a word.
    """
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    text = lines[0] if lines else type(reason).__name__ if isinstance(reason, BaseException) else ""
    if len(text) <= limit:
        return text
    cut = text[:limit - 3].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + "..."
