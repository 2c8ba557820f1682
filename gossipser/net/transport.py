"""One async transport interface for frames between peers: in-memory, TCP and MQTT.

Frames are opaque bytes: the runtime encodes, authenticates and decodes them with
`gossipser.gossip.wire`. Every transport is an async context manager::

    async with open_transport(cfg) as t:
        await t.send(3, frame)
        async for frame in t.incoming():
            ...

The MQTT transport lives in `gossipser.net.mqtt` and shares the pieces defined here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, Self

from gossipser.errors import ConfigError, TransportError, WireError
from gossipser.gossip import wire

KINDS = ("memory", "tcp", "mqtt")
_CLOSE_TIMEOUT = 1.0  # seconds a closing stream may take to flush before it is aborted
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

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"transport: kind {self.kind!r} is unknown (known: {KINDS})")
        if not _is_int(self.node) or self.node < wire.SERVER_ID:
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
        for name in ("connect_timeout", "send_timeout", "backoff_initial", "backoff_max"):
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


class TcpTransport:
    """Length-prefixed frames over asyncio streams: one server per node, one cached
    outgoing connection per destination, re-opened with exponential backoff."""

    def __init__(self, cfg: TransportConfig) -> None:
        self.cfg = cfg
        self.stats = TransportStats()
        self._inbox = Inbox(cfg.inbox_size)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._ever_connected: set[int] = set()

    async def __aenter__(self) -> Self:
        host, port = self.cfg.addresses[self.cfg.node]
        try:
            self._server = await asyncio.start_server(self._accept, host, port)
        except OSError as exc:
            raise TransportError(
                f"tcp: node {self.cfg.node} cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._inbox.close()
        if self._server is not None:
            self._server.close()
        for task in self._handlers:
            task.cancel()
        # wait() rather than gather(): our own cancellation must not be swallowed.
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=2 * _CLOSE_TIMEOUT)
        for dest in list(self._conns):
            await _close_writer(self._conns.pop(dest)[1])
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await self._server.wait_closed()

    async def send(self, dest: int, frame: bytes) -> None:
        host, port = self._address(dest)
        check_size(self.cfg, self.stats, dest, frame)
        header = len(frame).to_bytes(4, "big")  # the prefix of wire.frame_length_prefix, no copy
        errors: list[BaseException] = []

        def what() -> str:
            last = f" (last error: {_describe(errors[-1])})" if errors else ""
            return f"tcp: cannot deliver to node {dest} at {host}:{port}{last}"

        lock = self._locks.setdefault(dest, asyncio.Lock())  # frames must not interleave
        try:
            async with deadline(self.cfg.send_timeout, what), lock:
                delay = self.cfg.backoff_initial
                while True:
                    try:
                        writer = await self._writer(dest, host, port)
                        try:
                            writer.writelines((header, frame))
                            await writer.drain()
                        except BaseException:  # failed or timed out mid-frame: out of step
                            _abort(self._conns.pop(dest, None))
                            raise
                        break
                    except OSError as exc:
                        errors.append(exc)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, self.cfg.backoff_max)
        except TransportError:
            self.stats.send_failures += 1
            raise
        count_sent(self.stats, frame)

    def incoming(self) -> AsyncIterator[bytes]:
        return self._inbox

    async def peers_online(self) -> set[int]:
        live = {dest for dest, (r, w) in self._conns.items() if _alive(r, w)}
        return live | {self.cfg.node}

    def _address(self, dest: int) -> tuple[str, int]:
        try:
            return self.cfg.addresses[dest]
        except KeyError:
            self.stats.send_failures += 1
            raise TransportError(f"tcp: node {dest} has no address in the config") from None

    async def _writer(self, dest: int, host: str, port: int) -> asyncio.StreamWriter:
        conn = self._conns.get(dest)
        if conn is not None and _alive(*conn):
            return conn[1]
        if conn is not None:  # the peer closed it (restart, crash): reopen
            await _close_writer(self._conns.pop(dest)[1])
        async with asyncio.timeout(self.cfg.connect_timeout):  # TimeoutError is an OSError
            reader, writer = await asyncio.open_connection(host, port)
        self._conns[dest] = (reader, writer)
        if dest in self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected.add(dest)
        return writer

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task rather than a coroutine callback: Python 3.11's start_server logs a
        # spurious "Unhandled exception" when it sees its handler task cancelled.
        task = asyncio.create_task(self._serve(reader, writer))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One inbound connection: read frames until EOF; bad framing closes only it."""
        try:
            while True:
                frame = await wire.read_frame(reader, self.cfg.max_frame)
                self.stats.frames_received += 1
                self.stats.bytes_received += len(frame)
                await self._inbox.put(frame)  # a full inbox stops reading: TCP backpressure
        except WireError:  # declared length over max_frame (or garbage read as a length)
            self.stats.oversized_dropped += 1
        except TransportError as exc:  # EOF or reset; count it when it cut a frame short
            cut = exc.__cause__
            if isinstance(cut, asyncio.IncompleteReadError) and (cut.partial or cut.expected != 4):
                self.stats.truncated_dropped += 1
        finally:
            await _close_writer(writer)


def open_transport(cfg: TransportConfig, *, hub: MemoryHub | None = None) -> Transport:
    """The transport `cfg.kind` names; kind 'memory' needs the shared `hub`."""
    if cfg.kind == "memory":
        if hub is None:
            raise ConfigError("transport: kind 'memory' needs a MemoryHub (hub=...)")
        return MemoryTransport(cfg, hub=hub)
    if cfg.kind == "tcp":
        return TcpTransport(cfg)
    from gossipser.net.mqtt import MqttTransport  # imports aiomqtt only when used

    return MqttTransport(cfg)


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


def _alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    # The peer never writes on our outgoing connections, so EOF there means it went away.
    return not (reader.at_eof() or writer.is_closing())


def _abort(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if conn is not None:
        conn[1].transport.abort()


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close, wait a bounded time for the flush, abort if the peer does not read."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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
