"""Gossip algorithms as strategies: one module per family, each registering its class by name.

Adding an algorithm means one new module here (a subclass of `Algorithm` decorated with
`@register`) and its tests; this package imports every module it holds.
"""

from __future__ import annotations

import importlib
import pkgutil

from gossipser.errors import ConfigError
from gossipser.gossip.algorithms.base import REGISTRY, Algorithm, Outbox, register

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

ALGORITHMS = tuple(sorted(REGISTRY))


def make_algorithm(name: str) -> Algorithm:
    """A fresh strategy object (one per peer: it may hold per-peer state)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    return REGISTRY[name]()


def algorithm_class(name: str) -> type[Algorithm]:
    make_algorithm(name)  # the same error for an unknown name
    return REGISTRY[name]


__all__ = ["ALGORITHMS", "Algorithm", "Outbox", "algorithm_class", "make_algorithm", "register"]
