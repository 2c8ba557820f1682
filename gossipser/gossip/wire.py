"""Authenticated, versioned msgpack frames carrying model weights between peers.

Frame layout::

    MAGIC (4 bytes, b"GSR1") | msgpack(envelope) | HMAC-SHA256(secret, MAGIC + envelope) (32 bytes)

The tag is checked before the envelope is unpacked, so a forged frame costs one hash.
Parameters travel as ``[name, dtype name, shape list, raw little-endian C-order bytes]``.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from gossipser.errors import ConfigError, TransportError, WireError

MAGIC = b"GSR1"
WIRE_VERSION = 1
TAG_LEN = 32
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
MODEL_KINDS = frozenset({"model", "push_sum", "fedavg_update", "fedavg_global"})
CONTROL_KINDS = frozenset({"hello", "bye"})
KINDS = MODEL_KINDS | CONTROL_KINDS
SERVER_ID = -1
# Every dtype the format can describe; what a receiver accepts is narrower by default.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float64", "float16", "int64", "int32")
}
_NAME_OF_DTYPE = {dtype: name for name, dtype in WIRE_DTYPES.items()}  # dtype.name is slow
DEFAULT_DTYPES = frozenset({"float32", "float64"})
MAX_RUN_LEN = 128
MAX_NAME_LEN = 256
MAX_PARAMS = 4096
MAX_NDIM = 32
MAX_META = 32
MAX_META_KEY = 64
MAX_META_STR = 256

_MIN_FRAME = len(MAGIC) + 1 + TAG_LEN
_MAX_FRAME_CEILING = 2**32 - 1  # the stream length prefix is 4 bytes
_INT_LIMIT = 2**63
_SCALAR_KEYS = ("kind", "run", "sender", "round", "age", "samples")
_ENVELOPE_KEYS = frozenset({"version", *_SCALAR_KEYS, "params"})
_LEN_PREFIX = 4


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
            raise WireError(f"wire: unknown kind {_short(self.kind)} (known: {sorted(KINDS)})")
        run_ok = isinstance(self.run, str) and 0 < len(self.run) <= MAX_RUN_LEN
        if not (run_ok and self.run.isprintable()):
            raise WireError(
                f"wire: run id must be 1-{MAX_RUN_LEN} printable characters, got {_short(self.run)}"
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
                    f"wire: param {_short(name)} needs a 1-{MAX_NAME_LEN} char name and an array"
                )
        if self.kind in CONTROL_KINDS and self.params:
            raise WireError(f"wire: a {self.kind!r} message carries no parameters")


def encode(msg: Message, *, secret: bytes) -> bytes:
    """Frame `msg`: MAGIC + msgpack envelope + HMAC-SHA256 tag keyed by `secret`."""
    key = _checked_secret(secret)
    envelope: dict[str, Any] = {
        "version": WIRE_VERSION,
        **{name: getattr(msg, name) for name in _SCALAR_KEYS},
        "params": [_wire_param(name, a) for name, a in msg.params.items()],
    }
    if msg.meta:
        envelope["meta"] = msg.meta
    # Sizing the buffer up front avoids regrowth (and, measured, a slow allocator path).
    size_hint = sum(a.nbytes for a in msg.params.values()) + 64 * len(msg.params) + 1024
    packer = msgpack.Packer(autoreset=False, use_bin_type=True, buf_size=size_hint)
    packer.pack(envelope)
    body = packer.getbuffer()  # a view of the packer's buffer: no copy before the join
    mac = hmac.new(key, MAGIC, "sha256")
    mac.update(body)
    frame = b"".join((MAGIC, body, mac.digest()))
    body.release()
    return frame


def decode(
    frame: bytes | bytearray | memoryview,
    *,
    secret: bytes,
    spec: ModelSpec | None = None,
    run: str | None = None,
    max_bytes: int = DEFAULT_MAX_FRAME,
    dtypes: frozenset[str] | set[str] = DEFAULT_DTYPES,
) -> Message:
    """Verify and unpack one frame; raise WireError with one line on anything wrong.

    Arrays are read-only views over the msgpack bin objects (no copy after unpacking).
    """
    key = _checked_secret(secret)
    allowed = _checked_dtypes(dtypes)
    limit = _checked_limit(max_bytes)
    try:
        view = memoryview(frame).cast("B")
    except (TypeError, ValueError) as exc:
        raise WireError(
            f"wire: frame must be contiguous bytes, got {type(frame).__name__}"
        ) from exc
    size = view.nbytes
    if size > limit:
        raise WireError(f"wire: frame of {size} bytes exceeds the {limit}-byte limit")
    if size < _MIN_FRAME:
        raise WireError(f"wire: frame of {size} bytes is too short to be a frame")
    if view[: len(MAGIC)] != MAGIC:
        raise WireError(f"wire: bad magic {bytes(view[: len(MAGIC)])!r}, expected {MAGIC!r}")
    expected_tag = hmac.digest(key, view[:-TAG_LEN], "sha256")
    if not hmac.compare_digest(expected_tag, view[-TAG_LEN:]):
        raise WireError("wire: bad HMAC tag (corrupted or forged frame, or wrong run secret)")
    envelope = _unpack(view[len(MAGIC) : -TAG_LEN], size)
    msg = _message_from(envelope)
    if run is not None and msg.run != run:
        raise WireError(f"wire: frame belongs to run {msg.run!r}, expected {run!r}")
    if msg.kind not in MODEL_KINDS:
        spec = None
    return replace(msg, params=_decode_params(envelope["params"], allowed, limit, spec))


def secret_from(source: str | None) -> bytes:
    """Run secret from ``env:VARNAME``, ``file:PATH`` or a literal string; never empty."""
    hint = "give the run secret as env:VARNAME, file:PATH or a literal string"
    if not source:
        raise ConfigError(f"wire: no run secret; every run needs one ({hint})")
    if source.startswith("env:"):
        name = source[4:]
        value = os.environ.get(name)
        if value is None:
            raise ConfigError(f"wire: secret variable {name!r} is not set in the environment")
        secret = value.encode()
    elif source.startswith("file:"):
        path = Path(source[5:])
        try:
            secret = path.read_bytes().rstrip(b"\r\n")  # `echo s > file` adds a newline
        except OSError as exc:
            raise ConfigError(f"wire: cannot read secret file {str(path)!r}: {exc}") from exc
    else:
        secret = source.encode()
    if not secret:
        raise ConfigError(f"wire: the run secret from {source!r} is empty ({hint})")
    return secret


def frame_length_prefix(frame: bytes | bytearray | memoryview) -> bytes:
    """``4-byte big-endian length + frame``, for stream transports."""
    size = memoryview(frame).nbytes
    if size > _MAX_FRAME_CEILING:
        raise WireError(f"wire: frame of {size} bytes is too large for a 4-byte length prefix")
    return b"".join((size.to_bytes(_LEN_PREFIX, "big"), frame))


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = DEFAULT_MAX_FRAME) -> bytes:
    """Read one length-prefixed frame; WireError on an oversized length, TransportError on EOF.

    After a WireError the stream is out of step: the caller must close the connection.
    """
    limit = _checked_limit(max_bytes)
    what = "length prefix"
    try:
        header = await reader.readexactly(_LEN_PREFIX)
        size = int.from_bytes(header, "big")
        if size > limit:
            raise WireError(f"wire: peer announced a {size}-byte frame, limit is {limit}")
        what = f"{size}-byte frame"
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError as exc:
        if what == "length prefix" and not exc.partial:
            raise TransportError("wire: connection closed") from exc
        raise TransportError(
            f"wire: connection closed after {len(exc.partial)} of {exc.expected} bytes "
            f"of the {what}"
        ) from exc
    except OSError as exc:
        raise TransportError(f"wire: connection failed while reading the {what}: {exc}") from exc


def _wire_param(name: str, array: np.ndarray) -> list[Any]:
    dtype_name = _NAME_OF_DTYPE.get(array.dtype) or _NAME_OF_DTYPE.get(
        array.dtype.newbyteorder("<")
    )
    if dtype_name is None:
        raise WireError(f"wire: parameter {name!r} dtype {array.dtype} cannot travel on the wire")
    # No copy when already C-contiguous little-endian; np.ascontiguousarray would make 0-d 1-d.
    wire = np.asarray(array, dtype=WIRE_DTYPES[dtype_name], order="C")
    if wire.dtype.kind == "f" and not np.isfinite(wire).all():
        raise WireError(f"wire: parameter {name!r} has non-finite values (NaN or Inf)")
    raw = memoryview(wire.reshape(-1).view(np.uint8))
    return [name, dtype_name, list(wire.shape), raw]


def _unpack(body: memoryview, size: int) -> Any:
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=size,
            max_str_len=max(MAX_NAME_LEN, MAX_META_STR, MAX_RUN_LEN) * 4,
            max_array_len=MAX_PARAMS,
            max_map_len=2 * MAX_META,  # generous: the field checks give the clear message
            max_ext_len=0,
        )
    except Exception as exc:  # a foreign parser on authenticated-but-bad bytes: any failure
        raise WireError(f"wire: envelope is not valid msgpack ({type(exc).__name__})") from exc


def _message_from(envelope: Any) -> Message:
    if type(envelope) is not dict:
        raise WireError(f"wire: envelope is a {type(envelope).__name__}, expected a map")
    version = envelope.get("version")
    if type(version) is not int or version != WIRE_VERSION:
        raise WireError(f"wire: unsupported version {_short(version)}, expected {WIRE_VERSION}")
    keys = envelope.keys()
    missing = sorted(_ENVELOPE_KEYS - keys)
    extra = sorted(keys - _ENVELOPE_KEYS - {"meta"}, key=repr)  # keys may be bytes
    if missing or extra:
        raise WireError(f"wire: envelope fields missing {missing}, unexpected {extra}")
    meta = envelope.get("meta", {})
    if type(meta) is not dict:
        raise WireError(f"wire: meta is a {type(meta).__name__}, expected a map")
    return Message(**{name: envelope[name] for name in _SCALAR_KEYS}, meta=meta)


def _decode_params(
    entries: Any, allowed: frozenset[str], limit: int, spec: ModelSpec | None
) -> dict[str, np.ndarray]:
    if type(entries) is not list:
        raise WireError(f"wire: params is a {type(entries).__name__}, expected a list")
    params: dict[str, np.ndarray] = {}
    for i, entry in enumerate(entries):
        if type(entry) is not list or len(entry) != 4:
            raise WireError(f"wire: params[{i}] is not [name, dtype, shape, data]")
        name, dtype_name, shape_list, data = entry
        if type(name) is not str or not 0 < len(name) <= MAX_NAME_LEN:
            raise WireError(f"wire: params[{i}] name must be 1-{MAX_NAME_LEN} characters")
        label = f"parameter {name!r}"
        if name in params:
            raise WireError(f"wire: {label} appears twice")
        if spec is not None and name not in spec.shapes:
            raise WireError(f"wire: {label} is not in the local model")
        if type(dtype_name) is not str or dtype_name not in allowed:
            raise WireError(
                f"wire: {label} dtype {_short(dtype_name)} is not allowed "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
        if spec is not None and dtype_name != spec.dtypes[name]:
            raise WireError(f"wire: {label} dtype {dtype_name} != expected {spec.dtypes[name]}")
        dtype = WIRE_DTYPES[dtype_name]
        shape = _wire_shape(label, shape_list, dtype.itemsize, limit)
        if spec is not None and shape != spec.shapes[name]:
            raise WireError(f"wire: {label} shape {shape} != expected {spec.shapes[name]}")
        if type(data) is not bytes:
            raise WireError(f"wire: {label} data is a {type(data).__name__}, expected bin")
        needed = math.prod(shape) * dtype.itemsize
        if len(data) != needed:
            raise WireError(
                f"wire: {label} has {len(data)} data bytes, shape {shape} {dtype_name} "
                f"needs {needed}"
            )
        # bytes are immutable, so numpy makes the view read-only; no copy happens here.
        array = np.frombuffer(data, dtype=dtype).reshape(shape)
        if dtype.kind == "f" and not np.isfinite(array).all():
            raise WireError(f"wire: {label} has non-finite values (NaN or Inf)")
        params[name] = array
    missing = [name for name in spec.shapes if name not in params] if spec else []
    if missing:
        raise WireError(f"wire: parameters {missing} of the local model are missing")
    return params


def _wire_shape(label: str, shape: Any, itemsize: int, limit: int) -> tuple[int, ...]:
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise WireError(f"wire: {label} shape must be a list of at most {MAX_NDIM} ints")
    if not all(type(d) is int for d in shape):
        raise WireError(f"wire: {label} shape {_short(shape)} holds a non-int")
    if any(d < 0 for d in shape):
        raise WireError(f"wire: {label} shape {tuple(shape)} has a negative dimension")
    # numpy refuses shapes whose non-zero extent overflows, even when a zero makes them empty.
    if math.prod(d for d in shape if d) * itemsize > limit:
        raise WireError(f"wire: {label} shape {_short(tuple(shape))} is too large")
    return tuple(shape)


def _as_int(name: str, value: Any, low: int) -> int:
    # bool is an int subclass, and msgpack decodes true/false to bool: refuse it explicitly.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise WireError(f"wire: field {name!r} must be an int, got {_short(value)}")
    if not low <= int(value) < _INT_LIMIT:
        raise WireError(f"wire: field {name!r} must be in [{low}, 2**63), got {int(value)}")
    return int(value)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise WireError(f"wire: field {name!r} must be a number, got {_short(value)}")
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
            raise WireError(f"wire: meta key {_short(key)} must be 1-{MAX_META_KEY} characters")
        if isinstance(value, str):
            if len(value) > MAX_META_STR:
                raise WireError(f"wire: meta {key!r} is longer than {MAX_META_STR} characters")
            checked[key] = value
        elif isinstance(value, float | np.floating):
            if not math.isfinite(value):
                raise WireError(f"wire: meta {key!r} is not finite")
            checked[key] = float(value)
        elif isinstance(value, int | np.integer) and not isinstance(value, bool):
            checked[key] = _as_int(f"meta {key}", value, -_INT_LIMIT)
        else:
            raise WireError(f"wire: meta {key!r} must be an int, float or str, got {_short(value)}")
    return checked


def _checked_secret(secret: Any) -> bytes:
    if not isinstance(secret, bytes | bytearray) or not secret:
        raise ConfigError("wire: the run secret must be non-empty bytes (see secret_from)")
    return bytes(secret)


def _checked_dtypes(dtypes: Any) -> frozenset[str]:
    allowed = frozenset(dtypes)
    if not allowed <= WIRE_DTYPES.keys():
        unknown = sorted(map(str, allowed - WIRE_DTYPES.keys()))
        raise ConfigError(f"wire: dtype(s) {unknown} cannot travel; known: {sorted(WIRE_DTYPES)}")
    return allowed


def _checked_limit(max_bytes: Any) -> int:
    if type(max_bytes) is not int or not _MIN_FRAME <= max_bytes <= _MAX_FRAME_CEILING:
        raise ConfigError(f"wire: max_bytes must be an int in [{_MIN_FRAME}, 2**32 - 1]")
    return max_bytes


def _short(value: Any) -> str:
    return reprlib.repr(value)  # bounded: error lines stay one short line for any input
