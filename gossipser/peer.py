"""Peers as plain logic with no I/O: asked what to send, told what arrived, answer in messages.

The simulator and the network runtimes only deliver `Message`s between these objects, so a
simulated peer and a networked peer run exactly this code. Training happens outside: a peer
hands out the parameters to train from (`train_from`) and takes the result back (`trained`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gossipser.errors import ConfigError
from gossipser.mixing import age_weighted_merge
from gossipser.wire import SERVER_ID, Message

Params = dict[str, np.ndarray]
Outbox = list[tuple[int, Message]]  # (destination peer id, message)

ALGORITHMS = ("dpsgd", "pairwise", "gossip-learning", "push-sum", "local", "fedavg")


def combine(states: Sequence[Params], weights: Sequence[float]) -> Params:
    """Per-parameter weighted average of several model states (one float64 matrix product
    per parameter; the same arithmetic as mixing.weighted_average)."""
    if len(states) == 1:
        return copy_params(states[0])
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(states) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"combine: need one finite non-negative weight per state, got {w}")
    w = w / w.sum()
    out = {}
    for k, first in states[0].items():
        stacked = np.stack([np.ravel(s[k]) for s in states]).astype(np.float64)
        out[k] = (w @ stacked).astype(first.dtype).reshape(first.shape)
    return out


def copy_params(params: Params) -> Params:
    return {k: np.array(v, copy=True) for k, v in params.items()}


class Peer:
    """One device. `mix_row` holds its row of the mixing matrix (self and neighbours)."""

    def __init__(
        self, *, pid: int, neighbours: Sequence[int], algorithm: str, params: Params,
        samples: int, run: str, rng: np.random.Generator,
        mix_row: dict[int, float] | None = None,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}")
        if algorithm == "dpsgd" and pid not in (mix_row or {}):
            raise ConfigError(f"peer {pid}: dpsgd needs its row of the mixing matrix")
        self.pid = pid
        self.neighbours = tuple(sorted(neighbours))
        self.algorithm = algorithm
        self.params = copy_params(params)
        self.samples = samples
        self.run = run
        self.rng = rng
        self.mix_row = mix_row or {}
        self.age = 0.0  # local updates this model has seen (gossip learning)
        self.weight = 1.0  # push-sum mass
        self.selected = False  # FedAvg: the server asked this client to train this round
        # synchronous algorithms: arrivals by round, then sender (a fast neighbour may already
        # be one round ahead of us on a network)
        self.inbox: dict[int, dict[int, Message]] = {}
        self.round = 0

    def begin_round(self, round_: int) -> None:
        self.round = round_
        for r in [r for r in self.inbox if r < round_]:
            del self.inbox[r]

    def missing(self) -> set[int]:
        """Neighbours whose message for the current round has not arrived (synchronous mode)."""
        if self.algorithm not in ("dpsgd", "push-sum"):
            return set()
        return set(self.neighbours) - set(self.inbox.get(self.round, {}))

    # training hand-off -------------------------------------------------------------------
    def train_from(self) -> Params:
        """Parameters local training should start from (push-sum: the de-biased estimate)."""
        return self.params

    def trained(self, params: Params, steps: int) -> None:
        self.params = params
        self.age += steps

    # who: choosing the destinations ------------------------------------------------------
    def _random_neighbour(self) -> int | None:
        if not self.neighbours:
            return None
        return int(self.neighbours[self.rng.integers(len(self.neighbours))])

    def _message(self, kind: str, *, age: float | None = None, **meta) -> Message:
        return Message(kind=kind, run=self.run, sender=self.pid, round=self.round,
                       age=self.age if age is None else age, samples=self.samples,
                       params=self.params, meta=meta)

    def outgoing(self) -> Outbox:
        """Messages to send after local training in the current round."""
        a = self.algorithm
        if a == "local":
            return []
        if a == "fedavg":
            was, self.selected = self.selected, False
            return [(SERVER_ID, self._message("fedavg_update"))] if was else []
        if a == "dpsgd":
            return [(j, self._message("model")) for j in self.neighbours]
        if a == "push-sum":
            share = self.weight / (len(self.neighbours) + 1)
            return [(j, self._message("push_sum", age=share)) for j in self.neighbours]
        j = self._random_neighbour()
        if j is None:
            return []
        op = "pull" if a == "pairwise" else "push"
        return [(j, self._message("model", op=op))]

    # how: merging what arrives -----------------------------------------------------------
    def receive(self, msg: Message) -> Outbox:
        """Take in one message; returns replies (pairwise gossip answers a pull)."""
        kind, a = msg.kind, self.algorithm
        if kind == "fedavg_global" and a == "fedavg":
            if msg.sender == SERVER_ID and msg.round >= self.round:
                self.params = copy_params(msg.params)
                self.round = msg.round
                self.selected = bool(msg.meta.get("train", 0))
            return []
        if kind == "push_sum" and a == "push-sum" or kind == "model" and a == "dpsgd":
            # late messages of an earlier round are ignored; a bounded look-ahead is kept
            if self.round <= msg.round <= self.round + 2 and msg.sender in self.neighbours:
                self.inbox.setdefault(msg.round, {})[msg.sender] = msg
            return []
        if kind == "model" and a == "gossip-learning":
            self.params = _merge_aged(self.params, self.age, msg.params, msg.age)
            self.age = max(self.age, msg.age)
            return []
        if kind == "model" and a == "pairwise":
            reply = [] if msg.meta.get("op") != "pull" else [
                (msg.sender, self._message("model", op="reply"))]
            self.params = combine([self.params, msg.params], [1.0, 1.0])
            return reply
        return []

    def end_round(self) -> None:
        """Synchronous algorithms mix what arrived; a missing neighbour's weight stays home."""
        inbox = self.inbox.pop(self.round, {})
        if self.algorithm == "dpsgd":
            own = self.mix_row.get(self.pid, 0.0) + sum(
                w for j, w in self.mix_row.items() if j != self.pid and j not in inbox)
            senders = sorted(inbox)
            self.params = combine(
                [self.params] + [inbox[j].params for j in senders],
                [own] + [self.mix_row[j] for j in senders],
            )
        elif self.algorithm == "push-sum":
            keep = self.weight / (len(self.neighbours) + 1)
            senders = sorted(inbox)
            masses = [keep] + [inbox[j].age for j in senders]
            # y = sum_j w_j z_j; the new estimate is y / sum_j w_j
            self.params = combine([self.params] + [inbox[j].params for j in senders], masses)
            self.weight = float(sum(masses))


