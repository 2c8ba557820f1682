"""Gossip algorithms as strategies: one module per family, each registering its class by name.

Adding an algorithm means one new module here (a subclass of `Algorithm` decorated with
`@register`) and its tests; this package imports every module it holds.
"""

from __future__ import annotations

import importlib
import pkgutil

from gossipser.errors import ConfigError
from gossipser.gossip.algorithms import base
from gossipser.gossip.algorithms.base import Algorithm, Outbox, register

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

ALGORITHMS = tuple(sorted(base.REGISTRY))  # the names shipped with gossipser


def make_algorithm(name: str) -> Algorithm:
    """A fresh strategy object (one per peer: it may hold per-peer state)."""
    return algorithm_class(name)()


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in base.REGISTRY:
        known = ", ".join(sorted(base.REGISTRY))
        raise ConfigError(f"unknown algorithm {name!r}; choose one of {known}")
    return base.REGISTRY[name]


__all__ = ["ALGORITHMS", "Algorithm", "Outbox", "algorithm_class", "make_algorithm", "register"]
