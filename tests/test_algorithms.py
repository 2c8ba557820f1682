"""The strategy protocol: algorithms are registered by name, a new one is one class, and a
Peer delegates to it without knowing which it holds."""

from __future__ import annotations

import pkgutil

import numpy as np
import pytest

import gossipser.gossip.algorithms as algorithms
from gossipser.errors import ConfigError
from gossipser.gossip.algorithms import ALGORITHMS, Algorithm, algorithm_class, register
from gossipser.gossip.algorithms.base import REGISTRY
from gossipser.gossip.mixing import combine
from gossipser.gossip.peer import Peer

RUN = "algo-test"


def peer(pid: int, neighbours, algorithm: str, value: float, **kw) -> Peer:
    return Peer(pid=pid, neighbours=neighbours, algorithm=algorithm,
                params={"w": np.array([value], dtype=np.float32)}, samples=10, run=RUN,
                rng=np.random.default_rng(pid), **kw)


def test_every_module_registers_one_algorithm_and_every_name_has_a_module():
    modules = {m.name for m in pkgutil.iter_modules(algorithms.__path__)} - {"base"}
    assert {n.replace("-", "_") for n in ALGORITHMS} == modules
    for name in ALGORITHMS:
        cls = algorithm_class(name)
        assert issubclass(cls, Algorithm) and cls.name == name
        assert cls.synchronous == (cls.buffered_kind is not None), name


def test_the_families_keep_their_names():
    assert set(ALGORITHMS) == {"dpsgd", "pairwise", "gossip-learning", "push-sum", "local",
                               "fedavg", "gradient-tracking"}


def test_unknown_name_and_double_registration_are_refused():
    with pytest.raises(ConfigError, match="unknown algorithm 'sgp'; choose one of dpsgd"):
        algorithm_class("sgp")
    with pytest.raises(ValueError, match="registered twice"):
        register(type("Again", (Algorithm,), {"name": "dpsgd"}))


def test_each_peer_gets_its_own_strategy_state():
    a, b = peer(0, [1], "push-sum", 1.0), peer(1, [0], "push-sum", 3.0)
    assert a.strategy is not b.strategy
    a.strategy.weight = 0.25
    assert b.strategy.weight == 1.0


@pytest.fixture
def max_merge(monkeypatch: pytest.MonkeyPatch):
    """A made-up synchronous algorithm, registered only for one test: keep the element-wise
    maximum of what arrived (a max-consensus)."""
    monkeypatch.setattr("gossipser.gossip.algorithms.base.REGISTRY", dict(REGISTRY))
    from gossipser.gossip.algorithms import base

    @register
    class MaxConsensus(Algorithm):
        name = "max-consensus"
        synchronous = True
        buffered_kind = "model"

        def outgoing(self, peer):
            return [(j, peer.message("model")) for j in peer.neighbours]

        def end_round(self, peer, inbox):
            peer.params = {k: np.maximum.reduce([peer.params[k]] +
                                                [m.params[k] for m in inbox.values()])
                           for k in peer.params}

    assert "max-consensus" in base.REGISTRY
    return MaxConsensus


def test_a_new_algorithm_is_one_class_and_the_peer_runs_it(max_merge):
    # path 0 - 1 - 2: after two synchronous rounds everyone holds the maximum
    peers = [peer(0, [1], "max-consensus", 1.0), peer(1, [0, 2], "max-consensus", 2.0),
             peer(2, [1], "max-consensus", 7.0)]
    for r in (1, 2):
        for p in peers:
            p.begin_round(r)
        assert all(p.missing() == set(p.neighbours) for p in peers)
        for p in peers:
            for dest, msg in p.outgoing():
                assert peers[dest].receive(msg) == []
        assert all(not p.missing() for p in peers)
        for p in peers:
            p.end_round()
    assert [float(p.params["w"][0]) for p in peers] == [7.0, 7.0, 7.0]


def test_checkpoint_state_round_trips_age_and_the_strategy_numbers():
    a = peer(0, [1], "push-sum", 1.0)
    a.trained(a.params, steps=5)
    a.strategy.weight = 0.375
    state = a.state()
    assert state == {"age": 5.0, "weight": 0.375}
    b = peer(0, [1], "push-sum", 1.0)
    b.restore(state)
    assert (b.age, b.strategy.weight) == (5.0, 0.375)
    c = peer(0, [1], "dpsgd", 1.0, mix_row={0: 0.5, 1: 0.5})
    c.restore({"age": 2.0, "weight": 0.5})  # an older checkpoint's extra key is harmless
    assert c.state() == {"age": 2.0}


def test_dpsgd_needs_its_mixing_row_and_fedavg_trains_only_when_asked():
    with pytest.raises(ConfigError, match="dpsgd needs its row of the mixing matrix"):
        peer(0, [1], "dpsgd", 1.0)
    client = peer(0, [], "fedavg", 1.0)
    assert not client.wants_training()
    assert all(peer(0, [1], n, 1.0, mix_row={0: 0.5, 1: 0.5}).wants_training()
               for n in ALGORITHMS if n != "fedavg")


def test_combine_on_literal_arrays():
    out = combine([{"w": np.array([0.0, 4.0])}, {"w": np.array([2.0, 0.0])}], [3.0, 1.0])
    np.testing.assert_allclose(out["w"], [0.5, 3.0])
