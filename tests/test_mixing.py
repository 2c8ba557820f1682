"""Averaging maths: mixing matrices, consensus, push-sum and merges on tiny inputs."""

import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipser.errors import ConfigError, TopologyError
from gossipser.gossip.mixing import (
    age_weighted_merge,
    consensus_distance,
    edge_weights,
    max_degree_weights,
    metropolis_weights,
    mix,
    mixing_matrix,
    push_sum_estimates,
    push_sum_matrix,
    push_sum_step,
    slem,
    spectral_gap,
    weighted_average,
)
from gossipser.gossip.topology import build_topology


def paw() -> nx.Graph:
    """Star 0-{1,2,3} plus edge 1-2: degrees 3, 2, 2, 1."""
    return nx.Graph([(0, 1), (0, 2), (0, 3), (1, 2)])


def assert_doubly_stochastic(w: np.ndarray) -> None:
    assert np.allclose(w, w.T, rtol=0, atol=1e-15)
    assert (w >= 0).all()
    assert np.allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-15)
    assert np.allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-15)


# --- mixing matrices


@pytest.mark.parametrize(
    "graph", [nx.path_graph(5), nx.cycle_graph(6), nx.star_graph(4), paw()], ids=str
)
def test_metropolis_is_symmetric_doubly_stochastic(graph):
    w = metropolis_weights(graph)

    assert_doubly_stochastic(w)


def test_metropolis_literal_path_of_three():
    w = metropolis_weights(nx.path_graph(3))

    third = 1 / 3
    expected = [[2 * third, third, 0], [third, third, third], [0, third, 2 * third]]
    np.testing.assert_allclose(w, expected, rtol=0, atol=1e-15)


def test_metropolis_and_max_degree_literal_paw():
    metro = metropolis_weights(paw())
    maxdeg = max_degree_weights(paw())

    q = 1 / 4
    np.testing.assert_allclose(
        metro,
        [[q, q, q, q], [q, 5 / 12, 1 / 3, 0], [q, 1 / 3, 5 / 12, 0], [q, 0, 0, 3 * q]],
        atol=1e-15,
    )
    np.testing.assert_allclose(
        maxdeg,
        [[q, q, q, q], [q, 2 * q, q, 0], [q, q, 2 * q, 0], [q, 0, 0, 3 * q]],
        atol=1e-15,
    )
    assert_doubly_stochastic(maxdeg)


def test_edge_weights_row_normalise_with_self_weight():
    graph = nx.Graph()
    graph.add_edge(0, 1, weight=2.0)
    graph.add_edge(1, 2, weight=1.0)
    graph.nodes[1]["self_weight"] = 3.0

    w = edge_weights(graph)

    np.testing.assert_allclose(
        w, [[1 / 3, 2 / 3, 0], [2 / 6, 3 / 6, 1 / 6], [0, 1 / 2, 1 / 2]], atol=1e-15
    )


def test_edge_weights_need_a_positive_weight_on_every_edge():
    graph = nx.Graph()
    graph.add_edge(0, 1, weight=1.0)
    graph.add_edge(1, 2)

    with pytest.raises(TopologyError, match="edge 1-2 has no weight"):
        edge_weights(graph)
    graph.edges[1, 2]["weight"] = -1.0
    with pytest.raises(TopologyError, match="positive"):
        edge_weights(graph)


def test_mixing_matrix_dispatches_by_name_and_rejects_others():
    graph = paw()

    assert np.array_equal(mixing_matrix(graph, "metropolis"), metropolis_weights(graph))
    assert np.array_equal(mixing_matrix(graph, "maxdegree"), max_degree_weights(graph))
    with pytest.raises(ConfigError, match="unknown mixing 'uniform'"):
        mixing_matrix(graph, "uniform")
    with pytest.raises(ConfigError):
        mixing_matrix(graph, "__import__('os')")


def test_self_loop_is_rejected():
    graph = nx.Graph([(0, 1), (1, 1)])

    with pytest.raises(TopologyError, match="self-loop"):
        metropolis_weights(graph)


# --- spectrum


def test_slem_closed_forms():
    n = 12
    ring = metropolis_weights(nx.cycle_graph(n))  # 1/3 + 2/3 cos(2 pi k / n)
    complete = metropolis_weights(nx.complete_graph(5))  # all 1/5: rank one

    assert slem(ring) == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi / n), abs=1e-12)
    assert spectral_gap(ring) == pytest.approx(2 / 3 * (1 - math.cos(2 * math.pi / n)), abs=1e-12)
    assert slem(complete) == pytest.approx(0.0, abs=1e-12)
    assert slem(np.eye(1)) == 0.0
    assert slem(np.eye(3)) == pytest.approx(1.0)  # three disconnected peers never agree


# --- consensus


@st.composite
def connected_graphs(draw, max_nodes: int = 10) -> nx.Graph:
    """A random spanning tree plus random extra edges."""
    n = draw(st.integers(2, max_nodes))
    graph = nx.empty_graph(n)
    graph.add_edges_from((i, draw(st.integers(0, i - 1))) for i in range(1, n))
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n))
    graph.add_edges_from((u, v) for u, v in extra if u != v)
    return graph


@st.composite
def graphs_and_states(draw):
    graph = draw(connected_graphs())
    dim = draw(st.integers(1, 4))
    values = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
    state = draw(hnp.arrays(np.float64, (graph.number_of_nodes(), dim), elements=values))
    return graph, state


