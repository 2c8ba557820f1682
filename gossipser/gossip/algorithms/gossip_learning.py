"""Gossip learning (Ormándi et al. 2013): push the model to one random neighbour; a receiver
merges it with its own, weighted by how many local updates each has seen (age).
"""

from __future__ import annotations

from gossipser.gossip.algorithms.base import Algorithm, Outbox, register
from gossipser.gossip.mixing import age_weighted_merge


@register
class GossipLearning(Algorithm):
    name = "gossip-learning"

    def outgoing(self, peer) -> Outbox:
        j = peer.random_neighbour()
        return [] if j is None else [(j, peer.message("model", op="push"))]

    def receive(self, peer, msg) -> Outbox:
        if msg.kind == "model":
            peer.params = {k: age_weighted_merge(peer.params[k], peer.age, msg.params[k],
                                                 msg.age)[0] for k in peer.params}
            peer.age = max(peer.age, msg.age)
        return []