def _merge_aged(a: Params, age_a: float, b: Params, age_b: float) -> Params:
    return {k: age_weighted_merge(a[k], age_a, b[k], age_b)[0] for k in a}


class FedAvgServer:
    """The aggregation server of FedAvg (the centralized federated comparison)."""

    def __init__(
        self, *, clients: Sequence[int], params: Params, run: str, fraction: float,
        rng: np.random.Generator,
    ) -> None:
        if not 0.0 < fraction <= 1.0:
            raise ConfigError("fedavg fraction must be in (0, 1]")
        self.clients = tuple(sorted(clients))
        self.params = copy_params(params)
        self.run = run
        self.fraction = fraction
        self.rng = rng
        self.updates: dict[int, Message] = {}
        self.round = 0

    def select(self, round_: int) -> list[int]:
        """Clients asked to train this round (a random fraction, at least one)."""
        k = max(1, int(round(self.fraction * len(self.clients))))
        if k >= len(self.clients):
            return list(self.clients)
        return sorted(int(c) for c in self.rng.choice(self.clients, size=k, replace=False))

    def start_round(self, round_: int) -> Outbox:
        """Send the global model to every client; the selected ones are asked to train."""
        self.round = round_
        self.updates.clear()
        chosen = set(self.select(round_))
        return [(c, Message(kind="fedavg_global", run=self.run, sender=SERVER_ID, round=round_,
                            params=self.params, meta={"train": int(c in chosen)}))
                for c in self.clients]

    def receive(self, msg: Message) -> None:
        if msg.kind == "fedavg_update" and msg.round == self.round and msg.sender in self.clients:
            self.updates[msg.sender] = msg

    def end_round(self) -> None:
        """Average the round's updates weighted by sample count (no update: keep the model)."""
        if self.updates:
            senders = sorted(self.updates)
            self.params = combine([self.updates[c].params for c in senders],
                                  [max(self.updates[c].samples, 1) for c in senders])
        self.updates.clear()
