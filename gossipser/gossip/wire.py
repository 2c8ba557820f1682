"""Authenticated, versioned msgpack frames carrying model weights between peers.

Frame layout::

    MAGIC (4 bytes, b"GSR1") | msgpack(envelope) | HMAC-SHA256(secret, MAGIC + envelope) (32 bytes)

The tag is checked before the envelope is unpacked, so a forged frame costs one hash.
Parameters travel as ``[name, dtype name, shape list, raw little-endian C-order bytes]``.

With per-peer keys (`gossipser.net.keys`) a frame is signed by its sender instead::

    MAGIC_SIGNED (b"GSS1") | sender (8 bytes, signed big-endian) | msgpack(envelope)
        | ECDSA P-256 signature over everything before it (64 bytes, r || s)

The receiver checks the signature against the key of the node named in the clear sender
field before unpacking anything, then that the envelope names the same sender.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import msgpack
import numpy as np

from gossipser.errors import ConfigError, TransportError, WireError
from gossipser.gossip.message import (
    MAX_META,
    MAX_META_STR,
    MAX_NAME_LEN,
    MAX_PARAMS,
    MAX_RUN_LEN,
    MODEL_KINDS,
    NAME_OF_DTYPE,
    WIRE_DTYPES,
    Message,
    ModelSpec,
    short,
)

MAGIC = b"GSR1"
MAGIC_SIGNED = b"GSS1"
SIG_LEN = 64
_SENDER_LEN = 8
WIRE_VERSION = 1
TAG_LEN = 32
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
DEFAULT_DTYPES = frozenset({"float32", "float64"})
MAX_NDIM = 32

_MIN_FRAME = len(MAGIC) + 1 + TAG_LEN
_MAX_FRAME_CEILING = 2**32 - 1  # the stream length prefix is 4 bytes
_SCALAR_KEYS = ("kind", "run", "sender", "round", "age", "samples")
_ENVELOPE_KEYS = frozenset({"version", *_SCALAR_KEYS, "params"})
_LEN_PREFIX = 4


class Signer(Protocol):
    """A node's own key (gossipser.net.keys.Keyring)."""

    node: int

    def sign(self, data: bytes | memoryview) -> bytes: ...


class Verifier(Protocol):
    def verify(self, node: int, signature: bytes | memoryview,
               data: bytes | memoryview) -> bool: ...


def encode(msg: Message, *, secret: bytes | None = None, signer: Signer | None = None) -> bytes:
    """Frame `msg`: MAGIC + msgpack envelope + HMAC-SHA256 tag keyed by `secret`, or, with
    `signer` (whose node must be the sender), MAGIC_SIGNED + sender + envelope + signature."""
    if signer is not None:
        if msg.sender != signer.node:
            raise WireError(f"wire: node {signer.node} cannot sign a frame from {msg.sender}")
        head = MAGIC_SIGNED + msg.sender.to_bytes(_SENDER_LEN, "big", signed=True)
        body = _packed(msg)
        data = b"".join((head, body))  # one copy of the envelope, as in the HMAC frame
        body.release()
        return data + signer.sign(data)
    key = _checked_secret(secret)
    body = _packed(msg)
    mac = hmac.new(key, MAGIC, "sha256")
    mac.update(body)
    frame = b"".join((MAGIC, body, mac.digest()))
    body.release()
    return frame


def _packed(msg: Message) -> memoryview:
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
    return packer.getbuffer()  # a view of the packer's buffer: no copy before the join


def decode(
    frame: bytes | bytearray | memoryview,
    *,
    secret: bytes | None = None,
    keys: Verifier | None = None,
    spec: ModelSpec | None = None,
    run: str | None = None,
    max_bytes: int = DEFAULT_MAX_FRAME,
    dtypes: frozenset[str] | set[str] = DEFAULT_DTYPES,
) -> Message:
    """Verify and unpack one frame; raise WireError with one line on anything wrong.

    Arrays are read-only views over the msgpack bin objects (no copy after unpacking).
    With `keys`, only signed frames are taken (their signature checked first); without,
    only HMAC frames under `secret`.
    """
    key = None if keys is not None else _checked_secret(secret)
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
    magic = bytes(view[: len(MAGIC)])
    if keys is not None:
        if magic == MAGIC:
            raise WireError("wire: unsigned frame (this run signs every frame with per-peer "
                            "keys)")
        if magic != MAGIC_SIGNED:
            raise WireError(f"wire: bad magic {magic!r}, expected {MAGIC_SIGNED!r}")
        start = len(MAGIC_SIGNED) + _SENDER_LEN
        if size < start + 1 + SIG_LEN:
            raise WireError(f"wire: frame of {size} bytes is too short to be a frame")
        claimed = int.from_bytes(view[len(MAGIC_SIGNED):start], "big", signed=True)
        if not keys.verify(claimed, view[-SIG_LEN:], view[:-SIG_LEN]):
            raise WireError(f"wire: bad signature (not signed by node {claimed}'s key)")
        envelope = _unpack(view[start:-SIG_LEN], size)
        msg = _message_from(envelope)
        if msg.sender != claimed:
            raise WireError(f"wire: sender {msg.sender} does not match its key (node "
                            f"{claimed} signed the frame)")
    else:
        if magic == MAGIC_SIGNED:
            raise WireError("wire: signed frame, but this node has no keys (plaintext HMAC "
                            "mode)")
        if magic != MAGIC:
            raise WireError(f"wire: bad magic {magic!r}, expected {MAGIC!r}")
        expected_tag = hmac.digest(key, view[:-TAG_LEN], "sha256")
        if not hmac.compare_digest(expected_tag, view[-TAG_LEN:]):
            raise WireError("wire: bad HMAC tag (corrupted or forged frame, or wrong run "
                            "secret)")
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


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = DEFAULT_MAX_FRAME,
                     body_timeout: float | None = None) -> bytes:
    """Read one length-prefixed frame; WireError on an oversized length, TransportError on EOF
    or when the body takes longer than `body_timeout` seconds after its length arrived
    (TimeoutError is then its cause).

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
        async with asyncio.timeout(body_timeout):
            return await reader.readexactly(size)
    except TimeoutError as exc:
        raise TransportError(f"wire: the {what} took over {body_timeout} s") from exc
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
    dtype_name = NAME_OF_DTYPE.get(array.dtype) or NAME_OF_DTYPE.get(
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
        raise WireError(f"wire: unsupported version {short(version)}, expected {WIRE_VERSION}")
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
                f"wire: {label} dtype {short(dtype_name)} is not allowed "
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
        raise WireError(f"wire: {label} shape {short(shape)} holds a non-int")
    if any(d < 0 for d in shape):
        raise WireError(f"wire: {label} shape {tuple(shape)} has a negative dimension")
    # numpy refuses shapes whose non-zero extent overflows, even when a zero makes them empty.
    if math.prod(d for d in shape if d) * itemsize > limit:
        raise WireError(f"wire: {label} shape {short(tuple(shape))} is too large")
    return tuple(shape)


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

