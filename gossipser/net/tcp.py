"""TCP transport: length-prefixed frames over asyncio streams, one listening server per node
and one cached outgoing connection per destination, re-opened with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Self

from gossipser.errors import TransportError, WireError
from gossipser.gossip import wire
from gossipser.net.keys import peer_node
from gossipser.net.transport import (
    Inbox,
    TransportConfig,
    TransportStats,
    check_size,
    count_sent,
    deadline,
)
from gossipser.net.transport import describe_error as _describe

_CLOSE_TIMEOUT = 1.0  # seconds a closing stream may take to flush before it is aborted


class TcpTransport:
    """Length-prefixed frames over asyncio streams: one server per node, one cached
    outgoing connection per destination, re-opened with exponential backoff."""

    def __init__(self, cfg: TransportConfig) -> None:
        self.cfg = cfg
        self.stats = TransportStats()
        self._inbox = Inbox(cfg.inbox_size)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # inbound connections that have not delivered a frame yet, oldest first
        self._silent: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._ever_connected: set[int] = set()

    async def __aenter__(self) -> Self:
        host, port = self.cfg.addresses[self.cfg.node]
        try:
            tls = self.cfg.tls.server_context() if self.cfg.tls is not None else None
            self._server = await asyncio.start_server(
                self._accept, host, port, ssl=tls,
                ssl_handshake_timeout=self.cfg.connect_timeout if tls else None)
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
        tls = self.cfg.tls.client_context() if self.cfg.tls is not None else None
        async with asyncio.timeout(self.cfg.connect_timeout):  # TimeoutError is an OSError
            reader, writer = await asyncio.open_connection(host, port, ssl=tls)
        if tls is not None:  # the run's CA signed it; it must also be the node we called
            shown = peer_node(writer.get_extra_info("ssl_object"))
            if shown != dest:
                _abort((reader, writer))
                raise TransportError(f"tls: {host}:{port} showed the certificate of node "
                                     f"{shown}, not of node {dest}")
        self._conns[dest] = (reader, writer)
        if dest in self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected.add(dest)
        return writer

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._handlers) >= self.cfg.max_connections and not self._evict_silent():
            self.stats.connections_refused += 1  # a flood of talking connections: keep ours
            _abort((reader, writer))
            return
        # Our own task rather than a coroutine callback: Python 3.11's start_server logs a
        # spurious "Unhandled exception" when it sees its handler task cancelled.
        task = asyncio.create_task(self._serve(reader, writer))
        self._handlers.add(task)
        self._silent[task] = writer
        task.add_done_callback(self._handlers.discard)
        task.add_done_callback(lambda t: self._silent.pop(t, None))

    def _evict_silent(self) -> bool:
        """At the connection limit, close the oldest connection that has not delivered a
        frame yet (idle connections held by a flood must not lock the neighbours out)."""
        for task, writer in self._silent.items():  # insertion order: oldest first
            self.stats.connections_refused += 1
            del self._silent[task]
            self._handlers.discard(task)
            writer.transport.abort()
            return True
        return False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One inbound connection: read frames until EOF; bad framing closes only it, and so
        does silence: its first frame must arrive within twice frame_timeout."""
        task = asyncio.current_task()
        try:
            while True:
                # the first frame, whole, within twice frame_timeout of the connection
                first = asyncio.timeout(2 * self.cfg.frame_timeout if task in self._silent
                                        else None)
                async with first:
                    frame = await wire.read_frame(reader, self.cfg.max_frame,
                                                  self.cfg.frame_timeout)
                self._silent.pop(task, None)  # it talks: a neighbour, not an idle flood
                self.stats.frames_received += 1
                self.stats.bytes_received += len(frame)
                await self._inbox.put(frame)  # a full inbox stops reading: TCP backpressure
        except TimeoutError:  # connected and said nothing
            self.stats.slow_dropped += 1
        except WireError:  # declared length over max_frame (or garbage read as a length)
            self.stats.oversized_dropped += 1
        except TransportError as exc:  # EOF or reset; count it when it cut a frame short
            cut = exc.__cause__
            if isinstance(cut, TimeoutError):
                self.stats.slow_dropped += 1
            elif isinstance(cut, asyncio.IncompleteReadError) and (
                    cut.partial or cut.expected != 4):
                self.stats.truncated_dropped += 1
        finally:
            await _close_writer(writer)


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
