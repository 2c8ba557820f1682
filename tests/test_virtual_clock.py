"""The simulator on a virtual clock: equal to the round-based run where it should be,
deterministic by seed, asynchronous where the algorithm allows it, and churn in time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from gossipser.cli.main import main
from gossipser.data.dataset import Dataset, load_dataset
from gossipser.errors import ConfigError
from gossipser.gossip.devices import device_speeds, parse_device_speed
from gossipser.gossip.plan import RunSetup, setup_run
from gossipser.gossip.settings import GossipConfig
from gossipser.learn.pool import SerialPool
from gossipser.learn.settings import ModelConfig, TrainConfig
from gossipser.sim.simulator import Simulator, flatten
from gossipser.sim.virtual import VirtualSimulator, make_simulator

MODEL = ModelConfig(kind="dnn", width=8)
TRAIN = TrainConfig(epochs=1)
TEST_SPEAKERS = ("spk06",)
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as in the pool's workers


@pytest.fixture(scope="module")
def ds(sim_corpus: Path, sim_cache: Path) -> Dataset:
    return load_dataset(sim_corpus, cache_dir=sim_cache)


def setup_for(ds: Dataset, **gossip) -> RunSetup:
    gossip = {"peers": 8, "partition": "iid", "rounds": 4, "local_epochs": 1,
              "patience": 0, **gossip}
    return setup_run(ds, cfg=GossipConfig(**gossip), model=MODEL, train=TRAIN,
                     test_speakers=TEST_SPEAKERS, seed=0)


def run(ds: Dataset, **gossip) -> Simulator:
    setup = setup_for(ds, **gossip)
    with SerialPool(setup.pool_spec(), [setup.shard(i) for i in range(setup.n_peers)]) as pool:
        sim = make_simulator(setup, pool)
        sim.summary_ = sim.run()
    return sim


def rows(sim: Simulator) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("wall_s", "virtual_s")} for r in sim.rows]


@pytest.mark.parametrize("algorithm", ["dpsgd", "gradient-tracking"])
def test_equal_devices_and_no_latency_give_the_round_based_run(ds, algorithm):
    rounds = run(ds, algorithm=algorithm)
    virtual = run(ds, algorithm=algorithm, clock="virtual", latency=0.0, bandwidth=1e18)
    assert isinstance(virtual, VirtualSimulator) and not isinstance(rounds, VirtualSimulator)
    for a, b in zip(rounds.final_states(), virtual.final_states(), strict=True):
        np.testing.assert_array_equal(flatten(a), flatten(b))
    assert _same(rows(virtual), rows(rounds))
    # every round ends when every peer has done it: 4 rounds of one 0.05 s step each
    assert [r["virtual_s"] for r in virtual.rows] == pytest.approx(
        [0.05 * r * virtual.setup.local_steps(0, virtual.steps_per_epoch[0])
         for r in range(1, 5)])


def _same(a: list[dict], b: list[dict]) -> bool:
    def eq(x, y) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y)
        return x == y
    return all(eq(r[k], s[k]) for r, s in zip(a, b, strict=True) for k in r)


def test_virtual_clock_is_deterministic_by_seed(ds):
    kw = dict(algorithm="gossip-learning", clock="virtual", device_speed="lognormal:0:0.5",
              drop=0.1, churn=0.2, churn_period=0.2)
    a, b = run(ds, **kw), run(ds, **kw)
    assert _same(rows(a), rows(b))
    assert [r["virtual_s"] for r in a.rows] == [r["virtual_s"] for r in b.rows]
    assert a.deliveries == b.deliveries and a.deliveries
    for x, y in zip(a.final_states(), b.final_states(), strict=True):
        np.testing.assert_array_equal(flatten(x), flatten(y))


def test_a_message_for_a_peer_that_went_offline_is_never_delivered(ds):
    sim = run(ds, algorithm="gossip-learning", clock="virtual", churn=0.4, churn_period=0.1,
              device_speed="lognormal:0:0.5", rounds=6)
    assert sim.toggles, "churn must take peers away during the run"

    def online(peer: int, t: float) -> bool:
        state = peer not in sim.initially_offline
        for when, p, up in sim.toggles:
            if p == peer and when <= t:
                state = up
        return state

    assert sim.deliveries
    assert all(online(dest, t) for t, dest, _ in sim.deliveries)
    assert sim.messages_dropped > 0  # some arrivals met an absent peer


def test_asynchronous_peers_do_not_wait_for_slow_devices(ds):
    kw = dict(clock="virtual", device_speed="equal,slow:0.25:10", rounds=6)
    sync = run(ds, algorithm="dpsgd", **kw)
    gossip = run(ds, algorithm="gossip-learning", **kw)
    slow = set(np.flatnonzero(gossip.speed < 1).tolist())
    assert len(slow) == 2
    # no barrier: a fast device does several local rounds for each of a slow one's
    fast_rounds = [gossip.local_round[i] for i in range(8) if i not in slow]
    slow_rounds = [gossip.local_round[i] for i in slow]
    assert min(fast_rounds) > 3 * max(slow_rounds)
    # D-PSGD: the slow devices hold everyone back (rounds differ by at most the graph's reach)
    assert max(sync.local_round) - min(sync.local_round) <= 2
    assert gossip.rows[-1]["virtual_s"] < sync.rows[-1]["virtual_s"] / 3


def test_push_sum_without_a_barrier_conserves_mass(ds):
    sim = run(ds, algorithm="push-sum", clock="virtual", device_speed="lognormal:0:0.5")
    assert not any(p.barrier for p in sim.peers)
    in_flight = sum(data[2].age for _, _, kind, data in sim.events if kind == "arrive")
    in_flight += sum(m.age for queued in sim.arrived.values() for m in queued)  # not yet merged
    held = sum(p.strategy.weight for p in sim.peers)
    assert held + in_flight == pytest.approx(8.0)
    assert sim.deliveries


def test_edge_attributes_set_the_link_time(ds, tmp_path):
    import networkx as nx

    from gossipser.gossip.topology import save_topology

    g = nx.cycle_graph(8)
    nx.set_edge_attributes(g, 0.01, "latency")
    g.edges[0, 1]["latency"] = 5.0
    path = save_topology(g, tmp_path / "ring.json")
    sim = run(ds, algorithm="dpsgd", clock="virtual", topology=str(path), rounds=2,
              bandwidth=1e18)
    assert sim._link(0, 1) == (5.0, 1e18) and sim._link(3, 4) == (0.01, 1e18)
    # the slow link holds its two ends back; the barrier lets a peer run ahead of them by at
    # most its distance on the ring
    assert sim.rows[-1]["virtual_s"] > 5.0
    assert sim.local_round[4] > sim.local_round[0] and sim.local_round[0] == sim.local_round[1]
    assert all(abs(sim.local_round[i] - sim.local_round[(i + 1) % 8]) <= 1 for i in range(8))


def test_device_speed_specs():
    assert parse_device_speed("equal") == (None, (0.0, 1.0))
    assert parse_device_speed("lognormal:0:0.5,slow:0.1:10") == ((0.0, 0.5), (0.1, 10.0))
    speeds = device_speeds("lognormal:0:0.5,slow:0.1:10", 1000, np.random.default_rng(0))
    assert np.median(speeds) == pytest.approx(1.0, rel=0.1)
    plain = device_speeds("lognormal:0:0.5", 1000, np.random.default_rng(0))
    np.testing.assert_allclose(np.sort(plain / speeds)[-100:], 10.0)  # a tenth 10x slower
    assert (plain == speeds).sum() == 900
    for bad in ("fast", "lognormal:0", "lognormal:0:-1", "equal,slow:2:10", "equal,slow:0.1:0.5"):
        with pytest.raises(ConfigError, match="device speed"):
            parse_device_speed(bad)
    with pytest.raises(ConfigError, match="clock"):
        GossipConfig(clock="wall")
    with pytest.raises(ConfigError, match="fedavg"):
        GossipConfig(clock="virtual", algorithm="fedavg")


def test_cli_virtual_clock(sim_corpus, sim_cache, tmp_path, capsys):
    out = tmp_path / "v"
    assert main(["simulate", "--data", str(sim_corpus), "--cache-dir", str(sim_cache),
                 "--out", str(out), "--rounds", "3", "--test-speakers", "spk06",
                 "--model", "dnn", "--width", "8", "--workers", "1", "--display", "none",
                 "--algorithm", "gossip-learning", "--clock", "virtual",
                 "--device-speed", "lognormal:0:0.5,slow:0.2:10"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clock"]["kind"] == "virtual" and summary["virtual_s"] > 0
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "virtual_s" in header
    assert main(["simulate", "--data", str(sim_corpus), "--out", str(tmp_path / "bad"),
                 "--clock", "virtual", "--device-speed", "lognormal:x"]) != 0
    assert "device speed" in capsys.readouterr().err
