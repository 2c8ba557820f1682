"""Averaging maths for gossip: mixing matrices, consensus steps, push-sum, merges.

Pure numpy (networkx only to read a graph's edges); no torch, no I/O.

Rows and columns of every matrix follow the graph's nodes in sorted order, so
node id ``i`` is row ``i`` for a validated topology (ids 0..N-1). A *stacked*
array has one row per peer: shape ``(n, ...)``, row ``i`` is peer ``i``'s
flattened model or value.

Argument misuse by calling code (wrong shapes, negative weights) raises
``ValueError``; problems that come from a topology (missing or bad edge weights,
self-loops) raise ``TopologyError``; an unknown mixing name raises ``ConfigError``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

import networkx as nx
import numpy as np

from gossipser.errors import ConfigError, TopologyError

_ATOL = 1e-9

Params = dict[str, np.ndarray]  # one model state: parameter name -> array


_scratch = threading.local()  # per thread: one float64 buffer the stacks below reuse
_SCRATCH_MAX = 1 << 21  # elements (16 MB): a larger stack is fresh (combine: past 32,768 states)


def stack_float64(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The arrays, raveled, as the rows of a float64 matrix held in this thread's reused
    buffer where it fits, so valid only until the next call in the thread: a fresh stack per
    parameter and merge costs a simulator of 1,000 peers more in page faults than the
    products themselves. The values are those of `np.stack(...).astype(np.float64)`."""
    rows, size = len(arrays), np.size(arrays[0])
    n = rows * size
    if n > _SCRATCH_MAX:
        out = np.empty((rows, size))
    else:
        buf = getattr(_scratch, "buf", None)
        if buf is None or buf.size < n:
            buf = _scratch.buf = np.empty(n)
        out = buf[:n].reshape(rows, size)
    for j, a in enumerate(arrays):
        out[j] = np.ravel(a)
    return out


