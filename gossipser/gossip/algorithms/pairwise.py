"""Pairwise (randomized) gossip (Boyd et al. 2006): pull from one random neighbour, who
answers with its model; both sides replace theirs by the mean of the two.
"""

from __future__ import annotations

from gossipser.gossip.algorithms.base import Algorithm, Outbox, register
from gossipser.gossip.mixing import combine


@register
class Pairwise(Algorithm):
    name = "pairwise"

    def outgoing(self, peer) -> Outbox:
        j = peer.random_neighbour()
        return [] if j is None else [(j, peer.message("model", op="pull"))]

    def receive(self, peer, msg) -> Outbox:
        if msg.kind != "model":
            return []
        reply = ([(msg.sender, peer.message("model", op="reply"))]
                 if msg.meta.get("op") == "pull" else [])
        peer.params = combine([peer.params, msg.params], [1.0, 1.0])
        return reply
