"""Topology specs, generators, files and validation."""

import json
import math
from pathlib import Path

import networkx as nx
import pytest

from gossipser.errors import ConfigError, TopologyError
from gossipser.gossip.graphs import TopologySpec, parse_spec, torus_shape
from gossipser.gossip.topology import build_topology, describe, save_topology, validate

READY = Path(__file__).resolve().parents[1] / "topologies"


def degrees(graph: nx.Graph) -> set[int]:
    return {d for _, d in graph.degree()}


# --- specs and generators


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ring", TopologySpec("ring")),
        ("Torus", TopologySpec("torus")),
        ("regular:4", TopologySpec("regular", k=4)),
        ("smallworld:4:0.2", TopologySpec("smallworld", k=4, p=0.2)),
        ("er:0.3", TopologySpec("er", p=0.3)),
        ("expo", TopologySpec("expo")),
    ],
)
def test_parse_spec(spec, expected):
    parsed = parse_spec(spec)

    assert parsed == expected
    assert parse_spec(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rign", "unknown topology 'rign'"),
        ("regular", "takes 1 parameter"),
        ("ring:3", "takes 0 parameter"),
        ("regular:four", "not a number"),
        ("er:1.5", r"in \[0, 1\]"),
        ("er:0", "never connected"),
    ],
)
def test_parse_spec_rejects(spec, message):
    with pytest.raises(TopologyError, match=message):
        parse_spec(spec)


@pytest.mark.parametrize(
    ("spec", "peers", "expected_degrees", "expected_edges"),
    [
        ("ring", 8, {2}, 8),
        ("torus", 16, {4}, 32),
        ("torus", 12, {4}, 24),  # 3 x 4
        ("regular:4", 20, {4}, 40),
        ("regular:3", 10, {3}, 15),
        ("smallworld:4:0.2", 20, None, 40),
        ("er:0.3", 20, None, None),
        ("complete", 5, {4}, 10),
        ("star", 6, {1, 5}, 5),
        ("hypercube", 16, {4}, 32),
        ("expo", 8, {5}, 20),  # offsets 1, 2, 4 and -1, -2 (4 == -4)
        ("expo", 12, {6}, 36),  # offsets +-1, +-2, +-4, 8 == -4
    ],
)
def test_generators(spec, peers, expected_degrees, expected_edges):
    graph = build_topology(spec, peers=peers, seed=0)

    assert list(graph.nodes) == list(range(peers))
    assert nx.is_connected(graph)
    assert nx.number_of_selfloops(graph) == 0
    if expected_degrees is not None:
        assert degrees(graph) == expected_degrees
    if expected_edges is not None:
        assert graph.number_of_edges() == expected_edges


def test_torus_is_a_wrapped_grid():
    graph = build_topology("torus", peers=12, seed=0)  # 3 rows x 4 columns, node r*4 + c

    assert set(graph[0]) == {1, 3, 4, 8}
    assert torus_shape(16) == (4, 4)
    assert torus_shape(18) == (3, 6)
    assert torus_shape(7) is None


@pytest.mark.parametrize("spec", ["regular:4", "smallworld:4:0.3", "er:0.3"])
def test_random_generators_follow_the_seed(spec):
    first = build_topology(spec, peers=20, seed=5)
    again = build_topology(spec, peers=20, seed=5)
    other = build_topology(spec, peers=20, seed=6)

    assert sorted(first.edges) == sorted(again.edges)
    assert sorted(first.edges) != sorted(other.edges)
    assert first.graph == {"name": spec, "seed": 5}


@pytest.mark.parametrize(
    ("spec", "peers", "message"),
    [
        ("torus", 7, "torus cannot hold 7 peers.*nearest that work: 9"),
        ("torus", 10, "nearest that work: 9, 12"),
        ("regular:3", 7, "N\\*K must be even, got 21"),
        ("regular:8", 8, "2 <= K < N"),
        ("smallworld:3:0.1", 10, "even K"),
        ("hypercube", 12, "power of 2"),
        ("ring", 2, "ring needs at least 3 peers"),
        ("star", 2, "star needs at least 3 peers"),
        ("er:0.01", 30, "no connected graph on 30 peers in 100 tries"),
    ],
)
def test_generators_reject_impossible_sizes(spec, peers, message):
    with pytest.raises(TopologyError, match=message):
        build_topology(spec, peers=peers, seed=0)


def test_spec_needs_peers():
    with pytest.raises(TopologyError, match="needs the number of peers"):
        build_topology("ring", peers=None)


def test_topology_error_is_a_config_error():
    assert issubclass(TopologyError, ConfigError)


