"""One async transport interface for frames between peers: in-memory, TCP and MQTT.

Frames are opaque bytes: the runtime encodes, authenticates and decodes them with
`gossipser.gossip.wire`. Every transport is an async context manager::

    async with open_transport(cfg) as t:   # gossipser.net.links
        await t.send(3, frame)
        async for frame in t.incoming():
            ...

This module holds what every transport shares (config, stats, inbox, deadlines) and the
in-memory transport; TCP is `gossipser.net.tcp`, MQTT `gossipser.net.mqtt`, and
`gossipser.net.links.open_transport` picks one by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from gossipser.errors import ConfigError, TransportError
from gossipser.gossip import wire
from gossipser.gossip.message import SERVER_ID

KINDS = ("memory", "tcp", "mqtt")
_TOPIC_UNSAFE = frozenset("+#\0")


@dataclass(frozen=True, kw_only=True)
class TransportConfig:
    """Where a node listens or which broker it uses, and how long it may wait.

    tcp: `addresses` maps every node id (its own included) to its listen (host, port).
    mqtt: frames travel on topics under ``{prefix}/{run}``.
    """

    kind: str = "tcp"
    node: int
    addresses: dict[int, tuple[str, int]] = field(default_factory=dict)
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    prefix: str = "gossipser"
    run: str = "run"
    connect_timeout: float = 2.0
    send_timeout: float = 5.0
    max_frame: int = wire.DEFAULT_MAX_FRAME
    backoff_initial: float = 0.05
    backoff_max: float = 2.0
    inbox_size: int = 256  # frames received but not yet taken by incoming()
    # tcp: inbound connections held at once (more are closed at once, and counted), and the
    # seconds a frame's body may take once its length has arrived (a slow writer is cut off)
    max_connections: int = 64
    frame_timeout: float = 30.0
    # per-peer keys (gossipser.net.keys.Keyring): mutual TLS on TCP, TLS with a client
    # certificate to the MQTT broker; None: plaintext
    tls: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"transport: kind {self.kind!r} is unknown (known: {KINDS})")
        if not _is_int(self.node) or self.node < SERVER_ID:
            raise ConfigError(f"transport: node must be an int >= -1, got {self.node!r}")
        object.__setattr__(self, "addresses", _checked_addresses(self.addresses))
        if self.kind == "tcp" and self.node not in self.addresses:
            raise ConfigError(f"transport: tcp node {self.node} has no listen address in addresses")
        if not isinstance(self.broker_host, str) or not self.broker_host:
            raise ConfigError("transport: broker_host must be a non-empty string")
        if not _is_port(self.broker_port):
            raise ConfigError(f"transport: broker_port must be 1-65535, got {self.broker_port!r}")
        for name in ("prefix", "run"):
            value = getattr(self, name)
            bad = not isinstance(value, str) or not value or not value.isprintable()
            if bad or _TOPIC_UNSAFE & set(value) or (name == "run" and "/" in value):
                raise ConfigError(
                    f"transport: {name} must be printable text without + # (or / in run), "
                    f"got {value!r}"
                )
        if not _is_int(self.max_connections) or self.max_connections < 1:
            raise ConfigError(f"transport: max_connections must be >= 1, got "
                              f"{self.max_connections!r}")
        for name in ("connect_timeout", "send_timeout", "backoff_initial", "backoff_max",
                     "frame_timeout"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ConfigError(f"transport: {name} must be > 0 seconds, got {value!r}")
        if self.backoff_max < self.backoff_initial:
            raise ConfigError("transport: backoff_max must be >= backoff_initial")
        if not _is_int(self.max_frame) or not 64 <= self.max_frame <= 2**32 - 1:
            raise ConfigError(f"transport: max_frame must be 64..2**32-1, got {self.max_frame!r}")
        if not _is_int(self.inbox_size) or self.inbox_size < 1:
            raise ConfigError(f"transport: inbox_size must be >= 1, got {self.inbox_size!r}")


@dataclass
class TransportStats:
    """Counters a transport keeps; read them at any time."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_received: int = 0
    bytes_received: int = 0
    send_failures: int = 0  # send() calls that raised TransportError
    reconnects: int = 0  # connections re-established after one was lost
    oversized_dropped: int = 0  # frames (tcp: connections) refused for exceeding max_frame
    truncated_dropped: int = 0  # tcp connections that closed in the middle of a frame
    overflow_dropped: int = 0  # mqtt frames dropped because the inbox was full
    connections_refused: int = 0  # tcp connections closed at once: max_connections reached
    slow_dropped: int = 0  # tcp connections cut off: a frame took over frame_timeout


