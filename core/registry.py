"""The one shape of every registry: YAML name -> builder, plus the config keys it reads.

Each folder (`models/`, `losses/`, `optim/`, `data/`) keeps a plain dict of `Component`s keyed by
the name written in YAML. `uses` lists the section keys that only this component reads (keys
marked `option` in the schema); the config loader rejects an option that the chosen component
would silently ignore. `requires` lists (key path, value, reason) that the rest of the config
must satisfy when this component is chosen (LDAM needs the cosine classifier).
"""
import difflib
from dataclasses import dataclass
from typing import Callable, Mapping

from core.errors import ConfigError


@dataclass(frozen=True)
class Component:
    build: Callable
    uses: tuple = ()
    requires: tuple = ()


def lookup(registry: Mapping[str, Component], name: str, path: str, kind: str) -> Component:
    """Return the registered component or fail with the valid names and the closest one."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(str(name), list(registry), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(path, f"unknown {kind} '{name}'{hint}; choose one of: {', '.join(sorted(registry))}")
