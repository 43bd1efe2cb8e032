"""Typed options of a component: frozen dataclasses whose fields carry a one-line doc.

    @dataclass(frozen=True)
    class FocalSAMOptions(PerturbOptions):
        gamma: float = opt(2.0, "focusing exponent on (1 - pi_k)")

The config loader (engine/config.py) builds a section from the chosen component's class, and
`describe` turns the classes into the option tables of `train.py --options` and the README.
"""
import dataclasses
from typing import Iterator, Tuple


def opt(default, doc: str):
    """A dataclass field with its default and a one-line description."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("options are immutable: use a tuple")
    return dataclasses.field(default=default, metadata={"doc": doc})


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
