"""Who talks to whom: a validated topology from a spec (`gossipser.gossip.graphs`) or a file.

A topology is an undirected ``nx.Graph`` with nodes 0..N-1 (one per peer), no
self-loops, connected. Nodes may carry ``host``/``port`` (where a networked peer
listens); edges may carry a positive ``weight`` (used by ``mixing='weight'``).

Edge-list files (``.txt``, ``.edges``, ``.edgelist``), one item a line::

    # comment (also after an item)
    node 0 host=127.0.0.1 port=7401     optional; attaches attributes to node 0
    0 1                                 edge 0 -- 1
    1 2 0.5                             edge 1 -- 2 with weight 0.5

Node ids are non-negative integers. Attribute values that read as integers
become ints, others that read as numbers become floats, the rest stay text
(no spaces, '=' or '#'). An edge may appear only once (``0 1`` and ``1 0`` are
the same edge). Node-link JSON files (``.json``) are what ``nx.node_link_data``
writes; both the ``edges`` and the older ``links`` key are read.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import networkx as nx
import numpy as np

from gossipser.errors import TopologyError
from gossipser.gossip.graphs import AUTO, FILE_SUFFIXES, generate, parse_spec, resolve_auto
from gossipser.gossip.mixing import mixing_matrix, slem

_INT = re.compile(r"[0-9]+")
_EDGES_KW = "edges" if "edges" in inspect.signature(nx.node_link_data).parameters else "link"

def build_topology(spec_or_path: str | Path, *, peers: int | None, seed: int = 0) -> nx.Graph:
    """A validated topology from a spec string (needs ``peers``) or a topology file.

    A file is a Path, an existing file, or a name ending in .json/.txt/.edges/.edgelist;
    with a file, ``peers`` (if given) must equal its node count.
    """
    text = str(spec_or_path)
    if isinstance(spec_or_path, Path) or text.lower().endswith(FILE_SUFFIXES) or _is_file(text):
        graph = load_topology(text)
        if peers is not None and peers != graph.number_of_nodes():
            raise TopologyError(
                f"topology {graph.graph['name']} has {graph.number_of_nodes()} nodes, peers={peers}"
            )
        return graph
    if peers is None:
        raise TopologyError(f"topology {text!r} needs the number of peers")
    if peers == 1 and text.strip().lower() == AUTO:
        graph = nx.empty_graph(1)
        graph.graph["name"] = "single"
        return validate(graph)
    spec = parse_spec(resolve_auto(text, peers))
    graph = generate(spec, peers, rng=np.random.default_rng(seed))
    graph.graph["name"] = str(spec)
    if spec.random:
        graph.graph["seed"] = seed
    return validate(graph)


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # e.g. a name too long or with NUL for this filesystem
        return False


def _brief(nodes: set) -> str:
    items = sorted(nodes)
    if len(items) <= 6:
        return "{" + ", ".join(map(str, items)) + "}"
    return "{" + ", ".join(map(str, items[:4])) + f", ..., {items[-1]}}} ({len(items)} nodes)"


def _node_id(node: object, name: str) -> int:
    if isinstance(node, int | np.integer) and not isinstance(node, bool):
        return int(node)
    if isinstance(node, str) and _INT.fullmatch(node.strip()):
        return int(node)
    raise TopologyError(f"topology {name}: node id {node!r} is not a non-negative integer")


def validate(graph: nx.Graph, *, name: str | None = None) -> nx.Graph:
    """Check a topology and return a copy with int ids 0..N-1 in order.

    Raises TopologyError (one line, naming the topology) unless the graph is an
    undirected simple graph with ids 0..N-1 (digit strings accepted), N >= 1,
    no self-loops, connected, and every ``weight`` positive and finite.
    """
    name = name or graph.graph.get("name") or "graph"
    if graph.is_directed() or graph.is_multigraph():
        raise TopologyError(f"topology {name} must be an undirected graph without parallel edges")
    if graph.number_of_nodes() == 0:
        raise TopologyError(f"topology {name} has no nodes")
    ids = {node: _node_id(node, name) for node in graph.nodes}
    if len(set(ids.values())) != len(ids):
        raise TopologyError(f"topology {name} has the same node id twice (e.g. 3 and '3')")
    n = len(ids)
    missing = set(range(n)) - set(ids.values())
    if missing:
        extra = set(ids.values()) - set(range(n))
        raise TopologyError(
            f"topology {name}: node ids must be 0..{n - 1}; missing {_brief(missing)}, "
            f"unexpected {_brief(extra)}"
        )
    loops = [ids[u] for u, v in graph.edges() if u == v]
    if loops:
        raise TopologyError(f"topology {name} has self-loops on nodes {_brief(set(loops))}")
    out = nx.Graph()
    out.graph.update(graph.graph)
    by_id = {i: node for node, i in ids.items()}
    out.add_nodes_from((i, dict(graph.nodes[by_id[i]])) for i in range(n))
    for u, v, data in graph.edges(data=True):
        if "weight" in data:
            w = data["weight"]
            ok = isinstance(w, int | float | np.integer | np.floating) and not isinstance(w, bool)
            if not (ok and math.isfinite(w) and w > 0):
                raise TopologyError(
                    f"topology {name}: edge {ids[u]}-{ids[v]} weight must be positive, got {w!r}"
                )
        out.add_edge(*sorted((ids[u], ids[v])), **data)
    if not nx.is_connected(out):
        parts = sorted(nx.connected_components(out), key=min)
        shown = ", ".join(_brief(p) for p in parts[:3]) + (", ..." if len(parts) > 3 else "")
        raise TopologyError(f"topology {name} is not connected: {len(parts)} components ({shown})")
    return out


def describe(graph: nx.Graph, mixing: str = "metropolis") -> dict:
    """Size, degrees, diameter and the mixing matrix's SLEM and spectral gap."""
    degrees = [d for _, d in graph.degree()]
    connected = graph.number_of_nodes() > 0 and nx.is_connected(graph)
    lam = slem(mixing_matrix(graph, mixing))
    return {
        "nodes": graph.number_of_nodes(),
        "edges": graph.number_of_edges(),
        "degree_min": min(degrees),
        "degree_max": max(degrees),
        "degree_mean": float(np.mean(degrees)),
        "diameter": nx.diameter(graph) if connected else math.inf,
        "mixing": mixing,
        "slem": lam,
        "spectral_gap": 1.0 - lam,
    }


