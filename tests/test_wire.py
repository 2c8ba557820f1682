"""Wire format: round trips, one clear WireError per bad frame, and decoder fuzzing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossipser.errors import ConfigError, TransportError, WireError
from gossipser.gossip.message import KINDS, Message, ModelSpec
from gossipser.gossip.wire import (
    DEFAULT_DTYPES,
    MAGIC,
    TAG_LEN,
    WIRE_VERSION,
    decode,
    encode,
    frame_length_prefix,
    read_frame,
    secret_from,
)

SECRET = b"unit-test-run-secret"
RUN = "run-1"
FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _params() -> dict[str, np.ndarray]:
    return {
        "conv.weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "conv.bias": np.array([0.5, -1.25, 3.0], dtype=np.float32),
        "fc.weight": np.array([[1e-300, -2.0], [3.5, 1e300]], dtype=np.float64),
    }


def _message(**overrides: Any) -> Message:
    fields: dict[str, Any] = dict(
        kind="model", run=RUN, sender=3, round=7, age=12.5, samples=40, params=_params()
    )
    fields.update(overrides)
    return Message(**fields)


def _seal(body: bytes, secret: bytes = SECRET) -> bytes:
    """MAGIC + body + tag, built from the documented layout rather than from wire.py."""
    return MAGIC + body + hmac.new(secret, MAGIC + body, hashlib.sha256).digest()


def _envelope(**overrides: Any) -> dict[str, Any]:
    """A valid envelope (as decoded msgpack), with fields replaced."""
    envelope = msgpack.unpackb(encode(_message(), secret=SECRET)[len(MAGIC) : -TAG_LEN])
    envelope.update(overrides)
    return envelope


def _forge(envelope: Any) -> bytes:
    return _seal(msgpack.packb(envelope))


def _param_entry(name: Any, dtype: Any, shape: Any, data: Any) -> list[Any]:
    """One params entry as it travels: [name, dtype name, shape list, raw bytes]."""
    return [name, dtype, shape, data]


def _decode(frame: bytes, **kwargs: Any) -> Message:
    kwargs.setdefault("secret", SECRET)
    return decode(frame, **kwargs)


# --- round trips -----------------------------------------------------------------------


def test_round_trip_keeps_every_field_and_array() -> None:
    # Prepare
    msg = _message(meta={"lr": 0.01, "note": "warmup", "epoch": 2})
    spec = ModelSpec.from_params(msg.params)

    # Execute
    out = decode(encode(msg, secret=SECRET), secret=SECRET, spec=spec, run=RUN)

    # Assert
    assert (out.kind, out.run, out.sender, out.round, out.age, out.samples) == (
        "model",
        RUN,
        3,
        7,
        12.5,
        40,
    )
    assert out.meta == {"lr": 0.01, "note": "warmup", "epoch": 2}
    assert list(out.params) == list(msg.params)
    for name, array in msg.params.items():
        assert out.params[name].dtype == array.dtype
        np.testing.assert_array_equal(out.params[name], array)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_round_trips(kind: str) -> None:
    # Prepare
    params = {} if kind in ("hello", "bye") else _params()
    msg = _message(kind=kind, sender=-1, params=params)

    # Execute
    out = _decode(encode(msg, secret=SECRET), spec=ModelSpec.from_params(_params()))

    # Assert
    assert out.kind == kind and out.sender == -1 and len(out.params) == len(params)


def test_frame_layout_is_magic_msgpack_envelope_then_hmac_tag() -> None:
    # Prepare / Execute
    frame = encode(_message(), secret=SECRET)

    # Assert
    body = frame[len(MAGIC) : -TAG_LEN]
    assert frame[: len(MAGIC)] == b"GSR1"
    assert frame == _seal(body)
    envelope = msgpack.unpackb(body)
    assert envelope["version"] == WIRE_VERSION
    assert envelope["params"][0] == [
        "conv.weight",
        "float32",
        [2, 3],
        _params()["conv.weight"].tobytes(),
    ]


def test_big_endian_and_fortran_arrays_travel_as_little_endian_c_order() -> None:
    # Prepare
    source = np.arange(12, dtype=">f8").reshape(3, 4).T  # big-endian, Fortran-ordered view
    msg = _message(params={"w": source})

    # Execute
    out = _decode(encode(msg, secret=SECRET)).params["w"]

    # Assert
    assert out.dtype == np.dtype("<f8") and out.flags.c_contiguous
    np.testing.assert_array_equal(out, source)


def test_scalar_and_empty_arrays_keep_their_shapes() -> None:
    # Prepare
    params = {"scale": np.array(2.5, np.float32), "empty": np.zeros((0, 5), np.float64)}

    # Execute
    out = _decode(encode(_message(params=params), secret=SECRET)).params

    # Assert
    assert out["scale"].shape == () and out["scale"] == 2.5
    assert out["empty"].shape == (0, 5) and out["empty"].dtype == np.float64


def test_encode_does_not_copy_contiguous_little_endian_arrays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: spy on the buffers handed to msgpack.
    seen: list[memoryview] = []

    class SpyPacker(msgpack.Packer):
        def pack(self, obj: Any) -> Any:
            seen.extend(entry[3] for entry in obj["params"])
            return super().pack(obj)

    monkeypatch.setattr(msgpack, "Packer", SpyPacker)
    params = _params()

    # Execute
    encode(_message(params=params), secret=SECRET)

    # Assert
    for raw, array in zip(seen, params.values(), strict=True):
        assert np.shares_memory(np.frombuffer(raw, dtype=np.uint8), array)


def test_decoded_arrays_are_read_only_views_over_the_unpacked_bin() -> None:
    # Prepare
    frame = encode(_message(), secret=SECRET)

    # Execute
    params = _decode(frame).params

    # Assert: msgpack copies each bin out of the frame once; numpy then adds no copy.
    for array in params.values():
        owner = array
        while isinstance(owner, np.ndarray):
            assert not owner.flags.owndata
            owner = owner.base
        assert type(owner) is bytes and len(owner) == array.nbytes
        assert np.shares_memory(array, np.frombuffer(owner, dtype=np.uint8))
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array.flags.writeable = True


def test_decoded_arrays_do_not_change_when_the_frame_buffer_is_reused() -> None:
    # Prepare
    buffer = bytearray(encode(_message(), secret=SECRET))
    params = _decode(memoryview(buffer)).params

    # Execute
    buffer[:] = bytes(len(buffer))

    # Assert
    np.testing.assert_array_equal(params["conv.bias"], _params()["conv.bias"])


def test_message_normalises_numpy_scalars_and_rejects_bools() -> None:
    # Execute
    msg = _message(sender=np.int64(2), round=np.int32(1), age=np.float32(0.5), params={})

    # Assert
    assert type(msg.sender) is int and type(msg.round) is int and type(msg.age) is float
    with pytest.raises(WireError, match="field 'round' must be an int, got True"):
        _message(round=True)


@pytest.mark.parametrize(
    "params", [{"w": [1.0, 2.0]}, {"": np.zeros(1, np.float32)}, {"x" * 257: np.zeros(1)}]
)
def test_message_refuses_params_that_are_not_named_arrays(params: dict[str, Any]) -> None:
    with pytest.raises(WireError, match="needs a 1-256 char name and an array$"):
        _message(params=params)


def test_model_spec_from_params_lists_shapes_and_dtype_names() -> None:
    # Execute
    spec = ModelSpec.from_params(_params())

    # Assert
    assert spec.shapes == {"conv.weight": (2, 3), "conv.bias": (3,), "fc.weight": (2, 2)}
    assert spec.dtypes == {"conv.weight": "float32", "conv.bias": "float32", "fc.weight": "float64"}


# --- rejections: each is one WireError with a specific line ---------------------------

GOOD = encode(_message(), secret=SECRET)
F32 = np.ones(3, dtype="<f4").tobytes()
BAD_FRAMES: dict[str, tuple[bytes, str]] = {
    "garbage": (b"this is not a frame at all" * 3, r"^wire: bad magic b'this'"),
    "empty": (b"", r"^wire: frame of 0 bytes is too short"),
    "too short": (GOOD[:20], r"^wire: frame of 20 bytes is too short"),
    "truncated": (GOOD[:-1], r"^wire: bad HMAC tag"),
    "bad magic": (b"GSR2" + GOOD[4:], r"^wire: bad magic b'GSR2', expected b'GSR1'$"),
    "bad tag": (GOOD[:-1] + bytes([GOOD[-1] ^ 1]), r"^wire: bad HMAC tag"),
    "not msgpack": (_seal(b"\xc1"), r"^wire: envelope is not valid msgpack"),
    "trailing bytes": (_seal(msgpack.packb(_envelope()) + b"\x00"), r"not valid msgpack"),
    "ext type": (_seal(msgpack.packb(msgpack.ExtType(1, b"x"))), r"not valid msgpack"),
    "not a map": (_forge([1, 2, 3]), r"^wire: envelope is a list, expected a map$"),
    "wrong version": (_forge(_envelope(version=2)), r"^wire: unsupported version 2, expected 1$"),
    "bool version": (_forge(_envelope(version=True)), r"^wire: unsupported version True"),
    "missing field": (
        _forge({k: v for k, v in _envelope().items() if k != "samples"}),
        r"^wire: envelope fields missing \['samples'\], unexpected \[\]$",
    ),
    "extra field": (_forge(_envelope(extra=1)), r"missing \[\], unexpected \['extra'\]$"),
    "bytes key": (_forge({**_envelope(), b"k": 1}), r"unexpected \[b'k'\]$"),
    "unknown kind": (_forge(_envelope(kind="gradient")), r"^wire: unknown kind 'gradient'"),
    "kind not str": (_forge(_envelope(kind=7)), r"^wire: unknown kind 7"),
    "long run id": (_forge(_envelope(run="r" * 129)), r"^wire: run id must be 1-128 printable"),
    "bool sender": (_forge(_envelope(sender=True)), r"^wire: field 'sender' must be an int, got"),
    "bool round": (_forge(_envelope(round=False)), r"^wire: field 'round' must be an int, got"),
    "float samples": (_forge(_envelope(samples=1.0)), r"field 'samples' must be an int, got 1.0"),
    "sender below -1": (_forge(_envelope(sender=-2)), r"field 'sender' must be in \[-1, 2\*\*63"),
    "huge round": (_forge(_envelope(round=2**64 - 1)), r"field 'round' must be in \[0, 2\*\*63"),
    "negative age": (_forge(_envelope(age=-0.5)), r"field 'age' must be finite and >= 0"),
    "nan age": (_forge(_envelope(age=float("nan"))), r"field 'age' must be finite and >= 0"),
    "bool age": (_forge(_envelope(age=True)), r"field 'age' must be a number, got True"),
    "meta not map": (_forge(_envelope(meta=[1])), r"^wire: meta is a list, expected a map$"),
    "meta nested": (_forge(_envelope(meta={"a": [1]})), r"meta 'a' must be an int, float or str"),
    "meta bool": (_forge(_envelope(meta={"a": True})), r"meta 'a' must be an int, float or str"),
    "meta long str": (_forge(_envelope(meta={"a": "x" * 257})), r"meta 'a' is longer than 256"),
    "meta nan": (_forge(_envelope(meta={"a": float("inf")})), r"meta 'a' is not finite"),
    "meta too big": (
        _forge(_envelope(meta={f"k{i}": i for i in range(33)})),
        r"meta must be a map of at most 32",
    ),
    "params not list": (_forge(_envelope(params={})), r"^wire: params is a dict, expected a list$"),
    "entry not 4 long": (
        _forge(_envelope(params=[["w", "float32"]])),
        r"params\[0\] is not \[name",
    ),
    "empty name": (
        _forge(_envelope(params=[_param_entry("", "float32", [3], F32)])),
        r"params\[0\] name must be 1-256 characters",
    ),
    "duplicate name": (
        _forge(_envelope(params=[_param_entry("w", "float32", [3], F32)] * 2)),
        r"^wire: parameter 'w' appears twice$",
    ),
    "object dtype": (
        _forge(_envelope(params=[_param_entry("w", "object", [3], F32)])),
        r"^wire: parameter 'w' dtype 'object' is not allowed \(allowed: float32, float64\)$",
    ),
    "unicode dtype": (
        _forge(_envelope(params=[_param_entry("w", "<U1", [3], F32)])),
        r"dtype '<U1' is not allowed",
    ),
    "complex dtype": (
        _forge(_envelope(params=[_param_entry("w", "complex64", [3], F32 + F32)])),
        r"dtype 'complex64' is not allowed",
    ),
    "int64 by default": (
        _forge(_envelope(params=[_param_entry("w", "int64", [1], bytes(8))])),
        r"dtype 'int64' is not allowed",
    ),
    "shape not list": (
        _forge(_envelope(params=[_param_entry("w", "float32", 3, F32)])),
        r"shape must be a list of at most 32 ints",
    ),
    "bool dim": (
        _forge(_envelope(params=[_param_entry("w", "float32", [True, 3], F32)])),
        r"^wire: parameter 'w' shape \[True, 3\] holds a non-int$",
    ),
    "negative dim": (
        _forge(_envelope(params=[_param_entry("w", "float32", [-1, -3], F32)])),
        r"^wire: parameter 'w' shape \(-1, -3\) has a negative dimension$",
    ),
    "huge shape": (
        _forge(_envelope(params=[_param_entry("w", "float32", [2**40, 2**40], F32)])),
        r"^wire: parameter 'w' shape .* is too large$",
    ),
    "huge shape with a zero": (
        _forge(_envelope(params=[_param_entry("w", "float32", [0, 2**64 - 1], b"")])),
        r"is too large$",
    ),
    "too many dims": (
        _forge(_envelope(params=[_param_entry("w", "float32", [1] * 33, F32)])),
        r"shape must be a list of at most 32 ints",
    ),
    "data not bin": (
        _forge(_envelope(params=[_param_entry("w", "float32", [1], "abcd")])),
        r"^wire: parameter 'w' data is a str, expected bin$",
    ),
    "byte count": (
        _forge(_envelope(params=[_param_entry("w", "float32", [4], F32)])),
        r"^wire: parameter 'w' has 12 data bytes, shape \(4,\) float32 needs 16$",
    ),
    "nan value": (
        _forge(
            _envelope(params=[_param_entry("w", "float32", [2], np.float32([1, np.nan]).tobytes())])
        ),
        r"^wire: parameter 'w' has non-finite values \(NaN or Inf\)$",
    ),
    "inf value": (
        _forge(
            _envelope(params=[_param_entry("w", "float64", [1], np.float64([-np.inf]).tobytes())])
        ),
        r"^wire: parameter 'w' has non-finite values",
    ),
    "hello with params": (
        _forge(_envelope(kind="hello")),
        r"^wire: a 'hello' message carries no parameters$",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_frame_raises_one_specific_wire_error(case: str) -> None:
    # Prepare
    frame, pattern = BAD_FRAMES[case]

    # Execute
    with pytest.raises(WireError) as caught:
        _decode(frame)

    # Assert
    message = str(caught.value)
    assert re.search(pattern, message), message
    assert "\n" not in message and len(message) < 200


def test_every_single_bit_flip_after_the_magic_fails_the_hmac() -> None:
    # Prepare
    frame = encode(_message(params={"w": np.float32([1.5])}), secret=SECRET)

    # Execute / Assert
    for bit in range(len(MAGIC) * 8, len(frame) * 8):
        flipped = bytearray(frame)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(WireError, match="^wire: bad HMAC tag"):
            _decode(bytes(flipped))


def test_oversized_frame_is_rejected_before_anything_else() -> None:
    with pytest.raises(WireError, match=f"^wire: frame of {len(GOOD)} bytes exceeds the 100-"):
        _decode(GOOD, max_bytes=100)


def test_wrong_secret_is_a_bad_tag() -> None:
    with pytest.raises(WireError, match="^wire: bad HMAC tag"):
        decode(GOOD, secret=b"another-run-secret")


def test_wrong_run_id_is_rejected() -> None:
    with pytest.raises(WireError, match="^wire: frame belongs to run 'run-1', expected 'run-2'$"):
        _decode(GOOD, run="run-2")


def test_non_bytes_frame_is_a_wire_error() -> None:
    with pytest.raises(WireError, match="frame must be contiguous bytes, got str"):
        _decode("GSR1...")  # type: ignore[arg-type]


def test_int_dtypes_pass_only_when_allowed() -> None:
    # Prepare
    frame = encode(_message(params={"steps": np.array([5], dtype=np.int64)}), secret=SECRET)

    # Execute
    out = _decode(frame, dtypes=DEFAULT_DTYPES | {"int64"})

    # Assert
    assert out.params["steps"].tolist() == [5]
    with pytest.raises(WireError, match="dtype 'int64' is not allowed"):
        _decode(frame)


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        (
            {**_params(), "conv.weight": np.zeros((3, 2), np.float32)},
            r"^wire: parameter 'conv.weight' shape \(3, 2\) != expected \(2, 3\)$",
        ),
        (
            {**_params(), "conv.bias": np.zeros(3, np.float64)},
            r"^wire: parameter 'conv.bias' dtype float64 != expected float32$",
        ),
        (
            {k: v for k, v in _params().items() if k != "conv.bias"},
            r"^wire: parameters \['conv.bias'\] of the local model are missing$",
        ),
        (
            {**_params(), "head.bias": np.zeros(1, np.float32)},
            r"^wire: parameter 'head.bias' is not in the local model$",
        ),
    ],
    ids=["shape", "dtype", "missing", "extra"],
)
def test_params_that_do_not_fit_the_local_model_are_rejected(
    params: dict[str, np.ndarray], pattern: str
) -> None:
    # Prepare
    frame = encode(_message(params=params), secret=SECRET)

    # Execute / Assert
    with pytest.raises(WireError, match=pattern):
        _decode(frame, spec=ModelSpec.from_params(_params()))


@pytest.mark.parametrize(
    ("array", "pattern"),
    [
        (np.array([1.0, np.nan], np.float32), "non-finite"),
        (np.array([1 + 2j]), "dtype complex128 cannot travel"),
        (np.array(["a"]), "dtype <U1 cannot travel"),
        (np.array([None]), "dtype object cannot travel"),
        (np.array([True]), "dtype bool cannot travel"),
    ],
)
def test_encode_refuses_arrays_a_peer_would_reject(array: np.ndarray, pattern: str) -> None:
    with pytest.raises(WireError, match=pattern):
        encode(_message(params={"w": array}), secret=SECRET)


def test_encode_and_decode_refuse_an_empty_secret() -> None:
    with pytest.raises(ConfigError, match="secret must be non-empty"):
        encode(_message(), secret=b"")
    with pytest.raises(ConfigError, match="secret must be non-empty"):
        decode(GOOD, secret=b"")


# --- secrets ---------------------------------------------------------------------------


def test_secret_from_env_file_and_literal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    monkeypatch.setenv("GOSSIPSER_TEST_SECRET", "from-env")
    path = tmp_path / "secret"
    path.write_bytes(b"from-file\n")

    # Execute / Assert
    assert secret_from("env:GOSSIPSER_TEST_SECRET") == b"from-env"
    assert secret_from(f"file:{path}") == b"from-file"
    assert secret_from("plain words") == b"plain words"


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        (None, "no run secret"),
        ("", "no run secret"),
        ("env:GOSSIPSER_SURELY_UNSET_VAR", "'GOSSIPSER_SURELY_UNSET_VAR' is not set"),
        ("env:GOSSIPSER_TEST_EMPTY", "is empty"),
        ("file:/nonexistent/gossipser/secret", "cannot read secret file"),
    ],
)
def test_secret_from_refuses_missing_or_empty(
    source: str | None, pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOSSIPSER_TEST_EMPTY", "")
    monkeypatch.delenv("GOSSIPSER_SURELY_UNSET_VAR", raising=False)
    with pytest.raises(ConfigError, match=pattern):
        secret_from(source)


# --- stream framing --------------------------------------------------------------------


async def test_read_frame_reassembles_frames_fed_in_pieces() -> None:
    # Prepare
    reader = asyncio.StreamReader()
    stream = frame_length_prefix(GOOD) + frame_length_prefix(b"second")
    for start in range(0, len(stream), 7):
        reader.feed_data(stream[start : start + 7])
    reader.feed_eof()

    # Execute
    first = await read_frame(reader)
    second = await read_frame(reader)

    # Assert
    assert stream[:4] == len(GOOD).to_bytes(4, "big")
    assert (first, second) == (GOOD, b"second")
    with pytest.raises(TransportError, match="^wire: connection closed$"):
        await read_frame(reader)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"\x00\x00", "closed after 2 of 4 bytes of the length prefix"),
        (b"\x00\x00\x00\x09abc", "closed after 3 of 9 bytes of the 9-byte frame"),
    ],
)
async def test_read_frame_reports_a_stream_cut_mid_frame(data: bytes, pattern: str) -> None:
    # Prepare
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()

    # Execute / Assert
    with pytest.raises(TransportError, match=pattern):
        await read_frame(reader)


async def test_read_frame_refuses_an_oversized_declared_length() -> None:
    # Prepare
    reader = asyncio.StreamReader()
    reader.feed_data((2**32 - 1).to_bytes(4, "big"))

    # Execute / Assert
    with pytest.raises(WireError, match="announced a 4294967295-byte frame, limit is 1000"):
        await read_frame(reader, max_bytes=1000)


# --- fuzzing: any input gives a valid Message or one WireError -------------------------

SPEC = ModelSpec.from_params(_params())
SEEDS = [
    GOOD,
    encode(_message(meta={"lr": 0.5, "tag": "x", "n": -3}), secret=SECRET),
    encode(_message(kind="hello", params={}), secret=SECRET),
    encode(_message(kind="push_sum", age=0.0, params={"w": np.float32([[1.0]])}), secret=SECRET),
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
# Two levels deep is enough for the field checks; st.recursive costs ~3x the generation time.
msgpack_values = (
    scalars
    | st.lists(scalars, max_size=5)
    | st.dictionaries(st.text(max_size=8), scalars, max_size=5)
    | st.lists(st.lists(scalars, max_size=4), max_size=3)
)


def _decode_or_wire_error(frame: bytes, **kwargs: Any) -> None:
    """Decoding must return a self-consistent Message or raise WireError, nothing else."""
    kwargs.setdefault("spec", SPEC)
    allowed = kwargs.get("dtypes", DEFAULT_DTYPES)
    try:
        msg = _decode(frame, run=RUN, **kwargs)
    except WireError as exc:
        assert str(exc).startswith("wire: ") and "\n" not in str(exc)
        return
    assert msg.kind in KINDS and msg.run == RUN and msg.round >= 0 and msg.age >= 0
    for array in msg.params.values():
        assert array.dtype.name in allowed and not array.flags.writeable
        assert np.isfinite(array).all()
    if msg.kind not in ("hello", "bye"):
        assert ModelSpec.from_params(msg.params) == SPEC


def _mutate(data: st.DataObject, blob: bytes) -> bytes:
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "splice"]))
    at = data.draw(st.integers(0, len(blob)))
    if op == "flip" and blob:
        at = min(at, len(blob) - 1)
        return blob[:at] + bytes([blob[at] ^ (1 << data.draw(st.integers(0, 7)))]) + blob[at + 1 :]
    if op == "truncate":
        return blob[:at]
    if op == "insert":
        return blob[:at] + data.draw(st.binary(min_size=1, max_size=16)) + blob[at:]
    if op == "delete":
        return blob[:at] + blob[at + data.draw(st.integers(1, 16)) :]
    if op == "overwrite":
        patch = data.draw(st.binary(min_size=1, max_size=16))
        return blob[:at] + patch + blob[at + len(patch) :]
    other = data.draw(st.sampled_from(SEEDS))
    return blob[:at] + other[data.draw(st.integers(0, len(other))) :]


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(blob: bytes) -> None:
    _decode_or_wire_error(blob)
    _decode_or_wire_error(MAGIC + blob)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bodies_with_a_valid_tag(body: bytes) -> None:
    _decode_or_wire_error(_seal(body))


@FUZZ
@given(msgpack_values)
def test_fuzz_random_msgpack_values_with_a_valid_tag(value: Any) -> None:
    _decode_or_wire_error(_forge(value))


@FUZZ
@given(st.data())
def test_fuzz_envelopes_with_random_field_values(data: st.DataObject) -> None:
    # Prepare: keep most fields valid so the decoder gets past the first checks.
    envelope = msgpack.unpackb(data.draw(st.sampled_from(SEEDS))[len(MAGIC) : -TAG_LEN])
    for key in data.draw(st.lists(st.sampled_from([*envelope, "meta", "x"]), max_size=3)):
        envelope[key] = data.draw(msgpack_values)
    params = envelope["params"]
    if isinstance(params, list) and params and isinstance(params[0], list) and params[0]:
        params[0][data.draw(st.integers(0, len(params[0]) - 1))] = data.draw(msgpack_values)

    # Execute / Assert
    _decode_or_wire_error(_forge(envelope))


@FUZZ
@given(st.data())
def test_fuzz_mutated_frames(data: st.DataObject) -> None:
    frame = data.draw(st.sampled_from(SEEDS))
    for _ in range(data.draw(st.integers(1, 3))):
        frame = _mutate(data, frame)
    _decode_or_wire_error(frame)


@FUZZ
@given(st.data())
def test_fuzz_mutated_bodies_with_a_recomputed_tag(data: st.DataObject) -> None:
    body = data.draw(st.sampled_from(SEEDS))[len(MAGIC) : -TAG_LEN]
    for _ in range(data.draw(st.integers(1, 3))):
        body = _mutate(data, body)
    _decode_or_wire_error(_seal(body), dtypes={"float32", "float64", "float16", "int32"})
