"""Gossip learning (Ormándi et al. 2013): push the model to one random neighbour; a receiver
merges it with its own, weighted by how many local updates each has seen (age).

With a robust rule, a peer keeps the last model heard from each neighbour and merges its own
with all of them by the rule on every arrival (one model against one cannot be outvoted); its
age becomes the median of the ages merged, so a forged age cannot claim the network's history.
"""

from __future__ import annotations

import numpy as np

from gossipser.gossip.algorithms.base import Algorithm, Outbox, register
from gossipser.gossip.mixing import Params, age_weighted_merge


@register
class GossipLearning(Algorithm):
    name = "gossip-learning"
    supports_robust = True

    def __init__(self) -> None:
        self.heard: dict[int, tuple[Params, float]] = {}  # robust: last model per neighbour

    def outgoing(self, peer) -> Outbox:
        j = peer.random_neighbour()
        return [] if j is None else [(j, peer.message("model", op="push"))]

    def receive(self, peer, msg) -> Outbox:
        if msg.kind == "model" and peer.robust is not None:
            if msg.sender in peer.neighbours:
                self.heard[msg.sender] = (msg.params, msg.age)
                heard = [self.heard[j] for j in sorted(self.heard)]
                peer.params = peer.merge([peer.params] + [p for p, _ in heard],
                                         [1.0] * (1 + len(heard)))
                peer.age = float(np.median([peer.age] + [a for _, a in heard]))
        elif msg.kind == "model":
            peer.params = {k: age_weighted_merge(peer.params[k], peer.age, msg.params[k],
                                                 msg.age)[0] for k in peer.params}
            peer.age = max(peer.age, msg.age)
        return []