def combine(states: Sequence[Params], weights: Sequence[float]) -> Params:
    """Per-parameter weighted average of several model states (one float64 matrix product
    per parameter; the same arithmetic as `weighted_average`)."""
    if len(states) == 1:
        return copy_params(states[0])
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(states) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"combine: need one finite non-negative weight per state, got {w}")
    w = w / w.sum()
    # columns a product takes at once: the stack fits the reused buffer even when it averages
    # every peer of a large simulation (1,000 DNN peers' largest layer: 262 MB fresh); a
    # multiple of 64 keeps the blocks aligned as one product's columns are
    step = max(64, _SCRATCH_MAX // len(states) // 64 * 64)
    out = {}
    for k, first in states[0].items():
        flat = [np.ravel(s[k]) for s in states]
        if any(f.size != first.size for f in flat):
            raise ValueError(f"combine: parameter {k!r} differs in size between the states")
        mixed = np.empty(first.size, dtype=first.dtype)
        for c in range(0, first.size, step):
            mixed[c:c + step] = w @ stack_float64([f[c:c + step] for f in flat])
        out[k] = mixed.reshape(first.shape)
    return out


def copy_params(params: Params) -> Params:
    return {k: np.array(v, copy=True) for k, v in params.items()}


def _nodes_and_index(graph: nx.Graph) -> tuple[list, dict]:
    nodes = sorted(graph.nodes)
    for u, v in graph.edges():
        if u == v:
            raise TopologyError(f"topology has a self-loop on node {u}; mixing needs none")
    return nodes, {node: i for i, node in enumerate(nodes)}


def metropolis_weights(graph: nx.Graph) -> np.ndarray:
    """Metropolis–Hastings matrix: W_ij = 1/(1 + max(d_i, d_j)) on edges, W_ii = 1 - row sum.

    Symmetric and doubly stochastic for any undirected graph; each peer needs
    only its neighbours' degrees.
    """
    nodes, index = _nodes_and_index(graph)
    w = np.zeros((len(nodes), len(nodes)))
    for u, v in graph.edges():
        i, j = index[u], index[v]
        w[i, j] = w[j, i] = 1.0 / (1.0 + max(graph.degree[u], graph.degree[v]))
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def max_degree_weights(graph: nx.Graph) -> np.ndarray:
    """Uniform matrix: W_ij = 1/(1 + d_max) on edges, W_ii = 1 - d_i/(1 + d_max)."""
    nodes, index = _nodes_and_index(graph)
    d_max = max((d for _, d in graph.degree()), default=0)
    w = np.zeros((len(nodes), len(nodes)))
    for u, v in graph.edges():
        i, j = index[u], index[v]
        w[i, j] = w[j, i] = 1.0 / (1.0 + d_max)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def edge_weights(graph: nx.Graph) -> np.ndarray:
    """Row-stochastic matrix from the edge attribute ``weight``.

    Row i is [a_i0 .. a_in] / sum_j a_ij where a_ij is the weight of edge (i, j)
    (0 without an edge) and a_ii is the node attribute ``self_weight`` (default 1.0,
    i.e. a peer counts its own model like one unit-weight neighbour). Every edge
    must carry a positive finite weight. The result is row- but not necessarily
    column-stochastic, so X <- W X converges to a *weighted* average of the start
    unless the weights are symmetric and the row sums equal.
    """
    nodes, index = _nodes_and_index(graph)
    a = np.zeros((len(nodes), len(nodes)))
    for u, v, data in graph.edges(data=True):
        if "weight" not in data:
            raise TopologyError(f"edge {u}-{v} has no weight; mixing 'weight' needs one per edge")
        weight = _positive(data["weight"], f"edge {u}-{v} weight")
        a[index[u], index[v]] = a[index[v], index[u]] = weight
    for node, data in graph.nodes(data=True):
        self_weight = data.get("self_weight", 1.0)
        a[index[node], index[node]] = _positive(self_weight, f"node {node} self_weight")
    w = a / a.sum(axis=1, keepdims=True)
    _check_stochastic(w, axis=1)
    return w


def _positive(value: object, what: str) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TopologyError(f"{what} must be a number, got {value!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise TopologyError(f"{what} must be positive and finite, got {value!r}")
    return x


def _check_stochastic(w: np.ndarray, *, axis: int) -> None:
    """Raise ValueError unless w is square, non-negative and sums to 1 along ``axis``."""
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"mixing matrix must be square, got shape {w.shape}")
    if (w < -_ATOL).any():
        raise ValueError("mixing matrix has negative entries")
    sums = w.sum(axis=axis)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=_ATOL):
        kind = "row" if axis == 1 else "column"
        worst = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"matrix is not {kind}-stochastic: {kind} {worst} sums to {sums[worst]!r}")


MIXING_KINDS: dict[str, Callable[[nx.Graph], np.ndarray]] = {
    "metropolis": metropolis_weights,
    "maxdegree": max_degree_weights,
    "weight": edge_weights,
}


def mixing_matrix(graph: nx.Graph, kind: str = "metropolis") -> np.ndarray:
    """The (n, n) mixing matrix of ``graph`` for ``kind`` in MIXING_KINDS."""
    try:
        build = MIXING_KINDS[kind]
    except KeyError:
        known = ", ".join(MIXING_KINDS)
        raise ConfigError(f"unknown mixing {kind!r}; expected one of {known}") from None
    return build(graph)


def slem(w: np.ndarray) -> float:
    """Second largest eigenvalue modulus of a stochastic matrix (0.0 for a 1x1 matrix)."""
    w = np.asarray(w, dtype=float)
    if w.shape[0] < 2:
        return 0.0
    if np.allclose(w, w.T, rtol=0.0, atol=1e-12):
        eig = np.linalg.eigvalsh(w)
    else:
        eig = np.linalg.eigvals(w)
    moduli = np.sort(np.abs(eig))[::-1]
    return float(min(moduli[1], 1.0))


def spectral_gap(w: np.ndarray) -> float:
    """1 - SLEM: the fraction of disagreement a symmetric W removes per step, at worst."""
    return 1.0 - slem(w)


