"""A peer as plain logic with no I/O: asked what to send, told what arrived, answers in messages.

The simulator and the network runtimes only deliver `Message`s between these objects, so a
simulated peer and a networked peer run exactly this code. Training happens outside: a peer
hands out the parameters to train from (`train_from`) and takes the result back (`trained`).
What the peer sends and how it merges is its algorithm's (`gossipser.gossip.algorithms`).
Private layers (`gossipser.gossip.private`) are cut from every message the peer sends and
restored after every merge, whatever the algorithm, so they never leave and are never mixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gossipser.gossip.algorithms import Outbox, make_algorithm
from gossipser.gossip.byzantine import Attack
from gossipser.gossip.message import Message
from gossipser.gossip.mixing import Params, combine, copy_params
from gossipser.gossip.private import public
from gossipser.gossip.robust import RobustRule, merge_params

_LOOK_AHEAD = 2  # rounds a fast neighbour's message may be ahead of ours and still be kept


class Peer:
    """One device. `mix_row` holds its row of the mixing matrix (self and neighbours)."""

    def __init__(
        self, *, pid: int, neighbours: Sequence[int], algorithm: str, params: Params,
        samples: int, run: str, rng: np.random.Generator,
        mix_row: dict[int, float] | None = None, private: frozenset[str] = frozenset(),
        robust: RobustRule | None = None, attack: Attack | None = None,
    ) -> None:
        self.pid = pid
        self.neighbours = tuple(sorted(neighbours))
        self.algorithm = algorithm
        self.strategy = make_algorithm(algorithm)
        self.params = copy_params(params)
        self.samples = samples
        self.run = run
        self.rng = rng
        self.mix_row = mix_row or {}
        self.private = frozenset(private)  # parameter names that never leave this peer
        missing = self.private - set(params)
        if missing:
            raise ValueError(f"peer {pid}: private parameters {sorted(missing)} not in the model")
        self.robust = robust  # a Byzantine-robust merge rule in place of the weighted average
        self.attack = attack  # this peer is Byzantine: what it sends is forged
        self._initial = copy_params(params) if attack is not None else {}
        self.age = 0.0  # local updates this model has seen
        # synchronous algorithms: arrivals by round, then sender (a fast neighbour may already
        # be one round ahead of us on a network)
        self.inbox: dict[int, dict[int, Message]] = {}
        self.round = 0
        # False: a synchronous algorithm that can run without its round barrier does (the
        # virtual clock's asynchronous mode): its messages are taken in as they arrive
        self.barrier = True
        self.strategy.check(self)

    def begin_round(self, round_: int) -> None:
        self.round = round_
        for r in [r for r in self.inbox if r < round_]:
            del self.inbox[r]

    def missing(self) -> set[int]:
        """Neighbours whose message for the current round has not arrived (synchronous mode)."""
        if not self.strategy.synchronous or not self.barrier:
            return set()
        return set(self.neighbours) - set(self.inbox.get(self.round, {}))

    # training hand-off -------------------------------------------------------------------
    def wants_training(self) -> bool:
        """Whether this peer trains in the current round (FedAvg: only when selected)."""
        return self.strategy.wants_training(self)

    def train_from(self) -> Params:
        """Parameters local training should start from."""
        return self.strategy.train_from(self)

    def trained(self, params: Params, steps: int) -> None:
        before, self.params = self.params, params
        self.age += steps
        self.strategy.after_training(self, before)

    # helpers for strategies ----------------------------------------------------------------
    def random_neighbour(self) -> int | None:
        if not self.neighbours:
            return None
        return int(self.neighbours[self.rng.integers(len(self.neighbours))])

    def message(self, kind: str, *, age: float | None = None, **meta) -> Message:
        """A message from this peer carrying its current parameters."""
        return Message(kind=kind, run=self.run, sender=self.pid, round=self.round,
                       age=self.age if age is None else age, samples=self.samples,
                       params=self.params, meta=meta)

    def merge(self, states: Sequence[Params], weights: Sequence[float]) -> Params:
        """Merge models (states[0]: this peer's own) by the weights, or by the robust rule."""
        if self.robust is None:
            return combine(states, weights)
        return merge_params(self.robust, states, weights)

    # the exchange ------------------------------------------------------------------------
    def outgoing(self) -> Outbox:
        """Messages to send after local training in the current round."""
        return self._public(self._forged(self.strategy.outgoing(self)))

    def receive(self, msg: Message) -> Outbox:
        """Take in one message; returns replies (pairwise gossip answers a pull)."""
        s = self.strategy
        if s.synchronous and self.barrier and msg.kind == s.buffered_kind:
            # late messages of an earlier round are ignored; a bounded look-ahead is kept
            if (self.round <= msg.round <= self.round + _LOOK_AHEAD
                    and msg.sender in self.neighbours):
                self.inbox.setdefault(msg.round, {})[msg.sender] = msg
            return []
        kept = self._kept()
        replies = s.receive(self, self._completed(msg))
        self._restore(kept)
        return self._public(self._forged(replies))

    def end_round(self) -> None:
        """Synchronous algorithms mix what arrived; a missing neighbour's weight stays home.
        Without a barrier every message was taken in as it arrived: nothing is left to mix."""
        if not self.barrier:
            self.inbox.pop(self.round, None)
            return
        kept = self._kept()
        inbox = {j: self._completed(m) for j, m in self.inbox.pop(self.round, {}).items()}
        self.strategy.end_round(self, inbox)
        self._restore(kept)

    def _forged(self, outbox: Outbox) -> Outbox:
        """A Byzantine peer's messages carry its attack's model instead of its own."""
        if self.attack is None:
            return outbox
        if not self.attack.sends:
            return []
        return [(j, dataclasses.replace(m, params=self.attack.forge(
                    m.params, initial=self._initial, rng=self.rng)) if m.params else m)
                for j, m in outbox]

    # private layers ------------------------------------------------------------------------
    def _public(self, outbox: Outbox) -> Outbox:
        if not self.private:
            return outbox
        return [(j, dataclasses.replace(m, params=public(m.params, self.private)))
                for j, m in outbox]

    def _completed(self, msg: Message) -> Message:
        """`msg` with the private entries it lacks filled from this peer's own (placeholders
        that let any strategy merge; `_restore` puts the real values back afterwards)."""
        if not self.private or not msg.params:
            return msg
        own = self.strategy.message_params(self.params)
        fill = {k: v for k, v in own.items() if k not in msg.params}
        return dataclasses.replace(msg, params={**msg.params, **fill}) if fill else msg

    def _kept(self) -> Params:
        return {k: self.params[k] for k in self.private}

    def _restore(self, kept: Params) -> None:
        if kept:
            self.params = {**self.params, **kept}

    # checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, float]:
        """What a checkpoint keeps besides the parameters."""
        return {"age": self.age, **self.strategy.state()}

    def restore(self, state: dict) -> None:
        self.age = float(state.get("age", 0.0))
        self.strategy.restore(state)