class Transport(Protocol):
    """What the runtime needs from any transport."""

    stats: TransportStats

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def send(self, dest: int, frame: bytes) -> None:
        """Deliver `frame` to node `dest`, or raise TransportError within send_timeout."""
        ...

    def incoming(self) -> AsyncIterator[bytes]:
        """Frames addressed to this node in arrival order; ends when the transport closes."""
        ...

    async def peers_online(self) -> set[int]:
        """Node ids this transport currently believes reachable (itself included)."""
        ...


@contextlib.asynccontextmanager
async def deadline(seconds: float, what: str | Callable[[], str]) -> AsyncIterator[None]:
    """Run the block within `seconds`; a timeout becomes one-line TransportError(`what`)."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError as exc:
        text = what() if callable(what) else what
        raise TransportError(f"{text} (gave up after {seconds:g} s)") from exc


class Inbox:
    """Bounded FIFO of received frames, iterated by `incoming()`; iteration ends on close."""

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(size)
        self._closed = False

    async def put(self, frame: bytes) -> None:
        """Wait for room (backpressure), then queue `frame`."""
        await self._queue.put(frame)

    def offer(self, frame: bytes) -> bool:
        """Queue `frame` if there is room; False when full."""
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        return True

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(asyncio.QueueFull):  # full: nobody is blocked in get()
            self._queue.put_nowait(None)

    def __aiter__(self) -> Inbox:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        frame = await self._queue.get()
        if frame is None:
            self.close()  # wake any other reader too
            raise StopAsyncIteration
        return frame


class MemoryHub:
    """In-process switchboard shared by the MemoryTransports of one test or simulation."""

    def __init__(self) -> None:
        self._inboxes: dict[int, Inbox] = {}

    def attach(self, node: int, inbox: Inbox) -> None:
        if node in self._inboxes:
            raise TransportError(f"memory: node {node} is already registered on this hub")
        self._inboxes[node] = inbox

    def detach(self, node: int) -> None:
        self._inboxes.pop(node, None)

    def inbox(self, node: int) -> Inbox:
        try:
            return self._inboxes[node]
        except KeyError:
            raise TransportError(f"memory: node {node} is not registered on the hub") from None

    def nodes(self) -> set[int]:
        return set(self._inboxes)


class MemoryTransport:
    """Frames handed over through a MemoryHub: no sockets, same interface."""

    def __init__(self, cfg: TransportConfig, *, hub: MemoryHub) -> None:
        self.cfg = cfg
        self.stats = TransportStats()
        self._hub = hub
        self._inbox = Inbox(cfg.inbox_size)

    async def __aenter__(self) -> Self:
        self._hub.attach(self.cfg.node, self._inbox)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._hub.detach(self.cfg.node)
        self._inbox.close()

    async def send(self, dest: int, frame: bytes) -> None:
        check_size(self.cfg, self.stats, dest, frame)
        try:
            inbox = self._hub.inbox(dest)
            async with deadline(self.cfg.send_timeout, f"memory: node {dest} took no frame"):
                await inbox.put(frame)
        except TransportError:
            self.stats.send_failures += 1
            raise
        count_sent(self.stats, frame)

    def incoming(self) -> AsyncIterator[bytes]:
        return self._inbox

    async def peers_online(self) -> set[int]:
        return self._hub.nodes()


def check_size(cfg: TransportConfig, stats: TransportStats, dest: int, frame: bytes) -> None:
    """Refuse a frame the receiver would drop anyway: TransportError naming `dest`."""
    if len(frame) > cfg.max_frame:
        stats.send_failures += 1
        raise TransportError(
            f"{cfg.kind}: frame of {len(frame)} bytes to node {dest} exceeds "
            f"max_frame={cfg.max_frame}"
        )


def count_sent(stats: TransportStats, frame: bytes) -> None:
    stats.frames_sent += 1
    stats.bytes_sent += len(frame)


def _checked_addresses(addresses: object) -> dict[int, tuple[str, int]]:
    if not isinstance(addresses, dict):
        raise ConfigError("transport: addresses must map node id -> (host, port)")
    checked: dict[int, tuple[str, int]] = {}
    for node, address in addresses.items():
        try:
            host, port = address
        except (TypeError, ValueError):
            host, port = None, None
        if not (_is_int(node) and isinstance(host, str) and host and _is_port(port)):
            raise ConfigError(
                f"transport: address of node {node!r} must be (host, port 1-65535), got {address!r}"
            )
        checked[node] = (host, port)
    return checked


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_port(value: object) -> bool:
    return _is_int(value) and 0 < value < 65536  # type: ignore[operator]


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
