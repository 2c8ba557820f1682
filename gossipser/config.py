"""Run configuration: one TOML file with sections, overridden by command-line flags.

    [data]      path, corpus, emotions, test_speakers, cache_dir
    [features]  gossipser.data.features.FeatureConfig
    [model]     gossipser.learn.models.ModelConfig
    [train]     gossipser.learn.train.TrainConfig
    [gossip]    gossipser.gossip.plan.GossipConfig
    [network]   gossipser.net.node.NetworkConfig

Every config dataclass calls `check_types` first in `__post_init__`, so a wrong type from a
TOML file or from code is one line naming the section, the key, what was expected and what
was given, before any range check runs. Hand-written rather than pydantic: the configs stay
plain frozen dataclasses, and the few annotation forms they use (int, float, str, bool,
X | None, tuple[...], Literal) take forty lines to check.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from gossipser.errors import ConfigError

SECTIONS = ("data", "features", "model", "train", "gossip", "network", "fedavg")


def read_toml(path: Path | str | None) -> dict[str, dict[str, Any]]:
    """Parse a run config; unknown sections or a syntax error give one clear line."""
    if path is None:
        return {}
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"config {path}: unknown section(s) {unknown}; known: {SECTIONS}")
    for name, section in doc.items():
        if not isinstance(section, dict):
            raise ConfigError(f"config {path}: [{name}] must be a table")
    return doc


def build(cls: type, section: dict[str, Any], overrides: dict[str, Any], where: str):
    """`cls(**section)` with non-None `overrides` on top; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    merged = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(merged) - names)
    if unknown:
        raise ConfigError(f"[{where}]: unknown key(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**merged)
    except TypeError as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


# typed validation ------------------------------------------------------------------------
@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.name in hints)


def check_types(obj: Any, section: str) -> None:
    """Raise ConfigError naming `[section] key` for the first field whose value does not
    fit its annotation."""
    for name, tp in _field_types(type(obj)):
        value = getattr(obj, name)
        if not _fits(value, tp):
            raise ConfigError(f"[{section}] {name}: expected {describe_type(tp)}, "
                              f"got {value!r}")


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _fits(value: Any, tp: Any) -> bool:
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return True
    if _is_union(tp):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is Literal:
        return value in args
    if origin is tuple or origin is list:
        if not isinstance(value, tuple | list):
            return False
        if origin is list and args:
            return all(_fits(v, args[0]) for v in value)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return not args or (len(args) == len(value)
                            and all(_fits(v, a) for v, a in zip(value, args, strict=True)))
    if origin is dict:
        return isinstance(value, dict)
    if tp is list:
        return isinstance(value, tuple | list)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # an annotation this checker does not model


def describe_type(tp: Any) -> str:
    """'an integer', 'a number or nothing', 'a list of strings', ..."""
    if _is_union(tp):
        args = get_args(tp)
        named = [describe_type(a) for a in args if a is not type(None)]
        text = " or ".join(named)
        return text + " or nothing (leave the key out)" if type(None) in args else text
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        if origin is list and args or len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} values" if args else "a list"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             dict: "a table", list: "a list"}
    if tp in names:
        return names[tp]
    return f"a {getattr(tp, '__name__', tp)}"


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(
        tp, describe_type(tp))
