"""The one shape of every registry: YAML name -> builder, plus the typed options it reads.

Each library folder (`models/`, `losses/`, `optim/`, `data/`) keeps a plain dict of `Component`s
keyed by the name written in YAML. `options` is a frozen dataclass holding EVERY key of the
component's config section with its default and a one-line doc (`core.options.opt`): the config
loader builds the section from it, so a key the chosen component would ignore is rejected, and
the defaults and the README's option tables come from this one place. `requires` lists
(key path, value, reason) that the rest of the config must satisfy when this component is chosen
(LDAM needs the cosine classifier).
"""
import difflib
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from core.errors import ConfigError


@dataclass(frozen=True)
class Component:
    build: Callable
    options: type
    requires: tuple = ()
    class_counts: Optional[Callable] = None   # datasets: the training counts without reading images


def lookup(registry: Mapping[str, Component], name: str, path: str, kind: str) -> Component:
    """Return the registered component or fail with the valid names and the closest one."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(str(name), list(registry), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(path, f"unknown {kind} '{name}'{hint}; choose one of: {', '.join(sorted(registry))}")
