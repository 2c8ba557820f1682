"""Byzantine peers, for testing robust merges: which peers attack and what they send.

An attacking peer runs the same I/O-free logic as an honest one; only what leaves it changes
(`Attack.forge`), or, for labelflip, the labels it trains on. So one attack serves the
simulator (`--byzantine IDS|COUNT --attack ...`) and a networked peer
(`gossipser peer --byzantine ATTACK`).

    signflip     sends -x instead of its model x
    scale:X      sends X * x (scale:-10 flips and magnifies)
    gaussian:S   sends x plus Gaussian noise of standard deviation S on every weight
    labelflip    trains on flipped labels (class c becomes C - 1 - c) and sends honestly
    stale        keeps sending the model it started with

Only floating-point entries are forged; integer counters travel unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gossipser.errors import ConfigError
from gossipser.gossip.mixing import Params

ATTACKS = ("signflip", "scale", "gaussian", "labelflip", "stale", "silent")
ATTACK_HELP = "signflip, scale:X, gaussian:S, labelflip, stale or silent"


@dataclass(frozen=True)
class Attack:
    name: str
    arg: float | None = None

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg:g}"

    @property
    def sends(self) -> bool:
        """False for `silent`: the peer joins and takes in its neighbours' models but never
        sends one (a free rider, or a peer lost from the start). Its neighbours lose its data
        and nothing else, which makes it the reference that tells an attack's damage from
        the share of the data the attackers hold."""
        return self.name != "silent"

    def forge(self, params: Params, *, initial: Params, rng: np.random.Generator) -> Params:
        """What this attacker sends in place of `params` (its honest model of the moment)."""
        if self.name == "labelflip":
            return params
        out = {}
        for k, v in params.items():
            if not np.issubdtype(v.dtype, np.floating):
                out[k] = v
            elif self.name == "stale":
                out[k] = np.array(initial.get(k, v), copy=True)
            elif self.name == "signflip":
                out[k] = -v
            elif self.name == "scale":
                out[k] = (v * self.arg).astype(v.dtype)
            else:  # gaussian
                out[k] = (v + rng.normal(0.0, self.arg, v.shape)).astype(v.dtype)
        return out

    def flip_labels(self, y: np.ndarray, n_classes: int) -> np.ndarray:
        """The labels this attacker trains on."""
        return (n_classes - 1 - y) if self.name == "labelflip" else y


def parse_attack(spec: str | None) -> Attack | None:
    """'scale:-10' -> Attack; None or 'none' -> None; anything else is one ConfigError line."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return None
    name, _, arg = spec.strip().lower().partition(":")
    bad = ConfigError(f"attack {spec!r}: expected {ATTACK_HELP}")
    if name in ("signflip", "labelflip", "stale", "silent"):
        if arg:
            raise bad
        return Attack(name)
    if name in ("scale", "gaussian"):
        try:
            x = float(arg)
        except ValueError:
            raise bad from None
        if not math.isfinite(x) or (name == "gaussian" and x <= 0):
            raise ConfigError(f"attack {spec!r}: {name} needs a finite "
                              f"{'factor' if name == 'scale' else 'standard deviation > 0'}")
        return Attack(name, x)
    raise bad


def byzantine_ids(spec: str | None, n_peers: int, seed: int) -> frozenset[int]:
    """Which peers attack: '' -> none; 'COUNT' (one integer) -> that many, drawn from the run
    seed; 'ID,ID,...' or 'ids:ID' -> those peers. Ids must exist and leave an honest peer."""
    if spec is None or not str(spec).strip():
        return frozenset()
    text = str(spec).strip().lower()
    try:
        if text.startswith("ids:") or "," in text:
            ids = frozenset(int(s) for s in text.removeprefix("ids:").split(",") if s.strip())
        else:
            count = int(text)
            if not 0 <= count < n_peers:
                raise ConfigError(f"byzantine {spec!r}: a count from 0 to {n_peers - 1} "
                                  f"(an honest peer must remain)")
            rng = np.random.default_rng([seed, 0xB12])
            ids = frozenset(int(i) for i in rng.choice(n_peers, size=count, replace=False))
    except ValueError:
        raise ConfigError(f"byzantine {spec!r}: expected a count (2) or peer ids "
                          f"(3,7 or ids:3)") from None
    bad = sorted(i for i in ids if not 0 <= i < n_peers)
    if bad:
        raise ConfigError(f"byzantine {spec!r}: no peer {bad[0]} (peers are 0..{n_peers - 1})")
    if len(ids) >= n_peers:
        raise ConfigError(f"byzantine {spec!r}: every peer would attack; leave one honest")
    return ids