# --- validation


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("split.txt", "0 1\n1 2\n3 4\n", r"split.txt is not connected: 2 components \(\{0, 1, 2\}"),
        ("loop.txt", "0 1\n1 1\n", "loop.txt has self-loops on nodes {1}"),
        ("shift.txt", "1 2\n2 3\n", r"node ids must be 0..2; missing \{0\}, unexpected \{3\}"),
        ("bad.txt", "0 1\n0 1 2 3\n", "bad.txt line 2: expected 'u v \\[weight\\]'"),
        ("names.txt", "a b\n", "line 1: expected 'u v"),
        ("twice.txt", "0 1\n1 0\n", "line 2: edge 1 0 appears twice"),
        ("neg.txt", "0 1 -0.5\n", "edge 0-1 weight must be positive"),
        ("nan.txt", "0 1 nan\n", "weight must be positive"),
        ("attr.txt", "node 0 port\n0 1\n", "expected key=value, got 'port'"),
        ("empty.txt", "# nothing\n", "has no nodes"),
        ("broken.json", '{"nodes": [', "not valid JSON"),
        ("edge.json", '{"nodes": [{"id": 0}], "edges": [{"source": 0}]}', "malformed node-link"),
        ("graph.json", '{"graph": [], "nodes": [{"id": 0}], "edges": []}', "malformed node-link"),
        ("dir.json", '{"directed": true, "nodes": [{"id": 0}], "edges": []}', "undirected"),
    ],
)
def test_bad_files_raise_one_clear_line(tmp_path, name, text, message):
    path = write(tmp_path, name, text)

    with pytest.raises(TopologyError, match=message) as info:
        build_topology(path, peers=None)

    assert "\n" not in str(info.value)


def test_disconnected_message_abbreviates_big_components(tmp_path):
    edges = "".join(f"{i} {i + 1}\n" for i in range(9)) + "10 11\n"
    path = write(tmp_path, "two.txt", edges)

    with pytest.raises(TopologyError) as info:
        build_topology(path, peers=None)

    assert str(info.value) == (
        "topology two.txt is not connected: 2 components "
        "({0, 1, 2, 3, ..., 9} (10 nodes), {10, 11})"
    )


def test_missing_file(tmp_path):
    with pytest.raises(TopologyError, match="not found"):
        build_topology(tmp_path / "nope.txt", peers=None)
    with pytest.raises(TopologyError, match="not found"):
        build_topology("does-not-exist.edges", peers=4)


def test_validate_relabels_digit_strings_and_keeps_attributes():
    graph = nx.Graph()
    graph.add_node("1", host="h1")
    graph.add_edges_from([("1", "0"), ("1", "2")])

    valid = validate(graph)

    assert list(valid.nodes) == [0, 1, 2]
    assert valid.nodes[1] == {"host": "h1"}
    assert sorted(valid.edges) == [(0, 1), (1, 2)]


def test_validate_rejects_duplicate_ids_directed_graphs_and_bool_ids():
    mixed = nx.Graph([(0, "0"), (0, 1)])

    with pytest.raises(TopologyError, match="same node id twice"):
        validate(mixed)
    with pytest.raises(TopologyError, match="undirected"):
        validate(nx.DiGraph([(0, 1)]))
    with pytest.raises(TopologyError, match="not a non-negative integer"):
        validate(nx.Graph([(True, 0)]))


def test_single_peer_is_valid():
    graph = nx.empty_graph(1)

    assert list(validate(graph).nodes) == [0]


# --- files


def tcp_ring() -> nx.Graph:
    graph = nx.cycle_graph(4)
    for i in range(4):
        graph.nodes[i].update(host="127.0.0.1", port=7401 + i)
    graph.edges[0, 1]["weight"] = 0.25
    graph.edges[1, 2]["weight"] = 3.0
    graph.edges[2, 3]["weight"] = 1.0
    graph.edges[0, 3]["weight"] = 1e-3
    return graph


@pytest.mark.parametrize("name", ["ring.txt", "ring.edges", "ring.json"])
def test_file_round_trip_keeps_host_port_and_weights(tmp_path, name):
    graph = tcp_ring()

    path = save_topology(graph, tmp_path / name)
    loaded = build_topology(path, peers=4)

    assert dict(loaded.nodes(data=True)) == dict(graph.nodes(data=True))
    assert sorted(loaded.edges(data=True)) == sorted(graph.edges(data=True))
    assert isinstance(loaded.nodes[0]["port"], int)
    assert loaded.graph["name"] == name


def test_edge_list_format_is_readable(tmp_path):
    path = save_topology(tcp_ring(), tmp_path / "ring.txt")

    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]

    assert lines[0] == "node 0 host=127.0.0.1 port=7401"
    assert lines[4:] == ["0 1 0.25", "0 3 0.001", "1 2 3.0", "2 3 1.0"]


