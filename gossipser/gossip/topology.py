"""Who talks to whom: topology specs, generators, files and validation.

A topology is an undirected ``nx.Graph`` with nodes 0..N-1 (one per peer), no
self-loops, connected. Nodes may carry ``host``/``port`` (where a networked peer
listens); edges may carry a positive ``weight`` (used by ``mixing='weight'``).

Specs (``build_topology(spec, peers=N, seed=S)``)::

    ring              cycle, N >= 3
    torus             2-D wrap-around grid r x c = N, r, c >= 3, as square as possible
    regular:K         random K-regular, connected; 2 <= K < N, N*K even
    smallworld:K:P    Watts-Strogatz (connected variant), K even neighbours, rewire prob P
    er:P              Erdos-Renyi G(N, P), resampled until connected
    complete          every pair, N >= 2
    star              node 0 in the middle, N >= 3
    hypercube         N = 2^d, i -- i xor 2^b
    expo              exponential graph: i -- (i + 2^k) mod N for every 2^k < N

``expo`` is the static exponential graph of Ying et al. (2021, "Exponential graph
is provably efficient for decentralized deep training") made undirected; its
*one-peer* variant talks at round t only along offset 2^(t mod ceil(log2 N)),
and all those edges are in this graph, so a scheduler can pick them from it.

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
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np

from gossipser.errors import TopologyError
from gossipser.gossip.mixing import mixing_matrix, slem

FILE_SUFFIXES = (".json", ".txt", ".edges", ".edgelist")
KINDS = ("ring", "torus", "regular", "smallworld", "er", "complete", "star", "hypercube", "expo")
_USAGE = "ring, torus, regular:K, smallworld:K:P, er:P, complete, star, hypercube, expo"
_MAX_TRIES = 100
_INT = re.compile(r"[0-9]+")
# networkx 3.4 renamed node_link_*'s `link` keyword to `edges`; pass whichever exists.
_EDGES_KW = "edges" if "edges" in inspect.signature(nx.node_link_data).parameters else "link"


def _need(n: int, at_least: int, what: str) -> None:
    if n < at_least:
        raise TopologyError(f"{what} needs at least {at_least} peers, got {n}")


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**32))


def ring_graph(n: int) -> nx.Graph:
    """Cycle 0 - 1 - ... - (n-1) - 0."""
    _need(n, 3, "ring")
    return nx.cycle_graph(n)


def torus_shape(n: int) -> tuple[int, int] | None:
    """(r, c) with r * c = n, 3 <= r <= c and r as large as possible; None if there is none."""
    for r in range(math.isqrt(n), 2, -1):
        if n % r == 0:
            return r, n // r
    return None


def torus_graph(n: int) -> nx.Graph:
    """2-D torus r x c; node r_i * c + c_i; every node has degree 4."""
    shape = torus_shape(n)
    if shape is None:
        below = [m for m in range(n - 1, 8, -1) if torus_shape(m)][:1]
        above = [m for m in range(n + 1, 2 * n + 10) if torus_shape(m)][:1]
        raise TopologyError(
            f"torus cannot hold {n} peers: N must be r x c with r, c >= 3 "
            f"(9, 12, 15, 16, 18, 20, ...); nearest that work: "
            + ", ".join(str(m) for m in below + above)
        )
    rows, cols = shape
    grid = nx.grid_2d_graph(rows, cols, periodic=True)
    return nx.relabel_nodes(grid, {(i, j): i * cols + j for i, j in grid.nodes})


def regular_graph(n: int, k: int, *, rng: np.random.Generator) -> nx.Graph:
    """Random connected k-regular graph (resampled, at most 100 tries)."""
    if not 2 <= k < n:
        raise TopologyError(f"regular:{k} needs 2 <= K < N, got K={k}, N={n}")
    if n * k % 2:
        raise TopologyError(f"regular:{k} with N={n}: N*K must be even, got {n * k}")
    return _connected(lambda: nx.random_regular_graph(k, n, seed=_seed(rng)), f"regular:{k}", n)


def small_world_graph(n: int, k: int, p: float, *, rng: np.random.Generator) -> nx.Graph:
    """Watts-Strogatz ring of k nearest neighbours, each edge rewired with probability p."""
    if k % 2 or not 2 <= k < n:
        raise TopologyError(f"smallworld:{k}:{p} needs an even K with 2 <= K < N, got N={n}")
    try:
        return nx.connected_watts_strogatz_graph(n, k, p, tries=_MAX_TRIES, seed=_seed(rng))
    except nx.NetworkXError as exc:
        raise TopologyError(f"smallworld:{k}:{p} with N={n}: {exc}") from None


def erdos_renyi_graph(n: int, p: float, *, rng: np.random.Generator) -> nx.Graph:
    """G(n, p) resampled until connected (at most 100 tries)."""
    _need(n, 2, f"er:{p}")
    hint = f"; raise P above ln(N)/N = {math.log(n) / n:.3g}"
    return _connected(lambda: nx.gnp_random_graph(n, p, seed=_seed(rng)), f"er:{p}", n, hint)


def _connected(sample, what: str, n: int, hint: str = "") -> nx.Graph:
    for _ in range(_MAX_TRIES):
        graph = sample()
        if nx.is_connected(graph):
            return graph
    raise TopologyError(f"{what} gave no connected graph on {n} peers in {_MAX_TRIES} tries{hint}")


def complete_graph(n: int) -> nx.Graph:
    """Every pair of peers is an edge."""
    _need(n, 2, "complete")
    return nx.complete_graph(n)


def star_graph(n: int) -> nx.Graph:
    """Node 0 joined to every other node."""
    _need(n, 3, "star")
    return nx.star_graph(n - 1)


def hypercube_graph(n: int) -> nx.Graph:
    """Hypercube on n = 2^d nodes: i -- i xor 2^b for b < d."""
    if n < 2 or n & (n - 1):
        raise TopologyError(f"hypercube needs N a power of 2 (2, 4, 8, 16, ...), got {n}")
    graph = nx.empty_graph(n)
    graph.add_edges_from((i, i ^ (1 << b)) for i in range(n) for b in range(n.bit_length() - 1))
    return graph


def expo_graph(n: int) -> nx.Graph:
    """Undirected exponential graph: i -- (i + 2^k) mod n for every 2^k < n."""
    _need(n, 2, "expo")
    graph = nx.empty_graph(n)
    offsets = [1 << k for k in range((n - 1).bit_length())]
    graph.add_edges_from((i, (i + off) % n) for i in range(n) for off in offsets)
    return graph


@dataclass(frozen=True)
class TopologySpec:
    """A parsed spec string: ``kind`` plus its degree ``k`` and/or probability ``p``."""

    kind: str
    k: int | None = None
    p: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TopologyError(f"unknown topology {self.kind!r}; expected {_USAGE} or a file")
        needs_k = self.kind in ("regular", "smallworld")
        needs_p = self.kind in ("smallworld", "er")
        if needs_k != (self.k is not None) or needs_p != (self.p is not None):
            raise TopologyError(f"topology {self.kind!r} takes the wrong parameters; use {_USAGE}")
        if self.p is not None and not 0.0 <= self.p <= 1.0:
            raise TopologyError(f"probability P must be in [0, 1], got {self.p}")
        if self.kind == "er" and self.p == 0.0:
            raise TopologyError("er:0 is never connected; use P > 0")

    def __str__(self) -> str:
        return ":".join(str(x) for x in (self.kind, self.k, self.p) if x is not None)

    @property
    def random(self) -> bool:
        """Whether the graph depends on the seed."""
        return self.kind in ("regular", "smallworld", "er")


def parse_spec(spec: str) -> TopologySpec:
    """Parse 'ring', 'regular:4', 'smallworld:4:0.2', 'er:0.2', ... into a TopologySpec."""
    kind, *args = spec.strip().lower().split(":")
    arity = {"regular": 1, "smallworld": 2, "er": 1}.get(kind, 0)
    if kind in KINDS and len(args) != arity:
        raise TopologyError(f"topology {spec!r} takes {arity} parameter(s); use {_USAGE}")
    try:
        if kind == "regular":
            return TopologySpec(kind, k=int(args[0]))
        if kind == "smallworld":
            return TopologySpec(kind, k=int(args[0]), p=float(args[1]))
        if kind == "er":
            return TopologySpec(kind, p=float(args[0]))
    except ValueError:
        raise TopologyError(f"topology {spec!r} has a parameter that is not a number") from None
    return TopologySpec(kind)


def generate(spec: TopologySpec, n: int, *, rng: np.random.Generator) -> nx.Graph:
    """The graph ``spec`` describes on ``n`` peers; random kinds draw from ``rng``."""
    if spec.kind == "regular":
        return regular_graph(n, spec.k, rng=rng)  # type: ignore[arg-type]
    if spec.kind == "smallworld":
        return small_world_graph(n, spec.k, spec.p, rng=rng)  # type: ignore[arg-type]
    if spec.kind == "er":
        return erdos_renyi_graph(n, spec.p, rng=rng)  # type: ignore[arg-type]
    fixed = {"ring": ring_graph, "torus": torus_graph, "complete": complete_graph,
             "star": star_graph, "hypercube": hypercube_graph, "expo": expo_graph}
    return fixed[spec.kind](n)


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
    spec = parse_spec(text)
    if peers is None:
        raise TopologyError(f"topology {text!r} needs the number of peers")
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
