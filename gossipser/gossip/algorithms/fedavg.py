"""FedAvg client (McMahan et al. 2017): take the server's global model each round, train when
selected, send the update back. The server itself is `gossipser.gossip.server.FedAvgServer`.
"""

from __future__ import annotations

from gossipser.gossip.algorithms.base import Algorithm, Outbox, register
from gossipser.gossip.message import SERVER_ID
from gossipser.gossip.mixing import copy_params


@register
class FedAvgClient(Algorithm):
    name = "fedavg"
    uses_topology = False

    def __init__(self) -> None:
        self.selected = False  # the server asked this client to train this round

    def wants_training(self, peer) -> bool:
        return self.selected

    def outgoing(self, peer) -> Outbox:
        was, self.selected = self.selected, False
        return [(SERVER_ID, peer.message("fedavg_update"))] if was else []

    def receive(self, peer, msg) -> Outbox:
        if msg.kind == "fedavg_global" and msg.sender == SERVER_ID and msg.round >= peer.round:
            peer.params = copy_params(msg.params)
            peer.round = msg.round
            self.selected = bool(msg.meta.get("train", 0))
        return []