def test_node_link_json_with_legacy_links_key_and_string_ids(tmp_path):
    data = {
        "nodes": [{"id": "0", "host": "a"}, {"id": "1"}, {"id": "2"}],
        "links": [{"source": "0", "target": "1"}, {"source": "1", "target": "2"}],
    }
    path = write(tmp_path, "legacy.json", json.dumps(data))

    graph = build_topology(str(path), peers=3)

    assert sorted(graph.edges) == [(0, 1), (1, 2)]
    assert graph.nodes[0] == {"host": "a"}


def test_existing_file_without_known_suffix_is_read(tmp_path):
    path = write(tmp_path, "mytopo", "node 0 role=seed\n0 1\n1 2\n")

    graph = build_topology(str(path), peers=3)

    assert graph.nodes[0] == {"role": "seed"}


def test_peers_must_match_the_file(tmp_path):
    path = save_topology(nx.cycle_graph(4), tmp_path / "ring-4.txt")

    with pytest.raises(TopologyError, match="ring-4.txt has 4 nodes, peers=5"):
        build_topology(path, peers=5)


def test_save_rejects_unknown_suffix_and_unwritable_attributes(tmp_path):
    graph = nx.cycle_graph(3)

    with pytest.raises(TopologyError, match="cannot save topology as ring.csv"):
        save_topology(graph, tmp_path / "ring.csv")
    graph.nodes[0]["host"] = "two words"
    with pytest.raises(TopologyError, match="cannot go in an edge list"):
        save_topology(graph, tmp_path / "ring.txt")
    save_topology(graph, tmp_path / "ring.json")  # JSON holds any JSON value


# --- ready files and description


@pytest.mark.parametrize(
    ("name", "nodes", "degree"),
    [
        ("ring-8.txt", 8, {2}),
        ("ring-20.txt", 20, {2}),
        ("torus-16.txt", 16, {4}),
        ("regular4-20.txt", 20, {4}),
        ("complete-4.json", 4, {3}),
        ("local-4-tcp.json", 4, {2}),
    ],
)
def test_ready_files_load_and_validate(name, nodes, degree):
    graph = build_topology(READY / name, peers=nodes)

    assert graph.number_of_nodes() == nodes
    assert degrees(graph) == degree


def test_every_ready_file_is_listed():
    names = {p.name for p in READY.iterdir() if p.suffix in (".txt", ".json")}

    assert names == {
        "ring-8.txt",
        "ring-20.txt",
        "torus-16.txt",
        "regular4-20.txt",
        "complete-4.json",
        "local-4-tcp.json",
    }


def test_local_tcp_file_has_loopback_addresses():
    graph = build_topology(READY / "local-4-tcp.json", peers=4)

    assert [graph.nodes[i]["port"] for i in range(4)] == [7401, 7402, 7403, 7404]
    assert {graph.nodes[i]["host"] for i in range(4)} == {"127.0.0.1"}


def test_ready_torus_matches_the_generator():
    assert sorted(build_topology(READY / "torus-16.txt", peers=16).edges) == sorted(
        build_topology("torus", peers=16).edges
    )


def test_describe_ring():
    info = describe(build_topology("ring", peers=8))

    expected_slem = 1 / 3 + 2 / 3 * math.cos(2 * math.pi / 8)
    assert info["nodes"] == 8
    assert info["edges"] == 8
    assert (info["degree_min"], info["degree_max"], info["degree_mean"]) == (2, 2, 2.0)
    assert info["diameter"] == 4
    assert info["slem"] == pytest.approx(expected_slem)
    assert info["spectral_gap"] == pytest.approx(1 - expected_slem)


def test_describe_other_mixing_and_bad_name():
    graph = build_topology("star", peers=5)

    assert describe(graph, "maxdegree")["slem"] == pytest.approx(0.8)  # 1 - 1/(1 + 4)
    with pytest.raises(ConfigError, match="unknown mixing"):
        describe(graph, "nope")


@pytest.mark.parametrize("peers, name, degree", [
    (1, "single", 0), (2, "complete", 1), (4, "complete", 3), (5, "regular:4", 4),
    (9, "regular:4", 4), (40, "regular:4", 4),
])
def test_auto_is_regular4_when_possible_and_names_what_it_built(peers, name, degree):
    # Execute
    graph = build_topology("auto", peers=peers, seed=3)
    # Assert
    assert graph.graph["name"] == name
    assert {d for _, d in graph.degree()} == {degree}
    assert nx.is_connected(graph)
