"""Time wire.encode / wire.decode on a ~200 kB float32 model against memcpy and HMAC alone.

Run: PYTHONPATH=. .venv/bin/python scripts/bench_wire.py [--number N] [--repeat R]
Each figure is the best of R runs of N calls, so a busy machine inflates it less.
"""

from __future__ import annotations

import argparse
import hmac
import timeit
from collections.abc import Callable

import numpy as np

from gossipser.gossip.message import Message, ModelSpec
from gossipser.gossip.wire import MAGIC, TAG_LEN, decode, encode


def model_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random values in the shapes of gossipser's default model: the 1-D CNN on 13 MFCCs,
    8 classes (52,040 parameters plus BatchNorm statistics, ~209 kB): the message peers send."""
    from gossipser.learn.models import build_model, get_state
    from gossipser.learn.settings import ModelConfig

    state = get_state(build_model(ModelConfig(), n_features=13, n_classes=8))
    return {k: rng.standard_normal(v.shape, dtype=np.float32) for k, v in state.items()}


SECRET = b"bench-run-secret-0123456789abcdef"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=500, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=20, help="timing runs; the best counts")
    args = parser.parse_args()

    def per_call_us(fn: Callable[[], object]) -> float:
        return min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number * 1e6

    rng = np.random.default_rng(0)
    params = model_params(rng)
    spec = ModelSpec.from_params(params)
    msg = Message(kind="model", run="bench", sender=1, round=3, age=4.0, samples=96, params=params)
    frame = encode(msg, secret=SECRET)
    payload = bytearray(b"".join(a.tobytes() for a in params.values()))
    n_params = sum(a.size for a in params.values())

    timings = {
        "copy payload (bytes(bytearray))": per_call_us(lambda: bytes(payload)),
        "hmac-sha256 of frame": per_call_us(lambda: hmac.digest(SECRET, frame, "sha256")),
        "encode": per_call_us(lambda: encode(msg, secret=SECRET)),
        "decode (hmac + checks + spec)": per_call_us(
            lambda: decode(frame, secret=SECRET, spec=spec, run="bench")
        ),
    }
    copy_us = timings["copy payload (bytes(bytearray))"]
    hmac_us = timings["hmac-sha256 of frame"]

    print(f"params: {n_params} float32 in {len(params)} arrays = {len(payload)} payload bytes")
    overhead = len(frame) - len(payload)
    print(
        f"frame:  {len(frame)} bytes ({overhead} bytes overhead: "
        f"{len(MAGIC)} magic + {overhead - len(MAGIC) - TAG_LEN} msgpack + {TAG_LEN} tag)"
    )
    print(f"{'operation':34} {'us/frame':>10} {'MB/s':>9} {'x copy':>8} {'x hmac':>8}")
    for name, us in timings.items():
        mb_s = len(payload) / us  # bytes per microsecond == MB/s
        print(f"{name:34} {us:10.1f} {mb_s:9.0f} {us / copy_us:8.1f} {us / hmac_us:8.2f}")


if __name__ == "__main__":
    main()
