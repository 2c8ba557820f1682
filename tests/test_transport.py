"""Transports: in-memory, TCP on loopback and MQTT through a private mosquitto on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from gossipser.errors import ConfigError, TransportError
from gossipser.net.broker import Mosquitto, free_port, mosquitto_path
from gossipser.net.links import open_transport
from gossipser.net.tcp import TcpTransport
from gossipser.net.transport import MemoryHub, MemoryTransport, Transport, TransportConfig

BIG = 200_000  # bytes: a small model's frame
LOOPBACK = "127.0.0.1"
needs_mosquitto = pytest.mark.skipif(
    mosquitto_path() is None, reason="mosquitto not installed (apt-get install mosquitto)"
)


def frame(src: int, dest: int, seq: int, size: int = 32) -> bytes:
    head = f"{src}->{dest}#{seq}|".encode()
    return head + bytes([seq % 251]) * max(0, size - len(head))


async def take(t: Transport, n: int) -> list[bytes]:
    """The next `n` frames `t` receives."""
    got: list[bytes] = []
    if n == 0:
        return got
    async for item in t.incoming():
        got.append(item)
        if len(got) == n:
            break
    return got


async def eventually(check: Callable[[], bool], seconds: float = 3.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.02)


async def until_online(
    t: Transport, check: Callable[[set[int]], bool], seconds: float = 3.0
) -> None:
    """Wait until `check(t.peers_online())` holds."""
    async with asyncio.timeout(seconds):
        while not check(await t.peers_online()):
            await asyncio.sleep(0.02)


def tcp_configs(n: int, **overrides: object) -> list[TransportConfig]:
    addresses = {node: (LOOPBACK, free_port()) for node in range(n)}
    return [
        TransportConfig(kind="tcp", node=node, addresses=addresses, **overrides)  # type: ignore[arg-type]
        for node in range(n)
    ]


def by_sender(frames: list[bytes]) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for item in frames:
        out.setdefault(int(item.split(b"->")[0]), []).append(item)
    return out


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "carrier-pigeon", "node": 0},
        {"kind": "tcp", "node": 0},  # no listen address for itself
        {"kind": "tcp", "node": 0, "addresses": {0: ("127.0.0.1", 70000)}},
        {"kind": "memory", "node": -2},
        {"kind": "memory", "node": 0, "send_timeout": 0},
        {"kind": "memory", "node": 0, "backoff_initial": 1.0, "backoff_max": 0.5},
        {"kind": "mqtt", "node": 0, "run": "a/b"},
        {"kind": "mqtt", "node": 0, "prefix": "x/#"},
    ],
)
def test_bad_config_is_one_line_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match="^transport: ") as info:
        TransportConfig(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_memory_kind_needs_a_hub() -> None:
    with pytest.raises(ConfigError, match="MemoryHub"):
        open_transport(TransportConfig(kind="memory", node=0))


# --- memory -------------------------------------------------------------------------------


async def test_memory_three_nodes_exchange_in_order() -> None:
    async with asyncio.timeout(5):
        hub = MemoryHub()
        cfgs = [TransportConfig(kind="memory", node=n) for n in range(3)]
        async with contextlib.AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(open_transport(c, hub=hub)) for c in cfgs]
            assert isinstance(nodes[0], MemoryTransport)

            for src in range(3):
                for dest in range(3):
                    if src != dest:
                        for seq in range(3):
                            await nodes[src].send(dest, frame(src, dest, seq))
            got = [await take(t, 6) for t in nodes]

        for dest, frames in enumerate(got):
            for src, mine in by_sender(frames).items():
                assert mine == [frame(src, dest, seq) for seq in range(3)]
        assert nodes[0].stats.frames_sent == 6 and nodes[0].stats.frames_received == 0
        assert await nodes[0].peers_online() == set()  # everyone has left the hub


async def test_memory_send_to_unknown_node_raises() -> None:
    async with asyncio.timeout(5):
        hub = MemoryHub()
        async with open_transport(TransportConfig(kind="memory", node=0), hub=hub) as t:
            with pytest.raises(TransportError, match="node 7 is not registered"):
                await t.send(7, b"hello")
            assert t.stats.send_failures == 1
            assert await t.peers_online() == {0}


async def test_memory_send_to_a_full_inbox_times_out() -> None:
    async with asyncio.timeout(5):
        hub = MemoryHub()
        cfgs = [
            TransportConfig(kind="memory", node=n, inbox_size=1, send_timeout=0.1) for n in (0, 1)
        ]
        async with open_transport(cfgs[0], hub=hub) as t0, open_transport(cfgs[1], hub=hub):
            await t0.send(1, b"fills the inbox")
            with pytest.raises(
                TransportError, match=r"node 1 took no frame \(gave up after 0.1 s\)"
            ):
                await t0.send(1, b"no room")


# --- tcp ----------------------------------------------------------------------------------


async def test_tcp_four_nodes_exchange_small_and_200kB_frames() -> None:
    async with asyncio.timeout(10):
        cfgs = tcp_configs(4)
        async with contextlib.AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(open_transport(c)) for c in cfgs]

            async def send_all(src: int) -> None:
                for dest in range(4):
                    if dest != src:
                        for seq in range(3):
                            await nodes[src].send(dest, frame(src, dest, seq, BIG * (seq % 2)))

            # Also several concurrent senders to the same destination: frames must not interleave.
            burst = [nodes[1].send(0, frame(1, 0, seq, BIG)) for seq in range(3, 8)]
            await asyncio.gather(*(send_all(src) for src in range(4)), *burst)
            got = [await take(t, 9 + (5 if dest == 0 else 0)) for dest, t in enumerate(nodes)]
            online = await nodes[0].peers_online()

        for dest, frames in enumerate(got):
            senders = by_sender(frames)
            assert sorted(senders) == [s for s in range(4) if s != dest]
            for src, mine in senders.items():
                ordered = [frame(src, dest, seq, BIG * (seq % 2)) for seq in range(3)]
                assert [f for f in mine if f in ordered] == ordered  # per-sender order
        burst_frames = {frame(1, 0, seq, BIG) for seq in range(3, 8)}
        assert burst_frames <= set(got[0])
        assert online == {0, 1, 2, 3}
        assert nodes[1].stats.frames_sent == 14 and nodes[0].stats.frames_received == 14


async def test_tcp_send_to_down_node_raises_within_send_timeout() -> None:
    async with asyncio.timeout(5):
        cfg0, _ = tcp_configs(2, send_timeout=0.5, backoff_max=0.1)
        async with TcpTransport(cfg0) as t:
            start = time.monotonic()
            with pytest.raises(TransportError, match=r"node 1 at 127\.0\.0\.1:\d+") as info:
                await t.send(1, b"anyone?")
            elapsed = time.monotonic() - start

        assert 0.45 <= elapsed < 1.5
        assert "ConnectionRefusedError" in str(info.value) and "\n" not in str(info.value)
        assert t.stats.send_failures == 1 and t.stats.frames_sent == 0


async def test_tcp_node_that_comes_back_is_reachable_again() -> None:
    async with asyncio.timeout(10):
        cfg0, cfg1 = tcp_configs(2, send_timeout=0.5, backoff_max=0.1)
        async with TcpTransport(cfg0) as t0:
            async with TcpTransport(cfg1) as t1:
                await t0.send(1, b"first")
                assert await take(t1, 1) == [b"first"]
            await asyncio.sleep(0.05)  # let node 0 see the FIN of the closed connection
            assert await t0.peers_online() == {0}
            with pytest.raises(TransportError, match="node 1"):
                await t0.send(1, b"lost")
            async with TcpTransport(cfg1) as t1_again:  # same port, new process in real life
                await t0.send(1, b"again")
                assert await take(t1_again, 1) == [b"again"]

        assert t0.stats.reconnects == 1 and t0.stats.send_failures == 1


async def test_tcp_garbage_and_oversized_frames_are_dropped_and_counted() -> None:
    async with asyncio.timeout(10):
        cfg0, cfg1 = tcp_configs(2, max_frame=1 << 20)
        host, port = cfg0.addresses[0]
        async with TcpTransport(cfg0) as t0, TcpTransport(cfg1) as t1:
            hostile = [
                b"\xff\xff\xff\xffGARBAGE",  # absurd length
                (2 << 20).to_bytes(4, "big") + b"x" * 100,  # over max_frame
                (100).to_bytes(4, "big") + b"short",  # then the peer hangs up mid-frame
            ]
            for payload in hostile:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(payload)
                await writer.drain()
                if payload.endswith(b"short"):
                    writer.close()
                else:
                    assert await reader.read() == b""  # the node closed it
                    writer.close()
                await writer.wait_closed()
            await t1.send(0, b"legit after the noise")

            assert await take(t0, 1) == [b"legit after the noise"]
            await eventually(lambda: t0.stats.truncated_dropped == 1)
        assert t0.stats.oversized_dropped == 2
        assert t0.stats.frames_received == 1


async def test_tcp_connection_flood_and_slow_frames_are_cut_off_and_counted() -> None:
    async with asyncio.timeout(20):
        cfg0, cfg1 = tcp_configs(2, max_connections=8, frame_timeout=0.5)
        host, port = cfg0.addresses[0]
        async with TcpTransport(cfg0) as t0, TcpTransport(cfg1) as t1:
            # one slow writer: the length, then a few bytes of the body, then nothing
            slow_r, slow_w = await asyncio.open_connection(host, port)
            slow_w.write((1000).to_bytes(4, "big") + b"abc")
            await slow_w.drain()
            await eventually(lambda: t0.stats.slow_dropped == 1)
            assert await slow_r.read() == b""  # the node hung up on the slow writer
            # twenty idle connections: eight are held at most, the older silent ones closed
            idle = [await asyncio.open_connection(host, port) for _ in range(20)]
            await eventually(lambda: t0.stats.connections_refused >= 12)
            assert len(t0._handlers) <= 8
            for _, w in idle:
                w.close()
            slow_w.close()
            # the node still takes frames from its real neighbour
            await eventually(lambda: len(t0._handlers) < 8)
            await t1.send(0, b"legit after the flood")
            assert await take(t0, 1) == [b"legit after the flood"]
        assert t0.stats.truncated_dropped == 0


async def test_tcp_listen_address_in_use_is_a_transport_error() -> None:
    async with asyncio.timeout(5):
        cfg0, _ = tcp_configs(2)
        async with TcpTransport(cfg0):
            with pytest.raises(TransportError, match=r"tcp: node 0 cannot listen on 127\.0\.0\.1"):
                async with TcpTransport(cfg0):
                    pass


async def test_tcp_refuses_to_send_a_frame_over_max_frame() -> None:
    async with asyncio.timeout(5):
        cfg0, _ = tcp_configs(2, max_frame=1000)
        async with TcpTransport(cfg0) as t:
            with pytest.raises(TransportError, match="node 1 exceeds max_frame=1000"):
                await t.send(1, b"x" * 1001)


async def test_tcp_clean_shutdown_leaves_no_pending_tasks() -> None:
    async with asyncio.timeout(5):
        cfg0, cfg1 = tcp_configs(2)
        host, port = cfg0.addresses[0]
        async with TcpTransport(cfg0) as t0, TcpTransport(cfg1) as t1:
            consumer = asyncio.create_task(take(t0, 100))  # still iterating at exit
            await t1.send(0, frame(1, 0, 0, BIG))
            await t0.send(1, b"x")
            idle_reader, idle_writer = await asyncio.open_connection(host, port)  # says nothing
            await asyncio.sleep(0.05)
        assert await consumer == [frame(1, 0, 0, BIG)]  # incoming() ended at close
        assert await idle_reader.read() == b""
        idle_writer.close()
        await idle_writer.wait_closed()

        assert asyncio.all_tasks() == {asyncio.current_task()}


# --- mqtt ---------------------------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as running:
        yield running


def mqtt_config(node: int, port: int, **overrides: object) -> TransportConfig:
    settings: dict[str, object] = {
        "run": "t",
        "send_timeout": 3.0,
        "backoff_max": 0.2,
        "connect_timeout": 2.0,
    }
    settings.update(overrides)
    return TransportConfig(kind="mqtt", node=node, broker_port=port, **settings)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def mqtt_nodes(port: int, n: int, **overrides: object) -> AsyncIterator[list[Transport]]:
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(open_transport(mqtt_config(i, port, **overrides)))
            for i in range(n)
        ]
        yield nodes


@needs_mosquitto
async def test_mqtt_three_nodes_exchange_through_a_broker(broker: Mosquitto) -> None:
    async with asyncio.timeout(10):
        async with mqtt_nodes(broker.port, 3) as nodes:
            for src in range(3):
                for dest in range(3):
                    if src != dest:
                        for seq in range(2):
                            await nodes[src].send(dest, frame(src, dest, seq, BIG * seq))
            got = [await take(t, 4) for t in nodes]

        for dest, frames in enumerate(got):
            for src, mine in by_sender(frames).items():
                assert mine == [frame(src, dest, seq, BIG * seq) for seq in range(2)]
        assert nodes[0].stats.bytes_received == sum(map(len, got[0]))
        assert asyncio.all_tasks() == {asyncio.current_task()}  # client tasks all ended


@needs_mosquitto
async def test_mqtt_presence_online_then_offline(broker: Mosquitto) -> None:
    async with asyncio.timeout(10), mqtt_nodes(broker.port, 2) as nodes:
        async with open_transport(mqtt_config(2, broker.port)):
            await until_online(nodes[0], lambda peers: peers == {0, 1, 2})
        await until_online(nodes[0], lambda peers: peers == {0, 1})
        # A late joiner learns who is there from the retained presence messages.
        async with open_transport(mqtt_config(3, broker.port)) as late:
            await until_online(late, lambda peers: peers == {0, 1, 3})


@needs_mosquitto
async def test_mqtt_nodes_reconnect_after_broker_restart(broker: Mosquitto) -> None:
    async with asyncio.timeout(20), mqtt_nodes(broker.port, 2) as (t0, t1):
        await t0.send(1, b"before")
        assert await take(t1, 1) == [b"before"]

        await asyncio.to_thread(broker.stop)
        during = asyncio.create_task(t0.send(1, b"during"))  # waits for the broker
        await asyncio.sleep(0.3)
        assert not during.done()
        await asyncio.to_thread(broker.start)  # same port
        try:
            await during  # accepted after reconnecting; node 1 may not be subscribed yet
        except TransportError:
            pytest.fail("send during a short outage should succeed after reconnecting")

        # The restarted broker has no sessions: send once node 0 sees node 1 online again.
        await eventually(lambda: t0.stats.reconnects >= 1 and t1.stats.reconnects >= 1)
        await until_online(t0, lambda peers: 1 in peers)
        await t0.send(1, b"after")
        got = await take(t1, 1)
        if got == [b"during"]:  # node 1 re-subscribed before node 0 re-published
            got = await take(t1, 1)
        assert got == [b"after"]


async def test_mqtt_unreachable_broker_fails_on_enter() -> None:
    async with asyncio.timeout(5):
        cfg = mqtt_config(0, free_port(), connect_timeout=0.3)  # nobody listens there
        start = time.monotonic()
        with pytest.raises(TransportError, match="mqtt: node 0 cannot connect to broker") as info:
            async with open_transport(cfg):
                pass
        assert time.monotonic() - start < 1.5
        assert "refused" in str(info.value) and "\n" not in str(info.value)


@needs_mosquitto
async def test_mqtt_send_with_broker_down_raises_within_send_timeout(broker: Mosquitto) -> None:
    async with asyncio.timeout(10), mqtt_nodes(broker.port, 1, send_timeout=0.5) as (t0,):
        await asyncio.to_thread(broker.stop)
        start = time.monotonic()
        with pytest.raises(TransportError, match=r"mqtt: frame to node 1 not accepted by broker"):
            await t0.send(1, b"nobody home")
        assert 0.45 <= time.monotonic() - start < 1.5
        assert t0.stats.send_failures == 1


class CuttableProxy:
    """A TCP relay to the broker whose links can be cut, as a flaky network would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, LOOPBACK, self.port)

    async def cut(self) -> None:
        """Refuse new links and drop the current ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        b_reader, b_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        self._writers |= {c_writer, b_writer}
        pumps = [
            asyncio.create_task(self._pump(c_reader, b_writer)),
            asyncio.create_task(self._pump(b_reader, c_writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for writer in (c_writer, b_writer):
            writer.transport.abort()
            self._writers.discard(writer)
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()


@needs_mosquitto
async def test_mqtt_frames_queued_while_a_link_is_down_arrive_after_reconnect(
    broker: Mosquitto,
) -> None:
    """Persistent session (clean_session=False): the broker keeps QoS 1 frames for a node
    whose link dropped (its last will says offline meanwhile) and delivers them on reconnect."""
    async with asyncio.timeout(15):
        proxy = CuttableProxy(broker.port)
        await proxy.open()
        async with (
            mqtt_nodes(broker.port, 1) as (t0,),
            open_transport(mqtt_config(1, proxy.port)) as t1,
        ):
            await until_online(t0, lambda peers: 1 in peers)
            await proxy.cut()
            await until_online(t0, lambda peers: 1 not in peers)  # node 1's last will
            for seq in range(3):
                await t0.send(1, frame(0, 1, seq, BIG))  # the broker queues them
            await proxy.open()

            assert await take(t1, 3) == [frame(0, 1, seq, BIG) for seq in range(3)]
            await until_online(t0, lambda peers: 1 in peers)
            assert t1.stats.reconnects >= 1
        await proxy.cut()


@needs_mosquitto
async def test_mqtt_clean_exit_stops_the_broker_queuing_for_the_node(broker: Mosquitto) -> None:
    async with asyncio.timeout(10), mqtt_nodes(broker.port, 1) as (t0,):
        async with open_transport(mqtt_config(1, broker.port)) as t1:
            await t0.send(1, b"while there")
            assert await take(t1, 1) == [b"while there"]
        await t0.send(1, b"after it left")
        async with open_transport(mqtt_config(1, broker.port)) as t1_again:
            await t0.send(1, b"back again")
            assert await take(t1_again, 1) == [b"back again"]


# --- mqtt with TLS, client certificates and an ACL ------------------------------------------


@pytest.fixture(scope="module")
def run_keys(tmp_path_factory: pytest.TempPathFactory):
    from gossipser.net.keys import make_keys

    folder = tmp_path_factory.mktemp("keys")
    make_keys(folder, 4)  # peer-3 is a member of the CA but not of the line below
    return folder


@needs_mosquitto
# paho leaves the socket of a refused TLS client to the garbage collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_mqtt_tls_acl_lets_only_neighbours_write_and_nobody_else_in(run_keys,
                                                                          tmp_path) -> None:
    import aiomqtt
    import networkx as nx

    from gossipser.net.broker import acl_text
    from gossipser.net.keys import Keyring, make_keys

    line = nx.path_graph(3)  # 0 - 1 - 2: 0 and 2 are not neighbours
    acl = acl_text(line, prefix="gossipser", run="t")
    rings = [Keyring.load(run_keys, i) for i in range(3)]
    make_keys(tmp_path / "other", 3)
    with Mosquitto(keys=run_keys, acl=acl) as broker:
        async with asyncio.timeout(20):
            async with mqtt_nodes(broker.port, 0) as _, contextlib.AsyncExitStack() as stack:
                nodes = [await stack.enter_async_context(open_transport(
                    mqtt_config(i, broker.port, tls=rings[i]))) for i in range(3)]
                # neighbours talk over TLS
                await nodes[1].send(0, b"1 to 0")
                await nodes[1].send(2, b"1 to 2")
                await nodes[0].send(1, b"0 to 1")
                assert await take(nodes[0], 1) == [b"1 to 0"]
                assert await take(nodes[2], 1) == [b"1 to 2"]
                assert await take(nodes[1], 1) == [b"0 to 1"]
                # 2 may not write to 0's inbox: the broker drops it; 1's next frame arrives
                await nodes[2].send(0, b"2 to 0, not a neighbour")
                # a certificate holder that reuses node 0's client id gets its own session
                # (the broker names it by its certificate) and may not read 0's inbox
                thief = aiomqtt.Client("127.0.0.1", broker.port, identifier=nodes[0].identifier,
                                       clean_session=False,
                                       tls_context=Keyring.load(run_keys, 3).client_context())
                async with thief:
                    await thief.subscribe("gossipser/t/inbox/0", qos=1)
                    await nodes[1].send(0, b"1 to 0 again")
                    assert await take(nodes[0], 1) == [b"1 to 0 again"]
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            async for stolen in thief.messages:
                                pytest.fail(f"the thief read {stolen.payload!r}")
                # outsiders: no certificate, or a certificate of another CA
                for tls in (None, Keyring.load(tmp_path / "other", 0).client_context()):
                    with pytest.raises(aiomqtt.MqttError):
                        async with aiomqtt.Client("127.0.0.1", broker.port, timeout=2,
                                                  tls_context=tls) as outsider:
                            await outsider.subscribe("gossipser/#")


FD_LIMIT_NODE = r"""
import asyncio, resource, sys
from gossipser.net.broker import free_port
from gossipser.net.tcp import TcpTransport
from gossipser.net.transport import TransportConfig

resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
port0, port1 = int(sys.argv[1]), free_port()
addresses = {0: ("127.0.0.1", port0), 1: ("127.0.0.1", port1)}

async def main():
    cfg = dict(kind="tcp", addresses=addresses, max_connections=16, send_timeout=20.0)
    async with TcpTransport(TransportConfig(node=0, **cfg)) as t0, \
            TcpTransport(TransportConfig(node=1, **cfg)) as t1:
        print("listening", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # the flood is on
        frames = aiter(t0.incoming())
        for k in range(3):
            await t1.send(0, b"legit %d" % k)
            assert await asyncio.wait_for(anext(frames), 20) == b"legit %d" % k
        print("ok", t0.stats.connections_refused, flush=True)

asyncio.run(main())
"""


def test_tcp_node_outlives_a_connection_flood_beyond_its_file_limit(tmp_path) -> None:
    import socket
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", FD_LIMIT_NODE, str(port)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held = []
    try:
        assert proc.stdout.readline().strip() == "listening"
        for _ in range(300):  # more connections than the node has file descriptors
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                pass
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        ok, refused = out.split()[-2:]
        assert ok == "ok" and int(refused) > 100
    finally:
        for s in held:
            s.close()
        proc.kill()
