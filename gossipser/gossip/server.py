"""The aggregation server of FedAvg: the centralized federated comparison, kept apart from
the peers (its clients are `gossipser.gossip.algorithms.fedavg`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gossipser.errors import ConfigError
from gossipser.gossip.algorithms import Outbox
from gossipser.gossip.message import SERVER_ID, Message
from gossipser.gossip.mixing import Params, combine, copy_params


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
