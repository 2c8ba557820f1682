"""Topology specs and the graph generators they name.

A topology is an undirected ``nx.Graph`` with nodes 0..N-1 (one per peer), no
self-loops, connected. Nodes may carry ``host``/``port`` (where a networked peer
listens); edges may carry a positive ``weight`` (used by ``mixing='weight'``).

Specs (``build_topology(spec, peers=N, seed=S)``)::

    auto              regular:4 when N >= 5, else complete (the default: a sparse graph
                      whose spectral gap stays large as N grows, unlike the ring's)
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

Files, validation and `build_topology` are in `gossipser.gossip.topology`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import networkx as nx
import numpy as np

from gossipser.errors import TopologyError

FILE_SUFFIXES = (".json", ".txt", ".edges", ".edgelist")
KINDS = ("ring", "torus", "regular", "smallworld", "er", "complete", "star", "hypercube", "expo")
_USAGE = "auto, ring, torus, regular:K, smallworld:K:P, er:P, complete, star, hypercube, expo"
_MAX_TRIES = 100
_INT = re.compile(r"[0-9]+")
# networkx 3.4 renamed node_link_*'s `link` keyword to `edges`; pass whichever exists.


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


AUTO = "auto"


def resolve_auto(spec: str, n: int) -> str:
    """The concrete spec ``auto`` stands for on ``n`` peers (other specs unchanged)."""
    if spec.strip().lower() != AUTO:
        return spec
    return "regular:4" if n >= 5 else "complete"


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
