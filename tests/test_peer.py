"""I/O-free peer logic on tiny literal models: no torch, no simulator.

A small delivery loop here plays the network: it asks each peer what it sends, hands the
messages over (and the replies they cause), then closes the round.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipser.errors import ConfigError
from gossipser.gossip.algorithms import ALGORITHMS
from gossipser.gossip.graphs import ring_graph, star_graph, torus_graph
from gossipser.gossip.message import SERVER_ID, Message
from gossipser.gossip.mixing import combine, metropolis_weights
from gossipser.gossip.peer import Peer
from gossipser.gossip.server import FedAvgServer

RUN = "test-run"
F32 = dict(rtol=1e-6, atol=1e-6)

# --- helpers: build peers, play the network


def make_peers(
    graph: nx.Graph, algorithm: str, values: np.ndarray, *, samples: Sequence[int] | None = None,
    ages: Sequence[float] | None = None, seed: int = 0,
) -> list[Peer]:
    """One peer per node; peer i holds {'w': values[i]} (float32) and its Metropolis row."""
    w = metropolis_weights(graph)
    peers = []
    for i in sorted(graph.nodes):
        row = {int(j): float(w[i, j]) for j in np.flatnonzero(w[i])}
        p = Peer(pid=i, neighbours=list(graph.neighbors(i)), algorithm=algorithm,
                 params={"w": np.asarray(values[i], dtype=np.float32)},
                 samples=samples[i] if samples else 10, run=RUN,
                 rng=np.random.default_rng([seed, i]), mix_row=row)
        if ages is not None:
            p.age = float(ages[i])
        peers.append(p)
    return peers


Lost = Callable[[int, int, Message], bool]


def deliver(peers: Sequence[Peer], sender: int, outbox, lost: Lost | None = None) -> int:
    """Hand `outbox` over (and every reply it causes); returns the messages delivered."""
    queue = deque((sender, dest, msg) for dest, msg in outbox)
    delivered = 0
    while queue:
        src, dest, msg = queue.popleft()
        if lost is not None and lost(src, dest, msg):
            continue
        delivered += 1
        queue.extend((dest, d, m) for d, m in peers[dest].receive(msg))
    return delivered


def play_round(peers: Sequence[Peer], r: int, lost: Lost | None = None) -> None:
    """begin_round -> outgoing (all peers, in id order) -> deliver -> end_round."""
    for p in peers:
        p.begin_round(r)
    for p in peers:
        deliver(peers, p.pid, p.outgoing(), lost)
    for p in peers:
        p.end_round()


def stacked(peers: Sequence[Peer]) -> np.ndarray:
    return np.stack([p.params["w"] for p in peers])


def model_msg(*, sender: int, round_: int, value, kind: str = "model", age: float = 0.0,
              samples: int = 1) -> Message:
    return Message(kind=kind, run=RUN, sender=sender, round=round_, age=age, samples=samples,
                   params={"w": np.asarray(value, dtype=np.float32)})


def values_for(n: int, dim: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


# --- construction


def test_peer_logic_imports_no_torch():
    code = "import sys, gossipser.gossip.peer; sys.exit('torch' in sys.modules)"

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)

    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.parametrize("algorithm", ["dpsg", "DPSGD", "", "fedprox"])
def test_unknown_algorithm_is_a_config_error(algorithm):
    with pytest.raises(ConfigError, match="unknown algorithm"):
        Peer(pid=0, neighbours=[1], algorithm=algorithm, params={"w": np.zeros(2, np.float32)},
             samples=1, run=RUN, rng=np.random.default_rng(0))


def test_peer_copies_the_parameters_it_is_given():
    start = {"w": np.array([1.0, 2.0], np.float32)}

    p = Peer(pid=0, neighbours=[2, 1], algorithm="dpsgd", params=start, samples=3, run=RUN,
             rng=np.random.default_rng(0), mix_row={0: 0.5, 1: 0.25, 2: 0.25})
    start["w"][0] = 99.0

    assert p.params["w"].tolist() == [1.0, 2.0]
    assert p.neighbours == (1, 2)


# --- D-PSGD: one synchronous consensus step per round


@pytest.mark.parametrize("graph", [
    nx.path_graph(4), ring_graph(6), star_graph(5), torus_graph(9),
    nx.Graph([(0, 1), (0, 2), (0, 3), (1, 2)]),
], ids=["path4", "ring6", "star5", "torus9", "paw"])
def test_dpsgd_round_equals_w_times_x(graph):
    x = values_for(graph.number_of_nodes())
    peers = make_peers(graph, "dpsgd", x)

    play_round(peers, 1)

    w = metropolis_weights(graph)
    np.testing.assert_allclose(stacked(peers), w @ x.astype(np.float64), **F32)
    assert all(p.params["w"].dtype == np.float32 for p in peers)


def test_dpsgd_many_rounds_equal_matrix_power():
    graph = ring_graph(8)
    x = values_for(8, dim=2, seed=3)
    peers = make_peers(graph, "dpsgd", x)

    for r in range(1, 6):
        play_round(peers, r)

    w = metropolis_weights(graph)
    np.testing.assert_allclose(stacked(peers), np.linalg.matrix_power(w, 5) @ x, **F32)
    # doubly stochastic: the average is kept
    np.testing.assert_allclose(stacked(peers).mean(axis=0), x.mean(axis=0), **F32)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 9), p=st.floats(0.3, 0.9), seed=st.integers(0, 2**16))
def test_dpsgd_round_equals_w_times_x_on_random_graphs(n, p, seed):
    graph = nx.gnp_random_graph(n, p, seed=seed)
    x = values_for(n, dim=2, seed=seed)
    peers = make_peers(graph, "dpsgd", x)

    play_round(peers, 1)

    np.testing.assert_allclose(stacked(peers), metropolis_weights(graph) @ x, **F32)


def test_dpsgd_dropped_message_keeps_its_weight_at_home():
    graph = nx.path_graph(3)  # W row of the middle peer: 1/3, 1/3, 1/3
    x = np.array([[3.0], [6.0], [12.0]], np.float32)
    peers = make_peers(graph, "dpsgd", x)

    play_round(peers, 1, lost=lambda src, dest, msg: (src, dest) == (0, 1))

    # peer 1 lost 0's message: 0's weight 1/3 moves to its own value
    assert peers[1].params["w"][0] == pytest.approx((2 / 3) * 6.0 + (1 / 3) * 12.0, rel=1e-6)
    w = metropolis_weights(graph)
    assert peers[0].params["w"][0] == pytest.approx((w[0] @ x)[0], rel=1e-6)
    assert peers[2].params["w"][0] == pytest.approx((w[2] @ x)[0], rel=1e-6)


def test_dpsgd_row_sum_stays_one_whatever_is_lost():
    graph = ring_graph(6)
    x = np.full((6, 2), 5.0, np.float32)  # a constant is a fixed point of any stochastic row
    peers = make_peers(graph, "dpsgd", x)
    rng = np.random.default_rng(1)

    for r in range(1, 4):
        play_round(peers, r, lost=lambda *_: bool(rng.random() < 0.5))

    np.testing.assert_allclose(stacked(peers), x, rtol=0, atol=1e-6)


def test_dpsgd_all_messages_lost_leaves_models_alone():
    x = values_for(5)
    peers = make_peers(ring_graph(5), "dpsgd", x)

    play_round(peers, 1, lost=lambda *_: True)

    np.testing.assert_allclose(stacked(peers), x, rtol=0, atol=1e-7)


def test_dpsgd_ignores_earlier_rounds_and_keeps_one_round_ahead():
    graph = nx.path_graph(3)
    peers = make_peers(graph, "dpsgd", np.array([[0.0], [3.0], [9.0]], np.float32))
    mid = peers[1]
    mid.begin_round(2)

    mid.receive(model_msg(sender=0, round_=1, value=[100.0]))  # late: round 1 is over
    mid.receive(model_msg(sender=2, round_=3, value=[30.0]))  # early: kept for round 3
    mid.receive(model_msg(sender=2, round_=2, value=[9.0]))
    mid.end_round()

    # round 2: only 2's message counted, 0's weight stayed home
    assert mid.params["w"][0] == pytest.approx((2 / 3) * 3.0 + (1 / 3) * 9.0, rel=1e-6)
    before = mid.params["w"][0]
    mid.begin_round(3)
    assert mid.missing() == {0}
    mid.receive(model_msg(sender=0, round_=3, value=[0.0]))
    mid.end_round()
    assert mid.params["w"][0] == pytest.approx(
        (1 / 3) * before + (1 / 3) * 0.0 + (1 / 3) * 30.0, rel=1e-6)


def test_dpsgd_ignores_strangers_and_far_future_rounds():
    peers = make_peers(nx.path_graph(4), "dpsgd", np.array([[0.0], [3.0], [6.0], [9.0]]))
    p = peers[0]  # neighbour: 1 only
    p.begin_round(1)

    p.receive(model_msg(sender=3, round_=1, value=[1e6]))  # not a neighbour
    p.receive(model_msg(sender=1, round_=9, value=[1e6]))  # beyond the look-ahead

    assert p.missing() == {1}
    p.end_round()
    assert p.params["w"][0] == 0.0
    p.begin_round(9)
    assert p.missing() == {1}


def test_missing_lists_neighbours_not_yet_heard():
    peers = make_peers(star_graph(5), "dpsgd", values_for(5))
    hub = peers[0]
    hub.begin_round(4)
    assert hub.missing() == {1, 2, 3, 4}

    hub.receive(model_msg(sender=2, round_=4, value=[0, 0, 0]))
    hub.receive(model_msg(sender=3, round_=5, value=[0, 0, 0]))  # next round: still missing

    assert hub.missing() == {1, 3, 4}


@pytest.mark.parametrize("algorithm", ["pairwise", "gossip-learning", "local"])
def test_missing_is_empty_for_asynchronous_algorithms(algorithm):
    peers = make_peers(ring_graph(4), algorithm, values_for(4))
    peers[0].begin_round(1)

    assert peers[0].missing() == set()


# --- push-sum


def mass(peers: Sequence[Peer]) -> tuple[np.ndarray, float]:
    """(sum_i w_i z_i, sum_i w_i)."""
    weights = np.array([p.strategy.weight for p in peers])
    return (weights[:, None] * stacked(peers).astype(np.float64)).sum(axis=0), weights.sum()


@pytest.mark.parametrize("graph", [star_graph(6), nx.path_graph(5)], ids=["star6", "path5"])
def test_push_sum_keeps_mass_and_reaches_the_true_average(graph):
    n = graph.number_of_nodes()
    x = values_for(n, dim=2, seed=7) * 10
    peers = make_peers(graph, "push-sum", x)
    total0, weight0 = mass(peers)

    for r in range(1, 201):
        play_round(peers, r)
        total, weight = mass(peers)
        np.testing.assert_allclose(total, total0, rtol=1e-4, atol=1e-4)
        assert weight == pytest.approx(weight0, rel=1e-9)

    np.testing.assert_allclose(stacked(peers), np.broadcast_to(x.mean(axis=0), x.shape),
                               rtol=0, atol=1e-4)
    assert sorted(round(p.strategy.weight, 6) for p in peers) != [1.0] * n  # unequal degrees


def test_push_sum_beats_plain_equal_neighbour_averaging_on_a_star():
    """Row-stochastic equal weights 1/(d+1) drift to a degree-weighted value; push-sum does not."""
    graph = star_graph(5)
    x = np.array([[10.0], [0.0], [0.0], [0.0], [0.0]], np.float32)
    naive = make_peers(graph, "dpsgd", x)
    for p in naive:
        share = 1.0 / (len(p.neighbours) + 1)
        p.mix_row = {p.pid: share, **{j: share for j in p.neighbours}}
    pushed = make_peers(graph, "push-sum", x)

    for r in range(1, 101):
        play_round(naive, r)
        play_round(pushed, r)

    assert stacked(pushed).ravel() == pytest.approx([2.0] * 5, abs=1e-4)
    assert abs(stacked(naive)[0, 0] - 2.0) > 0.5


def test_push_sum_message_carries_its_share_of_the_weight():
    peers = make_peers(star_graph(4), "push-sum", values_for(4))
    hub = peers[0]
    hub.begin_round(1)

    out = hub.outgoing()

    assert sorted(d for d, _ in out) == [1, 2, 3]
    assert all(m.kind == "push_sum" and m.age == pytest.approx(0.25) for _, m in out)


# --- gossip learning


def test_gossip_learning_merge_is_age_weighted():
    graph = nx.path_graph(2)
    peers = make_peers(graph, "gossip-learning", np.array([[0.0], [4.0]], np.float32),
                       ages=[3.0, 1.0])
    a, b = peers
    for p in peers:
        p.begin_round(1)

    n = deliver(peers, b.pid, b.outgoing())  # b pushes its model to its only neighbour a

    assert n == 1
    assert a.params["w"][0] == pytest.approx((3 * 0.0 + 1 * 4.0) / 4)
    assert a.age == 3.0
    assert b.params["w"][0] == 4.0  # a push: the sender does not change


def test_gossip_learning_young_models_count_equally_and_age_grows_with_training():
    peers = make_peers(nx.path_graph(2), "gossip-learning", np.array([[2.0], [6.0]]))
    a, b = peers

    a.receive(model_msg(sender=1, round_=0, value=[6.0], age=0.0))
    assert a.params["w"][0] == pytest.approx(4.0)

    a.trained({"w": np.array([1.0], np.float32)}, steps=5)
    a.receive(model_msg(sender=1, round_=0, value=[11.0], age=20.0))
    assert a.params["w"][0] == pytest.approx((5 * 1.0 + 20 * 11.0) / 25)
    assert a.age == 20.0


# --- pairwise


def test_pairwise_exchange_makes_both_peers_the_pair_average():
    graph = nx.path_graph(2)
    x = np.array([[1.0, -2.0], [5.0, 4.0]], np.float32)
    peers = make_peers(graph, "pairwise", x)
    for p in peers:
        p.begin_round(1)

    n = deliver(peers, 0, peers[0].outgoing())  # pull to 1, 1 replies

    assert n == 2
    np.testing.assert_allclose(stacked(peers), [[3.0, 1.0], [3.0, 1.0]], **F32)


def test_pairwise_keeps_the_sum_and_converges_on_a_ring():
    x = values_for(6, seed=5)
    peers = make_peers(ring_graph(6), "pairwise", x)

    for r in range(1, 61):
        play_round(peers, r)

    np.testing.assert_allclose(stacked(peers).mean(axis=0), x.mean(axis=0), rtol=0, atol=1e-5)
    np.testing.assert_allclose(stacked(peers), np.broadcast_to(x.mean(axis=0), x.shape),
                               rtol=0, atol=1e-3)


def test_pairwise_lost_reply_leaves_the_asker_unchanged():
    peers = make_peers(nx.path_graph(2), "pairwise", np.array([[0.0], [8.0]], np.float32))
    for p in peers:
        p.begin_round(1)

    deliver(peers, 0, peers[0].outgoing(), lost=lambda src, dest, msg: src == 1)

    assert peers[0].params["w"][0] == 0.0
    assert peers[1].params["w"][0] == pytest.approx(4.0)


def test_random_neighbour_choice_follows_the_peer_rng():
    def targets(seed: int) -> list[int]:
        p = make_peers(star_graph(8), "gossip-learning", values_for(8), seed=seed)[0]
        return [p.outgoing()[0][0] for _ in range(30)]

    assert targets(1) == targets(1)
    assert targets(1) != targets(2)
    assert set(targets(1)) <= set(range(1, 8))


# --- local and FedAvg peers


def test_local_peers_send_nothing():
    peers = make_peers(ring_graph(4), "local", values_for(4))
    peers[0].begin_round(1)

    assert peers[0].outgoing() == []
    assert peers[0].receive(model_msg(sender=1, round_=1, value=[9, 9, 9])) == []
    np.testing.assert_array_equal(peers[0].params["w"], values_for(4)[0])


def fedavg_peer(pid: int = 3, samples: int = 7, value=(0.0, 0.0)) -> Peer:
    return Peer(pid=pid, neighbours=[], algorithm="fedavg",
                params={"w": np.asarray(value, np.float32)}, samples=samples, run=RUN,
                rng=np.random.default_rng(pid))


def global_msg(round_: int, value, *, train: bool, sender: int = SERVER_ID) -> Message:
    return Message(kind="fedavg_global", run=RUN, sender=sender, round=round_,
                   params={"w": np.asarray(value, np.float32)}, meta={"train": int(train)})


def test_fedavg_client_takes_the_global_model_and_answers_only_when_asked():
    p = fedavg_peer()
    p.begin_round(2)
    assert p.outgoing() == []  # not asked yet

    p.receive(global_msg(2, [1.0, 2.0], train=True))
    (dest, msg), = p.outgoing()

    assert dest == SERVER_ID and msg.kind == "fedavg_update"
    assert msg.round == 2 and msg.samples == 7
    np.testing.assert_array_equal(msg.params["w"], [1.0, 2.0])
    assert p.outgoing() == []  # one update per request

    p.begin_round(3)
    p.receive(global_msg(3, [5.0, 5.0], train=False))
    assert p.params["w"].tolist() == [5.0, 5.0]
    assert p.outgoing() == []


def test_fedavg_client_ignores_stale_or_forged_global_models():
    p = fedavg_peer()
    p.begin_round(4)

    p.receive(global_msg(3, [9.0, 9.0], train=True))  # an earlier round
    p.receive(global_msg(4, [8.0, 8.0], train=True, sender=1))  # not the server

    assert p.params["w"].tolist() == [0.0, 0.0]
    assert p.outgoing() == []


def make_server(n: int = 4, *, fraction: float = 1.0, seed: int = 0) -> FedAvgServer:
    return FedAvgServer(clients=range(n), params={"w": np.zeros(2, np.float32)}, run=RUN,
                        fraction=fraction, rng=np.random.default_rng(seed))


def update(sender: int, round_: int, value, samples: int) -> Message:
    return model_msg(kind="fedavg_update", sender=sender, round_=round_, value=value,
                     samples=samples)


def asked(outbox) -> list[int]:
    return sorted(dest for dest, msg in outbox if msg.meta["train"])


def test_fedavg_server_starts_a_round_by_sending_the_global_model_to_all():
    server = make_server(4, fraction=0.5, seed=1)
    server.params = {"w": np.array([1.0, -1.0], np.float32)}

    out = server.start_round(3)

    assert sorted(dest for dest, _ in out) == [0, 1, 2, 3]
    assert all(m.kind == "fedavg_global" and m.round == 3 and m.sender == SERVER_ID
               for _, m in out)
    assert all(m.params["w"].tolist() == [1.0, -1.0] for _, m in out)
    assert len(asked(out)) == 2


def test_fedavg_server_averages_weighted_by_samples():
    server = make_server(3)
    server.start_round(1)

    server.receive(update(0, 1, [0.0, 10.0], samples=1))
    server.receive(update(1, 1, [4.0, 0.0], samples=3))
    server.end_round()

    np.testing.assert_allclose(server.params["w"], [3.0, 2.5], **F32)
    assert server.start_round(2)[0][1].params["w"] == pytest.approx([3.0, 2.5])


def test_fedavg_server_ignores_other_rounds_and_unknown_senders():
    server = make_server(3)
    server.start_round(2)

    server.receive(update(0, 1, [100.0, 100.0], samples=50))  # stale round
    server.receive(update(1, 3, [100.0, 100.0], samples=50))  # future round
    server.receive(update(7, 2, [100.0, 100.0], samples=50))  # not a client
    server.receive(model_msg(kind="model", sender=2, round_=2, value=[100.0, 100.0]))
    server.receive(update(2, 2, [1.0, 1.0], samples=5))
    server.end_round()

    np.testing.assert_allclose(server.params["w"], [1.0, 1.0], **F32)


def test_fedavg_server_drops_updates_left_over_from_a_round():
    server = make_server(3)
    server.start_round(1)
    server.receive(update(0, 1, [2.0, 2.0], samples=1))
    server.start_round(2)  # round 1 never closed: its update must not leak into round 2

    server.receive(update(1, 2, [4.0, 4.0], samples=1))
    server.end_round()

    np.testing.assert_allclose(server.params["w"], [4.0, 4.0], **F32)


def test_fedavg_server_without_updates_keeps_its_model():
    server = make_server(3)
    server.start_round(1)
    server.receive(update(0, 1, [2.0, 2.0], samples=1))
    server.end_round()
    server.start_round(2)

    server.end_round()

    np.testing.assert_allclose(server.params["w"], [2.0, 2.0], **F32)


def test_fedavg_fraction_selection_is_deterministic_by_seed():
    def picks(seed: int) -> list[list[int]]:
        server = make_server(10, fraction=0.3, seed=seed)
        return [asked(server.start_round(r)) for r in range(1, 9)]

    first = picks(4)

    assert first == picks(4)
    assert first != picks(5)
    assert all(len(p) == 3 and set(p) <= set(range(10)) for p in first)
    assert len({tuple(p) for p in first}) > 1  # a new draw each round


def test_fedavg_selection_edges():
    assert make_server(4, fraction=1.0).select(1) == [0, 1, 2, 3]
    assert len(make_server(4, fraction=0.01).select(1)) == 1  # at least one client
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ConfigError):
            make_server(4, fraction=bad)


def test_fedavg_round_trip_over_the_delivery_loop():
    samples = [1, 2, 3, 4]
    peers = [fedavg_peer(i, samples[i], value=[0.0]) for i in range(4)]
    server = make_server(4, fraction=0.5, seed=3)
    server.params = {"w": np.array([10.0], np.float32)}

    for p in peers:
        p.begin_round(1)
    out = server.start_round(1)
    for dest, msg in out:
        peers[dest].receive(msg)
    trained_at = {}
    for p in peers:
        if p.wants_training():
            p.trained({"w": np.array([float(p.pid)], np.float32)}, steps=1)
            trained_at[p.pid] = p.samples
        for dest, msg in p.outgoing():
            assert dest == SERVER_ID
            server.receive(msg)
    server.end_round()

    assert sorted(trained_at) == asked(out) and len(trained_at) == 2
    assert all(p.params["w"][0] == 10.0 for p in peers if p.pid not in trained_at)
    expected = sum(pid * s for pid, s in trained_at.items()) / sum(trained_at.values())
    assert server.params["w"][0] == pytest.approx(expected)


def test_combine_is_a_per_parameter_weighted_average():
    a = {"w": np.array([0.0, 2.0], np.float32), "b": np.array([1.0], np.float32)}
    b = {"w": np.array([4.0, 6.0], np.float32), "b": np.array([3.0], np.float32)}

    out = combine([a, b], [3.0, 1.0])

    np.testing.assert_allclose(out["w"], [1.0, 3.0], **F32)
    np.testing.assert_allclose(out["b"], [1.5], **F32)


def test_combine_reuses_no_stale_values_and_matches_one_stacked_product():
    """The stacking buffer is reused between calls of any size (and skipped when huge): each
    result is still the float64 product of the weights and a fresh stack, to the bit."""
    rng = np.random.default_rng(3)
    for n, size in ((5, 300), (2, 7), (9, 1000), (3, 2), (700, 4000)):
        states = [{"w": rng.standard_normal((size,)).astype(np.float32),
                   "m": rng.standard_normal((2, 3)).astype(np.float32)} for _ in range(n)]
        weights = rng.random(n) + 0.1
        out = combine(states, weights)
        w = weights / weights.sum()
        for k in ("w", "m"):
            stacked = np.stack([np.ravel(s[k]) for s in states]).astype(np.float64)
            want = (w @ stacked).astype(np.float32).reshape(states[0][k].shape)
            assert out[k].dtype == np.float32 and out[k].tobytes() == want.tobytes()


def test_combine_refuses_states_whose_parameters_differ_in_size():
    with pytest.raises(ValueError, match="'w' differs in size"):
        combine([{"w": np.zeros(4, np.float32)}, {"w": np.zeros(6, np.float32)}], [1.0, 1.0])


def test_every_algorithm_survives_a_lossy_round():
    """No algorithm needs every message: half lost, the round still closes."""
    rng = np.random.default_rng(0)
    for algorithm in ALGORITHMS:
        if algorithm == "fedavg":
            continue
        peers = make_peers(ring_graph(5), algorithm, values_for(5))
        for r in range(1, 4):
            play_round(peers, r, lost=lambda *_: bool(rng.random() < 0.5))
        assert np.isfinite(stacked(peers)).all(), algorithm


# --- private layers


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a not in ("fedavg", "local")])
def test_private_parameters_are_never_sent_and_never_mixed(algorithm):
    # Prepare: each peer holds a shared 'w' and a private 'p'; training replaces both
    graph = torus_graph(9)
    values = values_for(9)
    peers = make_peers(graph, algorithm, values)
    for p, v in zip(peers, values, strict=True):
        p.params = {"w": v.copy(), "p": -v.copy()}
        p.private = frozenset({"p"})
    sent: list[Message] = []

    def spy(src, dest, msg) -> bool:
        sent.append(msg)
        return False

    # Execute: rounds in which each peer "trains" (a private step of its own) then gossips
    for r in range(6):
        for p in peers:
            p.begin_round(r)
            if p.wants_training():
                start = p.train_from()
                p.trained({"w": start["w"] * 0.9, "p": start["p"] + 1.0}, steps=1)
        for p in peers:
            deliver(peers, p.pid, p.outgoing(), spy)
        for p in peers:
            p.end_round()
    # Assert: messages flowed, none carried 'p', and 'p' is each peer's own trajectory
    assert sent and all("p" not in m.params and "track/p" not in m.params for m in sent)
    assert any("w" in m.params for m in sent)
    for p, v in zip(peers, values, strict=True):
        np.testing.assert_allclose(p.params["p"], -v + 6.0, **F32)
    assert np.std(stacked(peers), axis=0).max() < np.std(values, axis=0).max()  # 'w' is mixed


def test_private_names_resolve_aliases_and_refuse_unknown_layers():
    from gossipser.gossip.private import private_names

    params = {"enc.0.weight": 0, "enc.0.bias": 0, "norm.running_mean": 0, "head.weight": 0,
              "head.bias": 0}
    assert private_names(params, ["first"]) == {"enc.0.weight", "enc.0.bias"}
    assert private_names(params, ["last", "norm"]) == {"head.weight", "head.bias",
                                                       "norm.running_mean"}
    assert private_names(params, []) == frozenset()
    with pytest.raises(ConfigError, match="'enc.1' is not in the model; its layers are "
                       "first, last, bn-stats, bn, enc.0, norm, head"):
        private_names(params, ["enc.1"])
    with pytest.raises(ConfigError, match="whole model"):
        private_names(params, ["enc", "norm", "head"])


def test_bn_stats_names_every_batchnorm_statistic_of_the_cnn_and_no_weight():
    from gossipser.gossip.private import private_names
    from gossipser.learn.models import build_model
    from gossipser.learn.settings import ModelConfig

    cnn = {k: v for k, v in build_model(ModelConfig(kind="cnn"), n_features=39,
                                        n_classes=8).state_dict().items()}
    names = private_names(cnn, ["bn-stats"])
    assert names == {k for k in cnn if k.endswith(("running_mean", "running_var",
                                                   "num_batches_tracked"))}
    assert len(names) == 9 and not any(k.endswith(("weight", "bias")) for k in names)
    whole = private_names(cnn, ["bn"])
    assert whole == names | {f"features.{i}.1.{p}" for i in (0, 2, 4) for p in ("weight", "bias")}
    assert all(k.startswith("features.") for k in whole)  # never a convolution's own weights
    assert not any(k.startswith(f"features.{i}.0.") for i in (0, 2, 4) for k in whole)
    grouped = build_model(ModelConfig(kind="cnn", norm="group"), n_features=39, n_classes=8)
    with pytest.raises(ConfigError, match="no BatchNorm statistics"):
        private_names(dict(grouped.state_dict()), ["bn-stats"])
    with pytest.raises(ConfigError, match="no BatchNorm layer"):
        private_names(dict(grouped.state_dict()), ["bn"])
