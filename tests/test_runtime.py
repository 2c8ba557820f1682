"""The networked runtime: same weights as the simulator, real peer processes over TCP and MQTT,
faults (a killed peer, a broker restart, hostile frames) and what a peer's bytes reveal.

Everything runs on loopback with a CNN of width 8 on the tiny synthetic corpus; every run is
bounded (asyncio.timeout, subprocess timeouts) and every process started is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import numpy as np
import pytest
import soundfile as sf

from gossipser.data.dataset import Dataset, load_dataset
from gossipser.data.features import prepare_signal
from gossipser.errors import ConfigError
from gossipser.gossip.byzantine import parse_attack
from gossipser.gossip.message import Message
from gossipser.gossip.plan import RunSetup, setup_run
from gossipser.gossip.settings import GossipConfig
from gossipser.gossip.wire import MAGIC, MAGIC_SIGNED, decode, encode
from gossipser.learn.pool import SerialPool
from gossipser.learn.settings import ModelConfig, TrainConfig
from gossipser.net import runtime
from gossipser.net.broker import Mosquitto, mosquitto_path
from gossipser.net.node import NetworkConfig
from gossipser.net.transport import MemoryHub
from gossipser.privacy.record import MessageLog
from gossipser.sim.simulator import Simulator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "scripts" / "launch_local.py"
SECRET = b"test-run-secret"
TEST_SPEAKERS = ("spk04",)  # 3 training speakers, 36 utterances split iid over 4 peers
MODEL = ModelConfig(kind="cnn", width=8)
needs_mosquitto = pytest.mark.skipif(
    mosquitto_path() is None, reason="mosquitto not installed (apt-get install mosquitto)"
)


def _load_launcher():
    spec = importlib.util.spec_from_file_location("launch_local", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


launch_local = _load_launcher()


# fixtures and helpers ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime_cache")


@pytest.fixture(scope="module")
def ds(tiny_corpus: Path, cache_dir: Path) -> Dataset:
    return load_dataset(tiny_corpus, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def base_config(tiny_corpus: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Path:
    """The run config the process tests start from; the launcher adds [network]."""
    path = tmp_path_factory.mktemp("runtime_config") / "base.toml"
    path.write_text(launch_local.to_toml({
        "data": {"path": str(tiny_corpus), "test_speakers": list(TEST_SPEAKERS), "seed": 0,
                 "cache_dir": str(cache_dir)},
        "model": {"kind": MODEL.kind, "width": MODEL.width},
        "gossip": {"topology": "ring", "partition": "iid"},
    }))
    return path


def make_setup(ds: Dataset, algorithm: str, *, rounds: int = 3,
               private_layers: tuple[str, ...] = (), **gossip) -> RunSetup:
    cfg = GossipConfig(algorithm=algorithm, topology="ring", rounds=rounds, peers=4,
                       partition="iid", workers=1, private_layers=private_layers, **gossip)
    return setup_run(ds, cfg=cfg, model=MODEL, train=TrainConfig(), test_speakers=TEST_SPEAKERS,
                     seed=0)


def tcp_net(**timeouts: float) -> NetworkConfig:
    base = launch_local.free_port_block(5)
    return NetworkConfig(transport="tcp", server_port=base, base_port=base + 1,
                         **{"wait_timeout": 10.0, "start_timeout": 20.0, **timeouts})


async def run_network(
    setup: RunSetup, net: NetworkConfig, out: Path, *, limit: float = 60.0,
    status: Callable[[int], runtime.Status | None] = lambda pid: None,
    hub: MemoryHub | None = None, attacks: dict | None = None,
) -> list[dict]:
    """Every peer (and the FedAvg server, last) as tasks of this event loop, within `limit` s;
    `attacks`: peer id -> Attack for the Byzantine ones."""
    attacks = attacks or {}
    runs = [runtime.run_peer(setup, i, net, out / f"peer-{i}", hub=hub, secret=SECRET,
                             status=status(i), attack=attacks.get(i))
            for i in range(setup.n_peers)]
    if setup.cfg.algorithm == "fedavg":
        runs.append(runtime.run_server(setup, net, out / "server", hub=hub, secret=SECRET))
    async with asyncio.timeout(limit):
        return await asyncio.gather(*runs)


def saved_params(folder: Path, name: str = "model.npz") -> dict[str, np.ndarray]:
    with open(folder / name, "rb") as fh, np.load(fh, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


class Recording:
    """A transport that keeps a copy of every frame it sends (the runtime sees no difference)."""

    def __init__(self, inner, sent: list[bytes]) -> None:
        self.inner = inner
        self.sent = sent

    @property
    def stats(self):
        return self.inner.stats

    async def __aenter__(self) -> Recording:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.inner.__aexit__(*exc_info)

    async def send(self, dest: int, frame: bytes) -> None:
        self.sent.append(bytes(frame))
        await self.inner.send(dest, frame)

    def incoming(self):
        return self.inner.incoming()


@pytest.fixture
def transports(monkeypatch: pytest.MonkeyPatch) -> dict[int, Recording]:
    """node id -> its transport, recording what it sends, for the runs of one test."""
    opened: dict[int, Recording] = {}
    real = runtime.open_transport

    def recording_open(cfg, *, hub=None):
        opened[cfg.node] = Recording(real(cfg, hub=hub), [])
        return opened[cfg.node]

    monkeypatch.setattr(runtime, "open_transport", recording_open)
    return opened


# equivalence with the simulator -------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["dpsgd", "gradient-tracking", "fedavg"])
async def test_tcp_run_gives_the_simulators_weights(ds: Dataset, tmp_path: Path,
                                                    algorithm: str) -> None:
    # Prepare: the simulator's run, same seed, partition and topology
    setup = make_setup(ds, algorithm)
    with SerialPool(setup.pool_spec(), [setup.shard(i) for i in range(setup.n_peers)]) as pool:
        sim = Simulator(setup, pool)
        sim.run()
    # Execute: the same run with every node on its own TCP port
    results = await run_network(setup, tcp_net(), tmp_path)
    # Assert
    assert [len(r["rows"]) for r in results[:4]] == [3] * 4
    assert all(r["rows"][-1]["missing"] == 0 for r in results[:4])
    if algorithm != "fedavg":
        for i in range(setup.n_peers):
            assert max_diff(saved_params(tmp_path / f"peer-{i}"), sim.peers[i].params) < 1e-5
    else:
        server = saved_params(tmp_path / "server", "global.npz")
        assert max_diff(server, sim.server.params) < 1e-5
        assert [r["updates"] for r in results[4]["rows"]] == [4, 4, 4]
        for i in range(setup.n_peers):  # every client ends with the last global model
            assert max_diff(saved_params(tmp_path / f"peer-{i}"), server) < 1e-6


async def test_a_byzantine_network_peer_attacks_as_in_the_simulator(ds: Dataset,
                                                                    tmp_path: Path) -> None:
    # Prepare: the simulator with peer 1 sending scale:-10, honest peers merging by median
    sim_setup = make_setup(ds, "dpsgd", robust="median", byzantine="ids:1", attack="scale:-10")
    with SerialPool(sim_setup.pool_spec(),
                    [sim_setup.shard(i) for i in range(sim_setup.n_peers)]) as pool:
        sim = Simulator(sim_setup, pool)
        sim.run()
    # Execute: the network run, peer 1 started as `gossipser peer --byzantine scale:-10` is
    net_setup = make_setup(ds, "dpsgd", robust="median")
    results = await run_network(net_setup, tcp_net(), tmp_path,
                                attacks={1: parse_attack("scale:-10")})
    # Assert: every peer finished; the honest peers hold the simulator's weights
    assert [len(r["rows"]) for r in results] == [3] * 4
    for i in (0, 2, 3):
        assert max_diff(saved_params(tmp_path / f"peer-{i}"), sim.peers[i].params) < 1e-5


# real processes: the launcher end to end ----------------------------------------------------
def run_launcher(args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    """scripts/launch_local.py as a user runs it; SIGTERM (it then stops its children) on
    timeout."""
    proc = subprocess.Popen([sys.executable, str(LAUNCHER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=15)
        pytest.fail(f"launch_local did not finish in {timeout} s:\n{stdout}\n{stderr}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def check_summary(out: Path, *, algorithm: str, transport: str, rounds: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == algorithm
    assert (summary["peers"], summary["rounds"], summary["transport"]) == (4, rounds, transport)
    assert summary["topology"] == ("server" if algorithm == "fedavg" else "ring")
    nodes = [f"peer-{i}" for i in range(4)] + (["server"] if algorithm == "fedavg" else [])
    assert sorted(summary["bytes_sent"]) == sorted(nodes)
    assert summary["bytes_sent_total"] == sum(summary["bytes_sent"].values())
    assert summary["bytes_sent_max_peer"] == max(summary["bytes_sent"].values()) > 0
    assert summary["wall_s"] > 0
    f = summary["final"]
    for key in ("ua_mean", "ua_min", "ua_max", "wa_mean", "macro_f1_mean", "ua_avg_model"):
        assert 0.0 <= f[key] <= 1.0, key
    assert f["ua_min"] <= f["ua_mean"] <= f["ua_max"]
    assert f["consensus_distance"] >= 0.0
    for node in nodes:
        peer = json.loads((out / node / "summary.json").read_text())
        assert [r["round"] for r in peer["rows"]] == list(range(1, rounds + 1))
        assert peer["rejected"] == {}
    return summary


@pytest.mark.slow
def test_launch_local_tcp_runs_peer_processes_to_the_end(tmp_path: Path) -> None:
    # Execute: no config, so the launcher writes the synthetic corpus and a short run
    done = run_launcher(["--peers", "4", "--transport", "tcp", "--rounds", "3",
                         "--out", str(tmp_path)])
    # Assert
    assert done.returncode == 0, done.stderr
    summary = check_summary(tmp_path, algorithm="gradient-tracking", transport="tcp", rounds=3)
    assert summary["bytes_sent_server"] == 0
    assert "final: UA mean" in done.stdout
    for i in range(4):
        assert f"peer {i}: done" in (tmp_path / f"peer-{i}.log").read_text()
    assert not launch_local_children(tmp_path)


@pytest.mark.slow
@needs_mosquitto
def test_launch_local_mqtt_fedavg_runs_server_and_peers(tmp_path: Path, base_config: Path
                                                        ) -> None:
    done = run_launcher(["--peers", "4", "--transport", "mqtt", "--algorithm", "fedavg",
                         "--rounds", "3", "--config", str(base_config), "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    summary = check_summary(tmp_path, algorithm="fedavg", transport="mqtt", rounds=3)
    assert summary["bytes_sent_server"] == summary["bytes_sent_max_peer"]
    assert summary["final"]["consensus_distance"] == 0.0  # clients end on the global model
    assert not launch_local_children(tmp_path)
    port = int(re.search(r"mosquitto on 127\.0\.0\.1:(\d+)", done.stdout).group(1))
    with pytest.raises(OSError):  # the launcher's broker is gone too
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@needs_mosquitto
def test_launch_local_secure_mqtt_signs_encrypts_and_finishes(tmp_path: Path,
                                                              base_config: Path) -> None:
    done = run_launcher(["--peers", "4", "--transport", "mqtt", "--secure", "--rounds", "3",
                         "--config", str(base_config), "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert "signed frames and TLS" in done.stdout
    summary = check_summary(tmp_path, algorithm="gradient-tracking", transport="mqtt",
                            rounds=3)
    assert summary["final"]["ua_mean"] > 0
    for i in range(4):
        log = (tmp_path / f"peer-{i}.log").read_text()
        assert f"peer {i}: secure mode: frames signed with peer-{i}'s key" in log
        assert json.loads((tmp_path / f"peer-{i}" / "summary.json").read_text())[
            "rejected"] == {}
    assert (tmp_path / "keys" / "ca.pem").exists()
    assert not launch_local_children(tmp_path)


def launch_local_children(out: Path) -> list[str]:
    """Processes still running that were started for `out` (there should be none)."""
    found = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=10)
    return [line for line in found.stdout.splitlines() if str(out) in line]


# faults -----------------------------------------------------------------------------------
def checkpoint_header(folder: Path) -> dict | None:
    try:
        with (open(folder / "checkpoint.npz", "rb") as fh,
              np.load(fh, allow_pickle=False) as z):
            return json.loads(bytes(z["_header"]).decode())
    except (OSError, ValueError, KeyError, EOFError):
        return None


def wait_for(done: Callable[[], bool], timeout: float, what: str) -> None:
    give_up = time.monotonic() + timeout
    while not done():
        if time.monotonic() > give_up:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_peer_process_resumes_from_its_checkpoint(tmp_path: Path, base_config: Path
                                                         ) -> None:
    # Prepare: four `gossipser peer` processes over TCP; a dead neighbour costs the others
    # send_timeout per round, so they are still running when it comes back
    rounds = 12
    config = launch_local.write_run_config(
        tmp_path, peers=4, transport="tcp", algorithm="dpsgd", rounds=rounds,
        config=str(base_config),
        network={"send_timeout": 3.0, "wait_timeout": 6.0, "start_timeout": 40.0})
    procs = launch_local.plan_processes(config, tmp_path, peers=4, fedavg=False)
    victim = procs[1]
    env = launch_local.child_env("kill-test-secret")
    restarted = launch_local.Proc("peer-1 again", victim.cmd, victim.out,
                                  tmp_path / "peer-1.restart.log")
    try:
        for p in procs:
            launch_local.start(p, env)
        # Execute: SIGKILL peer 1 once it has checkpointed a round, then start it again
        wait_for((victim.out / "checkpoint.npz").exists, 60, "peer 1's first checkpoint")
        victim.popen.send_signal(signal.SIGKILL)
        assert victim.popen.wait(10) == -signal.SIGKILL
        saved = checkpoint_header(victim.out)
        assert saved is not None and saved["round"] < rounds, "killed too late to test resume"
        launch_local.start(restarted, env)
        others = [p for p in procs if p is not victim] + [restarted]
        wait_for(lambda: all(p.popen.poll() is not None for p in others), 90, "the run to end")
    finally:
        launch_local.stop_all([*procs, restarted])
    # Assert: everyone finished; peer 1 went on from its checkpoint, not from round 1
    for p in others:
        assert p.popen.returncode == 0, launch_local.log_tail(p.log)
    k = saved["round"]
    summary = json.loads((victim.out / "summary.json").read_text())
    rows = summary["rows"]
    assert rows[:k] == saved["rows"]
    numbers = [r["round"] for r in rows]
    assert numbers == sorted(set(numbers)) and numbers[-1] == rounds
    again = [int(n) for n in re.findall(r"peer 1: round (\d+)", restarted.log.read_text())]
    assert again and min(again) > k
    assert again == numbers[k:]
    for i in (0, 2, 3):
        other = json.loads((tmp_path / f"peer-{i}" / "summary.json").read_text())
        assert [r["round"] for r in other["rows"]] == list(range(1, rounds + 1))


@needs_mosquitto
async def test_peers_reconnect_and_finish_after_a_broker_restart(
        ds: Dataset, tmp_path: Path, transports: dict) -> None:
    # Prepare
    setup = make_setup(ds, "dpsgd", rounds=4)
    stopped = asyncio.Event()

    async def restart(broker: Mosquitto) -> None:
        await stopped.wait()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(broker.start)

    with Mosquitto() as broker:
        def status(pid: int) -> runtime.Status | None:
            def stop_after_round_one(row: dict) -> None:
                if row.get("round") == 1:  # in the peer's loop: nobody moves on meanwhile
                    broker.stop()
                    stopped.set()
            return stop_after_round_one if pid == 0 else None

        net = NetworkConfig(transport="mqtt", broker_port=broker.port, wait_timeout=5.0,
                            send_timeout=15.0, start_timeout=20.0)
        # Execute: stop the broker when peer 0 ends round 1, start it again a second later
        bouncer = asyncio.create_task(restart(broker))
        try:
            results = await run_network(setup, net, tmp_path, status=status, limit=90)
        finally:
            bouncer.cancel()
            await asyncio.gather(bouncer, return_exceptions=True)
    # Assert: the broker went down mid-run, every peer reconnected and finished
    assert stopped.is_set() and bouncer.done() and not bouncer.cancelled()
    assert [[r["round"] for r in res["rows"]] for res in results] == [[1, 2, 3, 4]] * 4
    assert all(transports[i].stats.reconnects >= 1 for i in range(4))


def sign(body: bytes) -> bytes:
    """A frame around a hand-made msgpack body, with a valid tag."""
    return MAGIC + body + hmac.digest(SECRET, MAGIC + body, "sha256")


def hostile_frames(setup: RunSetup) -> list[tuple[str, bytes]]:
    """Frames peer 0 must refuse, each with the reason it should be counted under."""
    now = time.time_ns() // 1000

    def model(**fields) -> bytes:  # signed with the run's secret, as a key holder can
        fields = {"kind": "model", "run": setup.run_id, "sender": 1, "round": 1,
                  "params": setup.init, **fields}
        return encode(Message(**fields), secret=SECRET)

    good = Message(kind="model", run=setup.run_id, sender=1, round=1, samples=9,
                   params=setup.init)
    frame = encode(good, secret=SECRET)
    name = next(iter(setup.init))
    wrong = dict(setup.init, **{name: np.zeros(setup.init[name].size + 1, np.float32)})
    body = msgpack.unpackb(frame[len(MAGIC):-32], raw=False)
    for entry in body["params"]:  # NaN cannot be encoded: make it by hand
        if entry[0] == name:
            entry[3] = np.full(setup.init[name].shape, np.nan, np.float32).tobytes()
    return [
        ("magic", b"\0" + os.urandom(199)),  # garbage
        ("HMAC", frame[: len(frame) // 2]),  # truncated
        ("HMAC", frame[:-1] + bytes([frame[-1] ^ 1])),  # one bit of the tag flipped
        ("shape", encode(Message(kind="model", run=setup.run_id, sender=1, round=1,
                                 params=wrong), secret=SECRET)),
        ("non-finite", sign(msgpack.packb(body, use_bin_type=True))),
        ("run id", encode(Message(kind="model", run="another-run", sender=1, round=1,
                                  params=setup.init), secret=SECRET)),
        ("sender is not a neighbour", encode(Message(
            kind="model", run=setup.run_id, sender=2, round=1, params=setup.init),
            secret=SECRET)),
        ("no session", model(meta={"to": 0, "seq": now})),
        ("no sequence number", model(meta={"to": 0, "session": 7})),
        ("wrong destination", model(meta={"to": 2, "seq": now + 1})),
        ("round beyond the run", model(round=10**9, meta={"to": 0, "seq": now + 2})),
        ("round beyond the run", encode(Message(kind="hello", run=setup.run_id, sender=3,
                                                round=10**9, meta={"to": 0, "seq": now}),
                                        secret=SECRET)),
        ("stale", model(meta={"to": 0, "seq": now - 3600 * 10**6, "session": 7})),
        # sent to an earlier launch of peer 0 (another session of the receiver)
        ("not for this launch", model(meta={"to": 0, "seq": now + 3, "session": 7,
                                            "for": 8})),
    ]


async def send_raw(port: int, data: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):  # peer 0 hangs up on an oversized frame
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def run_attacked(setup: RunSetup, net: NetworkConfig, out: Path,
                       attack: Callable[[], Awaitable[None]]) -> list[dict]:
    """The network run, with `attack()` started once peer 0 has finished round 1; the attack
    must run to its end, without an error, while the run goes on."""
    round_one = asyncio.Event()

    def status(pid: int) -> runtime.Status | None:
        return (lambda row: round_one.set() if row.get("round") == 1 else None) if pid == 0 \
            else None

    async def after_round_one() -> None:
        await round_one.wait()
        await attack()

    attacker = asyncio.create_task(after_round_one())
    try:
        results = await run_network(setup, net, out, status=status)
    finally:
        attacker.cancel()
        await asyncio.gather(attacker, return_exceptions=True)
    assert attacker.done() and not attacker.cancelled() and attacker.exception() is None
    return results


async def test_hostile_frames_are_rejected_and_counted_while_the_run_goes_on(
        ds: Dataset, tmp_path: Path, transports: dict) -> None:
    # Prepare: a ring 0-1-2-3 over TCP; frames go to peer 0 (neighbours 1 and 3)
    setup = make_setup(ds, "dpsgd", rounds=6)
    assert sorted(setup.graph.neighbors(0)) == [1, 3]
    net = tcp_net()
    port = net.base_port
    frames = hostile_frames(setup)

    async def attack() -> None:
        # what peer 1 really sent peer 0 in round 1, replayed twice
        replays = [f for f in transports[1].sent
                   if decode(f, secret=SECRET).meta.get("to") == 0][:1] * 2
        assert replays
        frames.extend(("replayed", f) for f in replays)
        # an earlier launch of peer 1 (another session) that knew peer 0's session
        to_0 = [decode(f, secret=SECRET) for f in transports[1].sent]
        this_launch = next(m.meta["for"] for m in to_0
                           if m.meta.get("to") == 0 and m.kind != "hello")
        seq = time.time_ns() // 1000
        frames.append(("foreign session", encode(Message(
            kind="model", run=setup.run_id, sender=1, round=1, params=setup.init,
            meta={"to": 0, "seq": seq, "session": 7, "for": this_launch}), secret=SECRET)))
        stream = b"".join(len(f).to_bytes(4, "big") + f for _, f in frames)
        await send_raw(port, stream)
        await send_raw(port, (2**32 - 1).to_bytes(4, "big") + b"x" * 64)  # oversized
        await send_raw(port, (5000).to_bytes(4, "big") + b"cut short")  # truncated stream

    # Execute
    results = await run_attacked(setup, net, tmp_path, attack)
    # Assert: every frame refused and counted, and the run completed all the same
    expected = Counter(reason for reason, _ in frames) + Counter(oversized=1, truncated=1)
    assert results[0]["rejected"] == expected
    assert results[0]["rows"][-1]["rejected"] == len(frames)
    stats = transports[0].stats
    assert (stats.oversized_dropped, stats.truncated_dropped) == (1, 1)
    assert all(r["rejected"] == {} for r in results[1:])
    assert [len(res["rows"]) for res in results] == [6] * 4
    assert all(r["rows"][-1]["missing"] == 0 for r in results)


# per-peer keys and TLS ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gossipser.net.keys import make_keys

    folder = tmp_path_factory.mktemp("keys")
    make_keys(folder, 4)
    return folder


async def test_secure_tcp_run_gives_the_simulators_weights(ds: Dataset, tmp_path: Path,
                                                           run_keys: Path) -> None:
    setup = make_setup(ds, "dpsgd")
    with SerialPool(setup.pool_spec(), [setup.shard(i) for i in range(setup.n_peers)]) as pool:
        sim = Simulator(setup, pool)
        sim.run()
    notes: list[str] = []
    net = dataclasses.replace(tcp_net(), keys=str(run_keys))
    results = await run_network(setup, net, tmp_path,
                                status=lambda pid: lambda row: notes.append(row.get("note")))
    assert any(n and n.startswith("secure mode: frames signed with peer-") for n in notes)
    assert all(r["rejected"] == {} for r in results)
    for i in range(setup.n_peers):
        assert max_diff(saved_params(tmp_path / f"peer-{i}"), sim.peers[i].params) < 1e-5


async def test_a_key_holder_cannot_speak_for_another_peer_and_outsiders_cannot_connect(
        ds: Dataset, tmp_path: Path, run_keys: Path, tmp_path_factory) -> None:
    from gossipser.net.keys import Keyring, make_keys

    setup = make_setup(ds, "dpsgd", rounds=6)
    net = dataclasses.replace(tcp_net(), keys=str(run_keys))
    port = net.base_port
    peer2 = Keyring.load(run_keys, 2)  # a valid member of the run, attacking peer 0
    stranger_keys = tmp_path_factory.mktemp("other_ca")
    make_keys(stranger_keys, 4)
    stranger = Keyring.load(stranger_keys, 1)  # "peer-1", but of another CA
    now = time.time_ns() // 1000

    def msg(sender: int, seq: int) -> Message:
        return Message(kind="model", run=setup.run_id, sender=sender, round=1,
                       params=setup.init, meta={"to": 0, "seq": seq})

    forged = encode(msg(2, now + 1), signer=peer2)  # signed by peer 2, header says peer 1
    forged = forged[:4] + (1).to_bytes(8, "big", signed=True) + forged[12:]
    # signed by peer 2 as peer 2, but the envelope inside names peer 1
    data = MAGIC_SIGNED + (2).to_bytes(8, "big", signed=True) + encode(
        msg(1, now + 2), secret=SECRET)[len(MAGIC):-32]
    body_lies = data + peer2.sign(data)
    frames = [("signature", forged), ("sender does not match its key", body_lies),
              ("unsigned", encode(msg(1, now + 3), secret=SECRET))]
    outsiders: dict[str, bool] = {}

    async def attack() -> None:
        stream = b"".join(len(f).to_bytes(4, "big") + f for _, f in frames)
        _, writer = await asyncio.open_connection("127.0.0.1", port,
                                                  ssl=peer2.client_context())
        writer.write(stream)
        await writer.drain()
        writer.close()
        for name, ctx in (("plain TCP", None), ("another CA", stranger.client_context())):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
                writer.write(len(frames[0][1]).to_bytes(4, "big") + frames[0][1])
                await writer.drain()
                outsiders[name] = await asyncio.wait_for(reader.read(), 5) != b""
                writer.close()
            except (OSError, ConnectionError, TimeoutError):
                outsiders[name] = False

    results = await run_attacked(setup, net, tmp_path, attack)
    assert results[0]["rejected"] == Counter(reason for reason, _ in frames)
    assert outsiders == {"plain TCP": False, "another CA": False}
    assert [len(r["rows"]) for r in results] == [6] * 4


# privacy ----------------------------------------------------------------------------------
WINDOW = 64


def windows(data: bytes) -> set[bytes]:
    """Every WINDOW-byte substring of `data`, at every offset."""
    return {data[i:i + WINDOW] for i in range(len(data) - WINDOW + 1)}


def leaks(sent: set[bytes], private: np.ndarray) -> int:
    """Aligned WINDOW-byte pieces of `private` found in what was sent (a leak of WINDOW +
    itemsize bytes or more always contains one). Near-constant pieces (padding) are no
    evidence and are skipped."""
    raw = np.ascontiguousarray(private).tobytes()
    step = private.dtype.itemsize
    hits = (raw[j:j + WINDOW] for j in range(0, len(raw) - WINDOW + 1, step))
    return sum(1 for w in hits if w in sent and len(set(w)) > 8)


async def test_a_peer_sends_no_audio_and_no_features(ds: Dataset, tmp_path: Path,
                                                     transports: dict) -> None:
    # Prepare: peer 0's private data as the bytes it could leak
    setup = make_setup(ds, "dpsgd")
    mine = setup.parts[0]
    private: list[np.ndarray] = [setup.shard(0).x]
    for i in mine:
        path = Path(ds.paths[i])
        private += [sf.read(path, dtype="int16")[0], sf.read(path, dtype="float32")[0],
                    prepare_signal(path, ds.cfg).astype(np.float32), ds.frames[i]]
    # Execute: a whole run, recording every frame peer 0 sends
    await run_network(setup, tcp_net(), tmp_path)
    sent_frames = transports[0].sent
    sent = windows(b"".join(sent_frames))
    # Assert: the recording works (it holds the weights peer 0 sent) but holds none of its data
    assert len(sent_frames) >= 3 * 2
    weights = decode(sent_frames[-1], secret=SECRET).params
    assert leaks(sent, max(weights.values(), key=np.size)) > 0  # control: sent arrays are found
    planted = windows(b"".join(sent_frames) + ds.frames[mine[0]].tobytes())
    assert leaks(planted, ds.frames[mine[0]]) > 0  # control: planted features are found
    found = {i: leaks(sent, a) for i, a in enumerate(private)}
    assert sum(a.nbytes for a in private) > 1_000_000
    assert not any(found.values()), {i: n for i, n in found.items() if n}


@pytest.mark.parametrize("algorithm", ["dpsgd", "gradient-tracking"])
async def test_private_layers_never_leave_a_peer(ds: Dataset, tmp_path: Path, transports: dict,
                                                 algorithm: str) -> None:
    # Prepare: the first convolution stays home
    setup = make_setup(ds, algorithm, private_layers=("first",))
    private = setup.private
    assert private == {"features.0.0.weight", "features.0.0.bias"}
    # Execute: a whole networked run, recording every frame every peer sends
    await run_network(setup, tcp_net(), tmp_path)
    # Assert: no frame names a private parameter; the shared ones all travel
    frames = [f for pid in range(setup.n_peers) for f in transports[pid].sent]
    models = [m for m in (decode(f, secret=SECRET) for f in frames) if m.kind == "model"]
    assert len(models) >= setup.n_peers * 3 * 2
    shared = set(setup.message_params())
    assert all(set(m.params) == shared for m in models)
    assert not any(k in private or k.split("/")[-1] in private for k in shared)
    # Assert: each peer's private layer is its own (trained, never averaged) and its bytes
    # are nowhere in what the peer sent, while a shared layer's are
    finals = [dict(np.load(tmp_path / f"peer-{i}" / "model.npz")) for i in range(setup.n_peers)]
    first = [f["features.0.0.weight"] for f in finals]
    assert not np.allclose(first[0], first[1])
    assert not np.allclose(first[0], setup.init["features.0.0.weight"])
    sent0 = windows(b"".join(transports[0].sent))
    assert leaks(sent0, first[0]) == 0
    assert leaks(sent0, models[0].params["head.1.weight"]) > 0  # control


async def test_a_peer_records_what_its_neighbours_sent_it(ds: Dataset, tmp_path: Path) -> None:
    # Prepare: a ring of 4; [network] record_messages = 2
    setup = make_setup(ds, "dpsgd")

    # Execute
    await run_network(setup, tcp_net(record_messages=2), tmp_path)

    # Assert: peer 0 holds its two neighbours' models of rounds 1 and 2, nothing else
    log = MessageLog.load(tmp_path / "peer-0" / "messages.npz")
    assert set(log.sent) == {(r, j) for r in (1, 2) for j in setup.graph.neighbors(0)}
    assert all(dests == [0] for dests in log.receivers.values())
    assert log.names == set(setup.shared_model_names())
    with pytest.raises(ConfigError, match="record_messages"):
        NetworkConfig(record_messages=-1)


@pytest.mark.parametrize("init", ["independent", "perturbed"])
async def test_independent_init_starts_each_networked_peer_from_a_secret_model(
        ds: Dataset, tmp_path: Path, init: str) -> None:
    """init = independent or perturbed: what a peer first sends (no training: its initial
    model) is neither the shared model nor the one the run seed gives it, so a neighbour
    cannot subtract the start from the first update."""
    setup = make_setup(ds, "dpsgd", rounds=1, local_epochs=0, init=init)

    await run_network(setup, tcp_net(record_messages=1), tmp_path)

    log = MessageLog.load(tmp_path / "peer-0" / "messages.npz")
    firsts = {j: log.sent[(1, j)] for j in setup.graph.neighbors(0)}
    assert len(firsts) == 2
    for j, sent in firsts.items():
        derivable = setup.initial_params(j)
        assert sent.keys() == derivable.keys()
        assert all(sent[k].shape == derivable[k].shape for k in sent)
        assert max_diff(sent, derivable) > 1e-3 and max_diff(sent, setup.init) > 1e-3
    a, b = firsts.values()
    assert max_diff(a, b) > 1e-3


# no round barrier ---------------------------------------------------------------------------
@pytest.mark.parametrize("barrier", [True, False])
async def test_push_sum_without_a_barrier_never_waits(ds: Dataset, tmp_path: Path, barrier):
    """[network] barrier = false: push-sum takes each message in as it arrives; a peer whose
    neighbour never shows up does not wait for it round after round."""
    setup = make_setup(ds, "push-sum", rounds=2)
    net = dataclasses.replace(tcp_net(wait_timeout=1.5, start_timeout=2.0), barrier=barrier)
    runs = [runtime.run_peer(setup, i, net, tmp_path / f"peer-{i}", secret=SECRET)
            for i in range(3)]  # peer 3, neighbour of 0 and 2 on the ring, never starts
    async with asyncio.timeout(60):
        summaries = await asyncio.gather(*runs)
    missing = {s["peer"]: [row["missing"] for row in s["rows"]] for s in summaries}
    if barrier:
        assert missing[0] == [1, 1] and missing[2] == [1, 1]  # waited for peer 3, in vain
    else:
        assert all(m == [0, 0] for m in missing.values())
    assert all(s["final"]["ua"] > 0 for s in summaries)
