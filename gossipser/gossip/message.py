"""The message peers exchange: kind, run, sender, round, age, samples, parameters and a little
metadata, validated on construction; `ModelSpec`, the names, shapes and dtypes a peer expects.
How a message becomes bytes is `gossipser.gossip.wire`.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gossipser.errors import ConfigError, WireError

MODEL_KINDS = frozenset({"model", "push_sum", "fedavg_update", "fedavg_global"})
CONTROL_KINDS = frozenset({"hello", "bye"})
KINDS = MODEL_KINDS | CONTROL_KINDS
SERVER_ID = -1
# Every dtype the format can describe; a receiver accepts wire.DEFAULT_DTYPES unless told.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float64", "float16", "int64", "int32")
}
NAME_OF_DTYPE = {dtype: name for name, dtype in WIRE_DTYPES.items()}  # dtype.name is slow
MAX_RUN_LEN = 128
MAX_NAME_LEN = 256
MAX_PARAMS = 4096
MAX_META = 32
MAX_META_KEY = 64
MAX_META_STR = 256
INT_LIMIT = 2**63


@dataclass(frozen=True)
class ModelSpec:
    """Names, shapes and dtype names a peer expects in every model frame."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "shapes", {k: tuple(int(d) for d in v) for k, v in self.shapes.items()}
        )
        if self.shapes.keys() != self.dtypes.keys():
            raise ConfigError("wire: ModelSpec shapes and dtypes name different parameters")
        unknown = sorted(d for d in self.dtypes.values() if d not in WIRE_DTYPES)
        if unknown:
            raise ConfigError(f"wire: ModelSpec dtype(s) {unknown} cannot travel on the wire")

    @classmethod
    def from_params(cls, params: Mapping[str, np.ndarray]) -> ModelSpec:
        """Spec describing `params` (name -> array), in their order."""
        return cls(
            shapes={name: tuple(int(d) for d in a.shape) for name, a in params.items()},
            dtypes={name: a.dtype.name for name, a in params.items()},
        )


# eq=False: the dataclass __eq__ would compare dicts of arrays, which numpy refuses.
@dataclass(frozen=True, kw_only=True, eq=False)
class Message:
    """One gossip message; scalar fields are validated and normalised on construction."""

    kind: str
    run: str
    sender: int
    round: int = 0
    age: float = 0.0
    samples: int = 0
    params: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, int | float | str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise WireError(f"wire: unknown kind {short(self.kind)} (known: {sorted(KINDS)})")
        run_ok = isinstance(self.run, str) and 0 < len(self.run) <= MAX_RUN_LEN
        if not (run_ok and self.run.isprintable()):
            raise WireError(
                f"wire: run id must be 1-{MAX_RUN_LEN} printable characters, got {short(self.run)}"
            )
        object.__setattr__(self, "sender", _as_int("sender", self.sender, SERVER_ID))
        object.__setattr__(self, "round", _as_int("round", self.round, 0))
        object.__setattr__(self, "samples", _as_int("samples", self.samples, 0))
        object.__setattr__(self, "age", _as_float("age", self.age))
        object.__setattr__(self, "meta", _checked_meta(self.meta))
        if not isinstance(self.params, dict) or len(self.params) > MAX_PARAMS:
            raise WireError(f"wire: params must be a dict of at most {MAX_PARAMS} arrays")
        for name, array in self.params.items():
            good_name = isinstance(name, str) and 0 < len(name) <= MAX_NAME_LEN
            if not (good_name and isinstance(array, np.ndarray)):
                raise WireError(
                    f"wire: param {short(name)} needs a 1-{MAX_NAME_LEN} char name and an array"
                )
        if self.kind in CONTROL_KINDS and self.params:
            raise WireError(f"wire: a {self.kind!r} message carries no parameters")


def _as_int(name: str, value: Any, low: int) -> int:
    # bool is an int subclass, and msgpack decodes true/false to bool: refuse it explicitly.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise WireError(f"wire: field {name!r} must be an int, got {short(value)}")
    if not low <= int(value) < INT_LIMIT:
        raise WireError(f"wire: field {name!r} must be in [{low}, 2**63), got {int(value)}")
    return int(value)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise WireError(f"wire: field {name!r} must be a number, got {short(value)}")
    number = float(value)
    if not (math.isfinite(number) and number >= 0.0):
        raise WireError(f"wire: field {name!r} must be finite and >= 0, got {number}")
    return number


def _checked_meta(meta: Any) -> dict[str, int | float | str]:
    if not isinstance(meta, dict) or len(meta) > MAX_META:
        raise WireError(f"wire: meta must be a map of at most {MAX_META} entries")
    checked: dict[str, int | float | str] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_META_KEY:
            raise WireError(f"wire: meta key {short(key)} must be 1-{MAX_META_KEY} characters")
        if isinstance(value, str):
            if len(value) > MAX_META_STR:
                raise WireError(f"wire: meta {key!r} is longer than {MAX_META_STR} characters")
            checked[key] = value
        elif isinstance(value, float | np.floating):
            if not math.isfinite(value):
                raise WireError(f"wire: meta {key!r} is not finite")
            checked[key] = float(value)
        elif isinstance(value, int | np.integer) and not isinstance(value, bool):
            checked[key] = _as_int(f"meta {key}", value, -INT_LIMIT)
        else:
            raise WireError(f"wire: meta {key!r} must be an int, float or str, got {short(value)}")
    return checked


def short(value: Any) -> str:
    return reprlib.repr(value)  # bounded: error lines stay one short line for any input
