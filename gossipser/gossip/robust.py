"""Byzantine-robust merges: what a peer does instead of a weighted average when some of the
models it receives may be malicious. Pure numpy, no I/O.

Each rule takes a *stacked* array (one row per model, the peer's own model in row 0) and
returns one merged row:

    trimmed-mean:K   coordinate-wise: drop the K largest and K smallest values, average the
                     rest (Yin et al. 2018); tolerates K bad rows out of more than 2K
    median           coordinate-wise median (Yin et al. 2018)
    krum:F           Multi-Krum (Blanchard et al. 2017; El Mhamdi et al. 2018): score each row
                     by its summed squared distance to its n - F - 2 nearest rows, average the
                     n - F best-scored rows; tolerates F bad rows when n > 2F + 2
    clip:TAU         ClippedGossip (He, Karimireddy & Jaggi 2022): x_own + sum_j w_j
                     CLIP(x_j - x_own, TAU), where CLIP scales a difference down to norm TAU;
                     clip:auto takes TAU per merge as the lower median of the neighbours'
                     distances (an honest neighbour's distance while at most half attack),
                     and leaves out a neighbour farther than REJECT x TAU (its weight stays
                     home, as for a lost message): a crude attacker (sign flip, scaling)
                     then has no pull at all, instead of TAU x its weight every round, and
                     one that keeps within the bound has no more pull than under the clip

When fewer rows arrive than a rule needs (a neighbour's message was lost), the rule does what
the rows allow: K and F shrink to the largest value that still leaves an honest majority.
The distances that clip, krum and trimming see are over the whole flattened model, so a
merge is one rule applied to every parameter together (`merge_params`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gossipser.errors import ConfigError
from gossipser.gossip.mixing import Params

RULES = ("trimmed-mean", "median", "krum", "clip")
REJECT = 4.0  # clip:auto: a neighbour farther than this many radii is left out
SPEC_HELP = "none, trimmed-mean:K, median, krum:F, clip:TAU or clip:auto"


@dataclass(frozen=True)
class RobustRule:
    """A parsed `--robust` spec; `arg` is K, F or TAU (None: median, or clip:auto)."""

    name: str
    arg: float | None = None

    def __str__(self) -> str:
        if self.name == "median":
            return "median"
        if self.name == "clip" and self.arg is None:
            return "clip:auto"
        return f"{self.name}:{self.arg:g}"

    def apply(self, stacked: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
        """Merge the rows of `stacked` (row 0: the peer's own model)."""
        if self.name == "trimmed-mean":
            return trimmed_mean(stacked, int(self.arg))
        if self.name == "median":
            return coordinate_median(stacked)
        if self.name == "krum":
            return multi_krum(stacked, int(self.arg))
        return clipped_gossip(stacked, weights, self.arg)


def parse_robust(spec: str | None) -> RobustRule | None:
    """'trimmed-mean:1' -> RobustRule; 'none', '' or None -> None; anything else is one
    ConfigError line that lists the forms."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    name, _, arg = spec.strip().lower().partition(":")
    bad = ConfigError(f"robust merge {spec!r}: expected {SPEC_HELP}")
    if name == "median":
        if arg:
            raise bad
        return RobustRule("median")
    if name in ("trimmed-mean", "krum"):
        try:
            k = int(arg)
        except ValueError:
            raise bad from None
        if k < 1:
            raise ConfigError(f"robust merge {spec!r}: {name} needs a count >= 1")
        return RobustRule(name, float(k))
    if name == "clip":
        if arg == "auto":
            return RobustRule("clip")
        try:
            tau = float(arg)
        except ValueError:
            raise bad from None
        if not (math.isfinite(tau) and tau > 0):
            raise ConfigError(f"robust merge {spec!r}: clip needs a radius > 0 or auto")
        return RobustRule("clip", tau)
    raise bad


def _rows(stacked: np.ndarray) -> np.ndarray:
    x = np.asarray(stacked, dtype=np.float64)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"robust merge needs at least one row, got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def trimmed_mean(stacked: np.ndarray, k: int) -> np.ndarray:
    """Coordinate-wise mean after dropping the k largest and k smallest values (k shrinks to
    (n - 1) // 2 when fewer than 2k + 1 rows arrived)."""
    x = _rows(stacked)
    n = x.shape[0]
    k = min(int(k), (n - 1) // 2)
    if k < 0:
        raise ValueError("trimmed_mean: k >= 0")
    s = np.sort(x, axis=0)
    return s[k:n - k].mean(axis=0).reshape(np.shape(stacked)[1:])


def coordinate_median(stacked: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of the rows."""
    return np.median(_rows(stacked), axis=0).reshape(np.shape(stacked)[1:])


def krum_scores(stacked: np.ndarray, f: int) -> np.ndarray:
    """Each row's summed squared distance to its n - f - 2 nearest other rows (at least 1)."""
    x = _rows(stacked)
    n = x.shape[0]
    sq = np.sum(x * x, axis=1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d, np.inf)
    m = max(1, min(n - 1, n - int(f) - 2))
    return np.sort(d, axis=1)[:, :m].sum(axis=1) if n > 1 else np.zeros(1)


def multi_krum(stacked: np.ndarray, f: int) -> np.ndarray:
    """Average of the n - f rows with the lowest Krum scores (f shrinks so that at least one
    row, and an honest majority of the rows, is kept)."""
    x = _rows(stacked)
    n = x.shape[0]
    f = min(int(f), (n - 1) // 2)
    keep = np.argsort(krum_scores(x, f), kind="stable")[:n - f]
    return x[np.sort(keep)].mean(axis=0).reshape(np.shape(stacked)[1:])


def clip_to(z: np.ndarray, tau: float, norm: float | None = None) -> np.ndarray:
    """z scaled down to Euclidean norm tau when it is longer (unchanged otherwise); `norm`:
    z's norm when the caller has it already."""
    norm = float(np.linalg.norm(z)) if norm is None else norm
    return z if norm <= tau or norm == 0.0 else z * (tau / norm)


def clipped_gossip(stacked: np.ndarray, weights: Sequence[float] | None,
                   tau: float | None) -> np.ndarray:
    """x_0 + sum_{j>0} w_j CLIP(x_j - x_0, tau), w normalised to sum to 1 over all rows (row 0
    keeps its own share); tau None: the lower median of the distances ||x_j - x_0||, and a
    row farther than REJECT x tau contributes nothing (its share stays with row 0)."""
    x = _rows(stacked)
    n = x.shape[0]
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"clipped_gossip: need one non-negative weight per row, got {w}")
    w = w / w.sum()
    diffs = x[1:] - x[0]
    dist = np.linalg.norm(diffs, axis=1)
    limit = math.inf
    if tau is None:  # the lower median: an honest neighbour's distance while at most half
        tau = float(np.sort(dist)[(len(dist) - 1) // 2]) if n > 1 else 0.0  # of them attack
        limit = REJECT * tau
    out = x[0].copy()
    for wj, z, d in zip(w[1:], diffs, dist, strict=True):
        if d <= limit:
            out += wj * clip_to(z, tau, float(d))
    return out.reshape(np.shape(stacked)[1:])


def merge_params(rule: RobustRule, states: Sequence[Params],
                 weights: Sequence[float] | None = None) -> Params:
    """Apply `rule` to whole models (states[0]: the peer's own), parameter order kept; each
    parameter's slice of the merged row, in its own dtype and shape."""
    names = list(states[0])
    flat = np.stack([np.concatenate([np.ravel(s[k]).astype(np.float64) for k in names])
                     for s in states])
    merged = rule.apply(flat, weights)
    out, at = {}, 0
    for k in names:
        ref = states[0][k]
        out[k] = merged[at:at + ref.size].astype(ref.dtype).reshape(ref.shape)
        at += ref.size
    return out
