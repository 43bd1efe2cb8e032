"""User-facing errors: one line that says what is wrong and what to do.

Anything raised as `UserError` reaches the command line as a single `error: ...` line with exit
status 2, never as a traceback. Internal bugs keep their tracebacks.
"""


class UserError(Exception):
    """A problem the user can fix (bad config, missing data, corrupt checkpoint)."""


class ConfigError(UserError):
    """The configuration is invalid; the message names the key path."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"config error: {path}: {message}" if path else f"config error: {message}")
