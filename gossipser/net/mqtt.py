"""MQTT transport (aiomqtt): one inbox topic per node on a broker, presence as retained messages.

Topics under ``{prefix}/{run}``:

* ``inbox/{node}``: every frame addressed to `node`, published and subscribed with QoS 1.
* ``presence/{node}``: retained ``b"online"`` on each connect, ``b"offline"`` on exit and as
  the retained last will, so a crash or a lost link also reads as offline.

Delivery is at least once: a frame whose PUBACK was lost with the connection is published
again after reconnecting, so a receiver may see it twice (frames carry sender and round).
The session is persistent (``clean_session=False``, identifier ``{prefix}-{run}-{node}``):
while a node's link is down but the broker stays up, the broker queues its QoS 1 frames and
hands them over on reconnect. A broker restart without persistence loses sessions, retained
presence and queued frames; nodes re-subscribe and re-announce themselves on reconnect.
A clean exit unsubscribes the inbox, so the broker stops queuing for a node that left.
Frames queued for a node that crashed reach its next launch, which drops them (they name the
session of the launch they were sent to, `gossipser.net.node`); its neighbours send their
latest message again once the new launch has answered their challenge.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import aiomqtt

from gossipser.errors import TransportError
from gossipser.net.transport import (
    Inbox,
    TransportConfig,
    TransportStats,
    check_size,
    count_sent,
    deadline,
)

ONLINE = b"online"
OFFLINE = b"offline"
_KEEPALIVE_S = 10  # how soon the broker notices a silent link and publishes the last will
_MAX_INFLIGHT = 20  # QoS 1 publishes awaiting PUBACK per client
_MAX_QUEUED_OUT = 256  # paho's outgoing queue; beyond it publish fails and send() retries


class _Sink(asyncio.Queue[aiomqtt.Message]):
    """Stands in for aiomqtt's message queue: hands each message on at once.

    Messages left in a client's own queue when its link drops would be lost (paho has
    already acknowledged them), so nothing is ever left there.
    """

    def __init__(self, maxsize: int = 0, *, deliver: Callable[[aiomqtt.Message], None]) -> None:
        super().__init__(maxsize)
        self._deliver = deliver

    def put_nowait(self, item: aiomqtt.Message) -> None:
        self._deliver(item)


class MqttTransport:
    """Frames through an MQTT broker; a background task owns the client and reconnects."""

    def __init__(self, cfg: TransportConfig) -> None:
        self.cfg = cfg
        self.stats = TransportStats()
        self._inbox = Inbox(cfg.inbox_size)
        root = f"{cfg.prefix}/{cfg.run}"
        self._inbox_topic = f"{root}/inbox/{cfg.node}"
        self._presence_root = f"{root}/presence/"
        self._presence: dict[int, bool] = {}
        # Current link: the client and an event set when that link is lost.
        self._link: tuple[aiomqtt.Client, asyncio.Event] | None = None
        self._up = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._last_error = "not connected yet"

    @property
    def identifier(self) -> str:
        return f"{self.cfg.prefix}-{self.cfg.run}-{self.cfg.node}".replace("/", "-")

    def inbox_topic(self, node: int) -> str:
        return f"{self.cfg.prefix}/{self.cfg.run}/inbox/{node}"

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-{self.identifier}")
        try:
            async with deadline(self.cfg.connect_timeout, self._unreachable):
                await self._up.wait()
        except BaseException:
            await self._stop_runner()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        self._closing = True
        link = self._link
        if link is not None:
            client = link[0]
            # Best effort: if the link is gone, the last will has said "offline" already.
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(self.cfg.connect_timeout):
                    await client.publish(
                        self._presence_root + str(self.cfg.node), OFFLINE, qos=1, retain=True
                    )
                    if exc_type is None:  # after a crash, keep queuing for a restart
                        await client.unsubscribe(self._inbox_topic)
        await self._stop_runner()
        self._inbox.close()

    async def send(self, dest: int, frame: bytes) -> None:
        """Publish to `dest`'s inbox (QoS 1); done when the broker has it (PUBACK).

        During a broker outage waits for the reconnection; TransportError after send_timeout.
        """
        check_size(self.cfg, self.stats, dest, frame)
        topic = self.inbox_topic(dest)
        try:
            async with deadline(self.cfg.send_timeout, lambda: self._undelivered(dest)):
                delay = self.cfg.backoff_initial
                while True:
                    await self._up.wait()
                    if self._link is not None and await self._publish(*self._link, topic, frame):
                        break
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, self.cfg.backoff_max)
        except TransportError:
            self.stats.send_failures += 1
            raise
        count_sent(self.stats, frame)

    def incoming(self) -> AsyncIterator[bytes]:
        return self._inbox

    async def peers_online(self) -> set[int]:
        """Nodes whose retained presence reads online, this one included; while the link is
        down, what was last heard (the broker's last will marks a lost node offline)."""
        return {node for node, online in self._presence.items() if online}

    async def _publish(
        self, client: aiomqtt.Client, lost: asyncio.Event, topic: str, frame: bytes
    ) -> bool:
        """One attempt on one link: True on PUBACK, False if the link failed first."""
        # aiomqtt would wait for a PUBACK that a dead link never brings: race the two.
        publish = asyncio.create_task(client.publish(topic, frame, qos=1, timeout=math.inf))
        watch = asyncio.create_task(lost.wait())
        try:
            await asyncio.wait((publish, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            publish.cancel()
            watch.cancel()
            await asyncio.wait((publish, watch))
        if publish.cancelled():
            return False
        error = publish.exception()
        if isinstance(error, aiomqtt.MqttError):
            self._last_error = _describe(error)
            return False
        if error is not None:
            raise error
        return True

    async def _run(self) -> None:
        """Own the client: connect, subscribe, announce, serve; reconnect with backoff."""
        delay = self.cfg.backoff_initial
        connected_before = False
        while not self._closing:
            lost = asyncio.Event()
            try:
                async with self._new_client() as client:
                    self._presence.clear()  # rebuilt from the retained messages
                    await client.subscribe(self._inbox_topic, qos=1)
                    await client.subscribe(self._presence_root + "+", qos=1)
                    await client.publish(
                        self._presence_root + str(self.cfg.node), ONLINE, qos=1, retain=True
                    )
                    self.stats.reconnects += int(connected_before)
                    connected_before = True
                    delay = self.cfg.backoff_initial
                    self._link = (client, lost)
                    self._up.set()
                    # Messages reach _deliver through _Sink; this only waits for the link to end.
                    async for _ in client.messages:
                        pass
            except aiomqtt.MqttError as exc:
                self._last_error = _describe(exc)
            finally:
                self._up.clear()
                self._link = None
                lost.set()
            if not self._closing:
                await asyncio.sleep(delay)
                delay = min(2 * delay, self.cfg.backoff_max)

    def _new_client(self) -> aiomqtt.Client:
        will_topic = self._presence_root + str(self.cfg.node)
        sink: Any = functools.partial(_Sink, deliver=self._deliver)
        return aiomqtt.Client(
            self.cfg.broker_host,
            self.cfg.broker_port,
            identifier=self.identifier,
            clean_session=False,
            will=aiomqtt.Will(will_topic, OFFLINE, qos=1, retain=True),
            timeout=self.cfg.connect_timeout,
            keepalive=_KEEPALIVE_S,
            queue_type=sink,
            max_inflight_messages=_MAX_INFLIGHT,
            max_queued_outgoing_messages=_MAX_QUEUED_OUT,
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            tls_context=self.cfg.tls.client_context() if self.cfg.tls is not None else None,
        )

    def _deliver(self, message: aiomqtt.Message) -> None:
        """Route one received message (runs in paho's read callback, on the event loop)."""
        topic = message.topic.value
        payload = message.payload
        if not isinstance(payload, bytes | bytearray):
            return
        if topic == self._inbox_topic:
            if len(payload) > self.cfg.max_frame:
                self.stats.oversized_dropped += 1
            elif self._inbox.offer(bytes(payload)):
                self.stats.frames_received += 1
                self.stats.bytes_received += len(payload)
            else:  # MQTT has no backpressure: paho has acknowledged the frame already
                self.stats.overflow_dropped += 1
        elif topic.startswith(self._presence_root):
            with contextlib.suppress(ValueError):
                self._presence[int(topic[len(self._presence_root) :])] = payload == ONLINE

    async def _stop_runner(self) -> None:
        self._closing = True
        runner = self._runner
        if runner is None:
            return
        runner.cancel()
        await asyncio.wait((runner,))  # wait(): our own cancellation is not swallowed
        if not runner.cancelled() and runner.exception() is not None:
            raise runner.exception()  # type: ignore[misc]

    def _unreachable(self) -> str:
        where = f"{self.cfg.broker_host}:{self.cfg.broker_port}"
        return f"mqtt: node {self.cfg.node} cannot connect to broker {where} ({self._last_error})"

    def _undelivered(self, dest: int) -> str:
        where = f"{self.cfg.broker_host}:{self.cfg.broker_port}"
        return f"mqtt: frame to node {dest} not accepted by broker {where} ({self._last_error})"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
