"""Push-sum (Kempe et al. 2003): a peer splits its mass equally between itself and its
neighbours each round; the model estimate is the mass-weighted sum of what arrived.
"""

from __future__ import annotations

from gossipser.gossip.algorithms.base import Algorithm, Outbox, register
from gossipser.gossip.mixing import combine


@register
class PushSum(Algorithm):
    name = "push-sum"
    synchronous = True
    buffered_kind = "push_sum"

    def __init__(self) -> None:
        self.weight = 1.0  # the peer's push-sum mass

    def outgoing(self, peer) -> Outbox:
        share = self.weight / (len(peer.neighbours) + 1)
        # the share travels in the message's age field
        return [(j, peer.message("push_sum", age=share)) for j in peer.neighbours]

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
