"""Typed options of a component: frozen dataclasses whose fields carry a one-line doc.

    @dataclass(frozen=True)
    class FocalSAMOptions(PerturbOptions):
        gamma: float = opt(2.0, "focusing exponent on (1 - pi_k)")

The config loader (engine/config.py) builds a section from the chosen component's class, and
`describe` turns the classes into the option tables of `train.py --options` and the README.
"""
import dataclasses
from typing import Iterator, Tuple

from core.errors import OptionError

FLOAT32_MAX = 3.4028234663852886e38   # option values end up in float32 tensors (lr, rho, weights)


def opt(default, doc: str):
    """A dataclass field with its default and a one-line description."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("options are immutable: use a tuple")
    return dataclasses.field(default=default, metadata={"doc": doc})


def require(key: str, ok: bool, need: str, value) -> None:
    """The one shape of a value check: OptionError(key, '<need>, got <value>') unless ok."""
    if not ok:
        raise OptionError(key, f"{need}, got {value!r}")


def check_finite(key: str, value) -> None:
    """A float option must be a number float32 can hold: YAML reads .nan and .inf as floats, and
    1e300 is finite for Python but overflows once PyTorch applies it."""
    require(key, abs(value) <= FLOAT32_MAX, "must be a finite number (float32 range)", value)


class Checked:
    """Options that check their own values when they are built, through `check()`: a component's
    options class calls there the validators its library constructor calls, so a config and a
    direct call are refused alike (the config loader names the section and key). Every float
    field is checked finite first."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):
                check_finite(f.name, value)
        self.check()

    def check(self) -> None:
        """Subclasses: raise OptionError(key, what is wrong) for a bad value (call super().check())."""


def own_fields(options, base: type) -> dict:
    """The values of the fields that `options` declares beyond those of `base` (its section's
    common keys): what a component's constructor takes as its own keyword arguments."""
    common = {f.name for f in dataclasses.fields(base)}
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name not in common}


def describe(cls, skip: Tuple[str, ...] = ()) -> Iterator[Tuple[str, object, str]]:
    """(key, default, doc) of every field of `cls` not in `skip`."""
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            yield f.name, f.default, f.metadata.get("doc", "")
