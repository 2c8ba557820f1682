"""Round-trip latency and throughput of a ~200 kB model frame over loopback transports.

Compares, in one run and one event loop:
  (a)  a bare asyncio socket echo (4-byte length prefix + raw bytes, no wire),
  (b0) TcpTransport moving pre-encoded frames (transport cost alone),
  (b)  TcpTransport with wire.encode at the sender and wire.decode (HMAC + checks + spec)
       at the receiver, both ways,
  (c)  MqttTransport through a mosquitto started here, with wire encode/decode,
  (d0) TcpTransport over mutual TLS (per-peer keys from `gossipser keys`), pre-encoded,
  (d)  secure mode: mutual TLS, every frame signed (ECDSA P-256) and its signature checked.
Latency: one frame there and one back (median, p90). Throughput: `--stream` frames one way,
timed until the receiver has the last one (decoded where the row says so).

Run: .venv/bin/python scripts/bench_transport.py [--rounds 200] [--stream 200] [--no-mqtt]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_wire import model_params  # scripts/ is on sys.path when a script runs

from gossipser.gossip.message import Message, ModelSpec
from gossipser.gossip.wire import decode, encode
from gossipser.net.broker import Mosquitto, free_port, mosquitto_path
from gossipser.net.keys import Keyring, make_keys
from gossipser.net.links import open_transport
from gossipser.net.transport import Transport, TransportConfig

SECRET = b"bench-run-secret-0123456789abcdef"
RUN = "bench"
WARMUP = 10


@dataclass
class Result:
    label: str
    rtts: list[float]  # seconds
    stream_s: float
    stream_bytes: int

    def row(self) -> str:
        ms = sorted(r * 1e3 for r in self.rtts)
        p90 = ms[min(len(ms) - 1, int(0.9 * len(ms)))]
        mb_s = self.stream_bytes / self.stream_s / 1e6
        return f"{self.label:44} {statistics.median(ms):9.2f} {p90:9.2f} {mb_s:10.0f}"

    @property
    def mb_s(self) -> float:
        return self.stream_bytes / self.stream_s / 1e6


@dataclass
class Model:
    msg: Message
    spec: ModelSpec
    frame: bytes
    rings: dict | None = None  # node -> Keyring: signed frames instead of the HMAC

    def encode(self, sender: int) -> bytes:
        if self.rings is not None:
            return encode(_with_sender(self.msg, sender), signer=self.rings[sender])
        return encode(_with_sender(self.msg, sender), secret=SECRET)

    def decode(self, frame: bytes) -> Message:
        if self.rings is not None:
            return decode(frame, keys=self.rings[0], spec=self.spec, run=RUN)
        return decode(frame, secret=SECRET, spec=self.spec, run=RUN)


def _with_sender(msg: Message, sender: int) -> Message:
    return Message(
        kind=msg.kind, run=msg.run, sender=sender, round=msg.round, samples=msg.samples,
        params=msg.params,
    )  # fmt: skip


async def bench_raw(model: Model, rounds: int, stream: int) -> Result:
    """(a) length-prefixed raw bytes on a bare asyncio socket: echo, then a one-way stream."""
    frame = model.frame
    header = len(frame).to_bytes(4, "big")
    got_all = asyncio.Event()
    received = 0

    async def read_one(reader: asyncio.StreamReader) -> bytes:
        return await reader.readexactly(int.from_bytes(await reader.readexactly(4), "big"))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                data = await read_one(reader)
                writer.writelines((len(data).to_bytes(4, "big"), data))
                await writer.drain()
        writer.close()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await read_one(reader)
                received += 1
                if received == stream:
                    got_all.set()
        writer.close()

    ports = free_port(), free_port()
    servers = [
        await asyncio.start_server(echo, "127.0.0.1", ports[0]),
        await asyncio.start_server(sink, "127.0.0.1", ports[1]),
    ]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", ports[0])
        rtts = []
        for i in range(WARMUP + rounds):
            start = time.perf_counter()
            writer.writelines((header, frame))
            await writer.drain()
            await read_one(reader)
            if i >= WARMUP:
                rtts.append(time.perf_counter() - start)
        writer.close()
        await writer.wait_closed()

        _, writer = await asyncio.open_connection("127.0.0.1", ports[1])
        start = time.perf_counter()
        for _ in range(stream):
            writer.writelines((header, frame))
            await writer.drain()
        await got_all.wait()
        elapsed = time.perf_counter() - start
        writer.close()
        await writer.wait_closed()
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
    return Result("(a)  raw asyncio socket echo", rtts, elapsed, stream * len(frame))


async def bench_pair(
    label: str,
    pair: Callable[[], contextlib.AbstractAsyncContextManager[tuple[Transport, Transport]]],
    model: Model,
    rounds: int,
    stream: int,
    *,
    use_wire: bool,
) -> Result:
    """Node 0 sends to node 1, which echoes (phase "rtt") or counts (phase "stream")."""
    phase = "rtt"
    received = 0
    got_all = asyncio.Event()

    async def responder(t1: Transport) -> None:
        nonlocal received
        async for frame in t1.incoming():
            if use_wire:
                model.decode(frame)
            if phase == "rtt":
                await t1.send(0, model.encode(sender=1) if use_wire else frame)
            else:
                received += 1
                if received == stream:
                    got_all.set()

    def outgoing() -> bytes:
        return model.encode(sender=0) if use_wire else model.frame

    async with pair() as (t0, t1), asyncio.TaskGroup() as group:
        serving = group.create_task(responder(t1))
        replies = aiter(t0.incoming())
        rtts = []
        for i in range(WARMUP + rounds):
            start = time.perf_counter()
            await t0.send(1, outgoing())
            reply = await anext(replies)
            if use_wire:
                model.decode(reply)
            if i >= WARMUP:
                rtts.append(time.perf_counter() - start)

        phase = "stream"
        start = time.perf_counter()
        for _ in range(stream):
            await t0.send(1, outgoing())
        await got_all.wait()
        elapsed = time.perf_counter() - start
        serving.cancel()
    return Result(label, rtts, elapsed, stream * len(model.frame))


@contextlib.asynccontextmanager
async def tcp_pair(rings: dict | None = None) -> AsyncIterator[tuple[Transport, Transport]]:
    addresses = {0: ("127.0.0.1", free_port()), 1: ("127.0.0.1", free_port())}
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(open_transport(TransportConfig(
                kind="tcp", node=n, addresses=addresses, tls=rings[n] if rings else None)))
            for n in (0, 1)
        ]
        yield nodes[0], nodes[1]


def mqtt_pair(port: int) -> Callable[[], contextlib.AbstractAsyncContextManager]:
    @contextlib.asynccontextmanager
    async def pair() -> AsyncIterator[tuple[Transport, Transport]]:
        async with contextlib.AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(
                    open_transport(TransportConfig(kind="mqtt", node=n, broker_port=port, run=RUN))
                )
                for n in (0, 1)
            ]
            yield nodes[0], nodes[1]

    return pair


def make_model() -> Model:
    rng = np.random.default_rng(0)
    params = model_params(rng)
    msg = Message(kind="model", run=RUN, sender=0, round=1, samples=96, params=params)
    return Model(msg=msg, spec=ModelSpec.from_params(params), frame=encode(msg, secret=SECRET))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200, help="round trips timed")
    parser.add_argument("--stream", type=int, default=200, help="frames in the one-way stream")
    parser.add_argument("--no-mqtt", action="store_true", help="skip the mosquitto row")
    args = parser.parse_args()

    model = make_model()
    start = time.perf_counter()
    for _ in range(50):
        model.decode(model.encode(sender=0))
    codec_ms = (time.perf_counter() - start) / 50 * 1e3
    print(f"frame: {len(model.frame)} bytes; wire encode+decode: {codec_ms:.2f} ms per frame")

    results = [await bench_raw(model, args.rounds, args.stream)]
    n, s = args.rounds, args.stream
    b0 = "(b0) TcpTransport, pre-encoded, no wire"
    results.append(await bench_pair(b0, tcp_pair, model, n, s, use_wire=False))
    b = "(b)  TcpTransport + wire encode/decode"
    results.append(await bench_pair(b, tcp_pair, model, n, s, use_wire=True))
    if args.no_mqtt:
        pass
    elif mosquitto_path() is None:
        print("(c) skipped: mosquitto not installed (apt-get install mosquitto)")
    else:
        with Mosquitto() as broker:
            c = "(c)  MqttTransport (QoS 1) + wire enc/dec"
            results.append(await bench_pair(c, mqtt_pair(broker.port), model, n, s, use_wire=True))

    with tempfile.TemporaryDirectory() as folder:
        make_keys(Path(folder), 2)
        rings = {n: Keyring.load(folder, n) for n in (0, 1)}
        secure = dataclasses.replace(model, rings=rings)
        d0 = "(d0) TcpTransport, mutual TLS, pre-encoded"
        tls = functools.partial(tcp_pair, rings)
        results.append(await bench_pair(d0, tls, model, n, s, use_wire=False))
        d = "(d)  secure: mutual TLS + signed frames"
        results.append(await bench_pair(d, tls, secure, n, s, use_wire=True))

    print(f"{'path':44} {'rtt p50':>9} {'rtt p90':>9} {'MB/s':>10}")
    print(f"{'':44} {'ms':>9} {'ms':>9} {'one way':>10}")
    for result in results:
        print(result.row())
    raw, bare, full = results[0].mb_s, results[1].mb_s, results[2].mb_s
    print(
        f"framing and checks cost: (b) moves {full / raw:.0%} of (a)'s throughput "
        f"(loss {1 - full / raw:.0%}; target < 10%)"
    )
    print(f"  of which transport framing alone, (b0) vs (a): loss {1 - bare / raw:.0%}")
    secure_mb = results[-1].mb_s
    print(f"secure mode: (d) moves {secure_mb / full:.0%} of (b)'s plaintext throughput "
          f"(target >= 50%)")


if __name__ == "__main__":
    asyncio.run(main())