def load_topology(path: str | Path) -> nx.Graph:
    """Read and validate an edge-list or node-link JSON file (format by suffix or content)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"topology file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"topology file {path} cannot be read: {exc}") from None
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        graph = _read_node_link(text, path.name)
    else:
        graph = _read_edge_list(text, path.name)
    graph.graph["name"] = path.name
    return validate(graph, name=path.name)


def _value(text: str) -> int | float | str:
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", text):
        return float(text)
    return text


def _read_edge_list(text: str, name: str) -> nx.Graph:
    graph = nx.Graph()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        fields = raw.split("#", 1)[0].split()
        where = f"topology {name} line {lineno}"
        if not fields:
            continue
        if fields[0] == "node":
            if len(fields) < 2 or not _INT.fullmatch(fields[1]):
                raise TopologyError(f"{where}: expected 'node ID key=value ...', got {raw!r}")
            attrs = {}
            for item in fields[2:]:
                key, eq, value = item.partition("=")
                if not (eq and key.isidentifier() and value):
                    raise TopologyError(f"{where}: expected key=value, got {item!r}")
                attrs[key] = _value(value)
            graph.add_node(int(fields[1]), **attrs)
            continue
        if len(fields) not in (2, 3) or not all(_INT.fullmatch(f) for f in fields[:2]):
            raise TopologyError(f"{where}: expected 'u v [weight]' (integer ids), got {raw!r}")
        u, v = int(fields[0]), int(fields[1])
        if graph.has_edge(u, v):
            raise TopologyError(f"{where}: edge {u} {v} appears twice")
        attrs = {}
        if len(fields) == 3:
            try:
                attrs["weight"] = float(fields[2])
            except ValueError:
                raise TopologyError(f"{where}: weight {fields[2]!r} is not a number") from None
        graph.add_edge(u, v, **attrs)
    return graph


def _read_node_link(text: str, name: str) -> nx.Graph:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TopologyError(f"topology {name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "nodes" not in data:
        raise TopologyError(f"topology {name}: expected node-link JSON with 'nodes' and 'edges'")
    key = "links" if "links" in data and "edges" not in data else "edges"
    data.setdefault(key, [])
    data.setdefault("multigraph", False)
    try:
        graph = nx.node_link_graph(data, **{_EDGES_KW: key})
        if not isinstance(graph.graph, dict):
            raise TypeError("'graph' must be an object")
    except (KeyError, TypeError, nx.NetworkXError) as exc:
        raise TopologyError(f"topology {name}: malformed node-link JSON ({exc!r})") from None
    return graph


def save_topology(graph: nx.Graph, path: str | Path) -> Path:
    """Write ``graph`` as node-link JSON (.json) or an edge list (.txt/.edges/.edgelist)."""
    path = Path(path)
    graph = validate(graph, name=path.name)
    suffix = path.suffix.lower()
    if suffix == ".json":
        text = _node_link_text(graph)
    elif suffix in FILE_SUFFIXES:
        text = _edge_list_text(graph)
    else:
        raise TopologyError(f"cannot save topology as {path.name}; use one of {FILE_SUFFIXES}")
    path.write_text(text, encoding="utf-8")
    return path


def _edge_list_text(graph: nx.Graph) -> str:
    about = " ".join(f"{k}={v}" for k, v in graph.graph.items())
    lines = [
        f"# gossipser topology {about}: {len(graph)} nodes, {graph.number_of_edges()} edges",
        "# format: 'u v [weight]' per edge; 'node ID key=value ...' for node attributes",
    ]
    for node, attrs in graph.nodes(data=True):
        if attrs:
            items = []
            for key, value in attrs.items():
                text = repr(value) if isinstance(value, float) else str(value)
                bad = isinstance(value, bool) or not text or re.search(r"[\s=#]", text)
                if bad or not key.isidentifier():
                    raise TopologyError(f"node {node} {key}={value!r} cannot go in an edge list")
                items.append(f"{key}={text}")
            lines.append(f"node {node} " + " ".join(items))
    for u, v, data in sorted(graph.edges(data=True)):
        extra = set(data) - {"weight"}
        if extra:
            raise TopologyError(f"edge {u}-{v} attributes {sorted(extra)} need a .json file")
        lines.append(f"{u} {v}" + (f" {float(data['weight'])!r}" if "weight" in data else ""))
    return "\n".join(lines) + "\n"


def _node_link_text(graph: nx.Graph) -> str:
    data = nx.node_link_data(graph, **{_EDGES_KW: "edges"})
    data["nodes"] = [{"id": nd.pop("id"), **nd} for nd in data["nodes"]]
    data["edges"] = sorted(data["edges"], key=lambda e: (e["source"], e["target"]))
    # One node or edge a line: readable and diff-friendly, unlike indent=2.
    parts = []
    for key, value in data.items():
        if isinstance(value, list):
            body = ",\n".join("    " + json.dumps(item) for item in value)
            parts.append(f'  "{key}": [\n{body}\n  ]')
        else:
            parts.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"
