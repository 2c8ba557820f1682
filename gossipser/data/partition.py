"""Who holds which utterances: splitting the training set over peers.

`speaker` (default): one device, one person: each peer holds the utterances of one training
speaker (speakers are grouped round-robin when there are fewer peers than speakers).
`iid`: a uniform random split. `dirichlet:ALPHA`: label skew, each class spread over peers by
Dirichlet(ALPHA) proportions. `balanced`: every peer gets the same emotion distribution.
Test speakers never belong to any peer: callers pass training indices only.
"""

from __future__ import annotations

import numpy as np

from gossipser.errors import ConfigError


def parse_partition(spec: str) -> tuple[str, float | None]:
    kind, _, arg = spec.partition(":")
    if kind in ("speaker", "iid", "balanced") and not arg:
        return kind, None
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            alpha = -1.0
        if alpha <= 0:
            raise ConfigError(f"partition {spec!r}: dirichlet needs a positive alpha, "
                              "e.g. dirichlet:0.5")
        return kind, alpha
    raise ConfigError(f"unknown partition {spec!r}; use speaker, iid, balanced or dirichlet:ALPHA")


def partition(
    spec: str, *, index: np.ndarray, labels: np.ndarray, speakers: np.ndarray, peers: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Split dataset indices `index` over `peers` peers; returns one sorted index array each."""
    kind, alpha = parse_partition(spec)
    index = np.asarray(index)
    if peers < 1:
        raise ConfigError("need at least one peer")
    if kind == "speaker":
        spk = sorted(set(speakers[index].tolist()), key=_natural)
        if peers > len(spk):
            raise ConfigError(
                f"partition speaker: {peers} peers but only {len(spk)} training speakers; "
                "use fewer peers or another partition (iid, balanced, dirichlet:A)")
        groups = [spk[i::peers] for i in range(peers)]
        parts = [index[np.isin(speakers[index], g)] for g in groups]
    elif kind == "iid":
        parts = np.array_split(rng.permutation(index), peers)
    elif kind == "balanced":
        buckets: list[list[int]] = [[] for _ in range(peers)]
        offset = 0
        for c in np.unique(labels[index]):
            members = rng.permutation(index[labels[index] == c])
            for k, i in enumerate(members):
                buckets[(k + offset) % peers].append(int(i))
            offset += len(members)
        parts = [np.array(b, dtype=np.int64) for b in buckets]
    else:
        buckets = [[] for _ in range(peers)]
        for c in np.unique(labels[index]):
            members = rng.permutation(index[labels[index] == c])
            share = rng.dirichlet(np.full(peers, alpha))
            cuts = (np.cumsum(share)[:-1] * len(members)).astype(int)
            for p, chunk in enumerate(np.split(members, cuts)):
                buckets[p].extend(int(i) for i in chunk)
        parts = [np.array(b, dtype=np.int64) for b in buckets]
    parts = [np.sort(p).astype(np.int64) for p in parts]
    empty = [i for i, p in enumerate(parts) if len(p) < 2]
    if empty:
        raise ConfigError(f"partition {spec}: peer(s) {empty[:5]} get fewer than 2 utterances; "
                          "use fewer peers or a larger alpha")
    return parts


def _natural(s: str) -> tuple[int, int, str]:
    return (0, int(s), s) if s.isdigit() else (1, 0, s)
