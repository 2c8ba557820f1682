"""Push-sum (Kempe et al. 2003): a peer splits its mass equally between itself and its
neighbours each round; the model estimate is the mass-weighted sum of what arrived.

With no round barrier (the virtual clock's asynchronous mode) the same masses work message by
message: a peer keeps its share when it sends, and folds each arrival in as it comes
(estimate and mass both), so mass is conserved and nobody waits.
"""

from __future__ import annotations

from gossipser.gossip.algorithms.base import Algorithm, Outbox, register
from gossipser.gossip.mixing import combine


@register
class PushSum(Algorithm):
    name = "push-sum"
    synchronous = True
    buffered_kind = "push_sum"
    barrier_free = True

    def __init__(self) -> None:
        self.weight = 1.0  # the peer's push-sum mass

    def outgoing(self, peer) -> Outbox:
        share = self.weight / (len(peer.neighbours) + 1)
        if not peer.barrier:  # what it keeps; with a barrier end_round takes it
            self.weight = share
        # the share travels in the message's age field
        return [(j, peer.message("push_sum", age=share)) for j in peer.neighbours]

    def receive(self, peer, msg) -> Outbox:
        """No barrier: fold one arrival in at once."""
        if msg.kind == "push_sum" and msg.sender in peer.neighbours and msg.age > 0:
            peer.params = combine([peer.params, msg.params], [self.weight, msg.age])
            self.weight += float(msg.age)
        return []

    def end_round(self, peer, inbox) -> None:
        keep = self.weight / (len(peer.neighbours) + 1)
        senders = sorted(inbox)
        masses = [keep] + [inbox[j].age for j in senders]
        # y = sum_j w_j z_j; the new estimate is y / sum_j w_j
        peer.params = combine([peer.params] + [inbox[j].params for j in senders], masses)
        self.weight = float(sum(masses))

    def state(self) -> dict[str, float]:
        return {"weight": self.weight}

    def restore(self, state: dict) -> None:
        self.weight = float(state.get("weight", 1.0))
