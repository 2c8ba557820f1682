"""D-PSGD (Lian et al. 2017): every round, send the model to all neighbours and replace it
by the mixing-matrix-weighted average of what arrived; a missing neighbour's weight stays home.
With a robust rule (`gossipser.gossip.robust`) the peer merges its own model and what arrived
by that rule instead.
"""

from __future__ import annotations

from gossipser.gossip.algorithms.base import Algorithm, Outbox, register


@register
class DPSGD(Algorithm):
    name = "dpsgd"
    synchronous = True
    buffered_kind = "model"
    uses_mixing = True
    supports_robust = True

    def outgoing(self, peer) -> Outbox:
        msg = peer.message("model")  # one immutable message for every neighbour
        return [(j, msg) for j in peer.neighbours]

    def end_round(self, peer, inbox) -> None:
        row = peer.mix_row
        own = row.get(peer.pid, 0.0) + sum(
            w for j, w in row.items() if j != peer.pid and j not in inbox)
        senders = sorted(inbox)
        peer.params = peer.merge([peer.params] + [inbox[j].params for j in senders],
                              [own] + [row[j] for j in senders])