@settings(max_examples=150, deadline=None)
@given(graphs_and_states(), st.sampled_from(["metropolis", "maxdegree"]))
def test_mix_preserves_mean_and_contracts_by_slem_squared(case, kind):
    graph, x = case
    w = mixing_matrix(graph, kind)

    y = mix(x, w)

    assert_doubly_stochastic(w)
    np.testing.assert_allclose(y.mean(axis=0), x.mean(axis=0), rtol=1e-12, atol=1e-10)
    d0, d1 = consensus_distance(x), consensus_distance(y)
    assert d1 <= slem(w) ** 2 * d0 * (1 + 1e-9) + 1e-12


def test_consensus_distance_literal():
    x = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 3.0]])  # mean (1, 1)

    assert consensus_distance(x) == pytest.approx((2 + 2 + 4) / 3)
    assert consensus_distance(np.ones((4, 3))) == 0.0


def test_mix_keeps_trailing_shape_and_checks_sizes():
    x = np.arange(24, dtype=float).reshape(4, 3, 2)
    w = metropolis_weights(nx.cycle_graph(4))

    y = mix(x, w)

    assert y.shape == (4, 3, 2)
    np.testing.assert_allclose(y[0], (x[0] + x[1] + x[3]) / 3)
    with pytest.raises(ValueError, match="does not match 3 peers"):
        mix(np.zeros((3, 2)), w)


@pytest.mark.parametrize(
    ("spec", "peers"), [("ring", 20), ("torus", 64), ("regular:4", 50)], ids=str
)
def test_empirical_contraction_rate_matches_slem_squared(spec, peers):
    """Once the faster modes have died out, each step multiplies the distance by SLEM^2."""
    graph = build_topology(spec, peers=peers, seed=0)
    w = metropolis_weights(graph)
    x = np.random.default_rng(7).normal(size=(peers, 8))
    distances = [consensus_distance(x)]

    # Stop well above the float64 floor (~1e-32 relative) so rounding does not set the rate.
    while len(distances) <= 200 and distances[-1] > 1e-20 * distances[0]:
        x = mix(x, w)
        distances.append(consensus_distance(x))
    end = len(distances) - 1
    start = end - 50
    rate = (distances[end] / distances[start]) ** (1 / (end - start))

    assert start >= 50
    assert rate == pytest.approx(slem(w) ** 2, rel=0.05)


# --- push-sum


def test_push_sum_matrix_is_column_stochastic():
    digraph = nx.DiGraph([(0, 1), (1, 2), (2, 0), (0, 2)])

    p = push_sum_matrix(digraph)

    np.testing.assert_allclose(p.sum(axis=0), 1.0)
    np.testing.assert_allclose(p[:, 0], [1 / 3, 1 / 3, 1 / 3])  # keeps a third, sends two
    np.testing.assert_allclose(p[:, 1], [0, 1 / 2, 1 / 2])


def test_push_sum_conserves_mass_and_converges_on_directed_ring_with_chords():
    n = 10
    digraph = nx.DiGraph()
    digraph.add_edges_from((i, (i + 1) % n) for i in range(n))
    digraph.add_edges_from((i, (i + 3) % n) for i in range(0, n, 2))  # chords from even nodes
    p = push_sum_matrix(digraph)
    start = np.random.default_rng(3).normal(size=(n, 4))
    values, weights = start.copy(), np.ones(n)

    for _ in range(300):
        values, weights = push_sum_step(values, weights, p)
        np.testing.assert_allclose(values.sum(axis=0), start.sum(axis=0), atol=1e-12)
        assert weights.sum() == pytest.approx(n, abs=1e-12)

    assert not np.allclose(p.sum(axis=1), 1.0)  # not doubly stochastic: plain mixing would bias
    estimates = push_sum_estimates(values, weights)
    np.testing.assert_allclose(estimates, np.broadcast_to(start.mean(axis=0), (n, 4)), atol=1e-10)


def test_push_sum_step_rejects_a_non_column_stochastic_matrix():
    with pytest.raises(ValueError, match="column-stochastic"):
        push_sum_step(np.zeros((2, 1)), np.ones(2), np.array([[1.0, 1.0], [0.0, 0.5]]))


# --- averaging models


def test_weighted_average_literal():
    a = np.array([1.0, 2.0])
    b = np.array([3.0, 4.0])

    avg = weighted_average([a, b], [1, 3])

    np.testing.assert_allclose(avg, [2.5, 3.5])
    np.testing.assert_allclose(weighted_average([a, b], [0, 2]), b)


def test_weighted_average_keeps_float32_and_promotes_ints():
    a32 = np.array([1.0, 2.0], dtype=np.float32)

    assert weighted_average([a32, a32], [1, 1]).dtype == np.float32
    assert weighted_average([np.array([1, 2]), np.array([2, 3])], [1, 1]).dtype == np.float64


@pytest.mark.parametrize(
    ("arrays", "weights", "message"),
    [
        ([np.zeros(2)], [-1.0], "non-negative"),
        ([np.zeros(2), np.zeros(2)], [0.0, 0.0], "all zero"),
        ([np.zeros(2)], [1.0, 1.0], "1 arrays but 2 weights"),
        ([np.zeros(2), np.zeros(3)], [1.0, 1.0], "shape"),
        ([], [], "at least one"),
        ([np.zeros(2)], [math.nan], "finite"),
    ],
)
def test_weighted_average_rejects_bad_input(arrays, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_average(arrays, weights)


def test_age_weighted_merge():
    a, b = np.array([0.0, 0.0]), np.array([4.0, 8.0])

    merged, age = age_weighted_merge(a, 1, b, 3)
    fresh, fresh_age = age_weighted_merge(a, 0, b, 0)

    np.testing.assert_allclose(merged, [3.0, 6.0])
    assert age == 3
    np.testing.assert_allclose(fresh, [2.0, 4.0])
    assert fresh_age == 0
    with pytest.raises(ValueError, match="non-negative"):
        age_weighted_merge(a, -1, b, 1)