def weighted_average(arrays: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum_k w_k a_k / sum_k w_k for same-shape arrays; weights non-negative, not all zero.

    Accumulates in float64 and returns the inputs' common float dtype (float64 for ints).
    """
    if len(arrays) == 0:
        raise ValueError("weighted_average needs at least one array")
    if len(arrays) != len(weights):
        raise ValueError(f"got {len(arrays)} arrays but {len(weights)} weights")
    w = np.asarray(weights, dtype=float)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {list(weights)}")
    total = w.sum()
    if total <= 0:
        raise ValueError("weights are all zero")
    arrs = [np.asarray(a) for a in arrays]
    shape = arrs[0].shape
    for k, a in enumerate(arrs):
        if a.shape != shape:
            raise ValueError(f"array {k} has shape {a.shape}, expected {shape}")
    acc = np.zeros(shape, dtype=np.float64)
    for wk, a in zip(w, arrs, strict=True):
        if wk:
            acc += (wk / total) * a
    dtype = np.result_type(*arrs)
    return acc.astype(dtype if np.issubdtype(dtype, np.floating) else np.float64, copy=False)


def _as_rows(stacked: np.ndarray) -> np.ndarray:
    x = np.asarray(stacked)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"stacked array needs shape (n, ...) with n >= 1, got {x.shape}")
    return x.reshape(x.shape[0], -1)


def _check_square(w: np.ndarray, n: int) -> np.ndarray:
    w = np.asarray(w, dtype=float)
    if w.shape != (n, n):
        raise ValueError(f"matrix shape {w.shape} does not match {n} peers")
    return w


def mix(stacked: np.ndarray, w: np.ndarray) -> np.ndarray:
    """One synchronous consensus step X <- W X for X of shape (n, ...)."""
    x = _as_rows(stacked)
    return (_check_square(w, x.shape[0]) @ x).reshape(np.shape(stacked))


def consensus_distance(stacked: np.ndarray) -> float:
    """(1/n) sum_i ||x_i - x_bar||^2: mean squared distance of the peers from their average."""
    x = _as_rows(stacked).astype(float, copy=False)
    return float(np.mean(np.sum((x - x.mean(axis=0)) ** 2, axis=1)))


def push_sum_matrix(graph: nx.Graph) -> np.ndarray:
    """Column-stochastic P for push-sum: node i keeps and sends equal shares.

    P[j, i] = 1/(1 + outdeg(i)) for j = i and each out-neighbour j of i
    (successors of a DiGraph, neighbours of a Graph).
    """
    nodes, index = _nodes_and_index(graph)
    p = np.zeros((len(nodes), len(nodes)))
    for node in nodes:
        i = index[node]
        targets = [i, *(index[t] for t in graph.neighbors(node))]
        p[targets, i] = 1.0 / len(targets)
    return p


def push_sum_step(
    values: np.ndarray, weights: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One push-sum round: (values, weights) <- (P values, P weights); P column-stochastic.

    Both totals are preserved; ``push_sum_estimates`` gives each node's average.
    """
    x = _as_rows(values)
    wts = np.asarray(weights, dtype=float)
    if wts.shape != (x.shape[0],):
        raise ValueError(f"weights shape {wts.shape} does not match {x.shape[0]} values")
    p = _check_square(p, x.shape[0])
    _check_stochastic(p, axis=0)
    return (p @ x).reshape(np.shape(values)), p @ wts


def push_sum_estimates(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each node's estimate of the average: values / weights (row-wise)."""
    x = _as_rows(values)
    wts = np.asarray(weights, dtype=float)
    if wts.shape != (x.shape[0],) or (wts <= 0).any():
        raise ValueError("push-sum weights must be positive, one per node")
    return (x / wts[:, None]).reshape(np.shape(values))


def age_weighted_merge(
    a: np.ndarray, age_a: float, b: np.ndarray, age_b: float
) -> tuple[np.ndarray, float]:
    """Gossip-learning merge (Ormándi et al. 2013, Hegedűs et al. 2019).

    Returns ((age_a*a + age_b*b)/(age_a + age_b), max(age_a, age_b)); when both
    ages are 0 the models count equally. Ages are update counts, non-negative.
    """
    if not (math.isfinite(age_a) and math.isfinite(age_b)) or age_a < 0 or age_b < 0:
        raise ValueError(f"ages must be finite and non-negative, got {age_a!r}, {age_b!r}")
    weights = (1.0, 1.0) if age_a + age_b == 0 else (age_a, age_b)
    return weighted_average([a, b], weights), max(age_a, age_b)
