"""The strategy protocol every gossip algorithm implements, and the registry of names.

A `Peer` keeps identity, parameters and inbox; its `Algorithm` decides what is sent after
local training, how an arriving message is taken in, and what happens at the end of a round.
A synchronous algorithm's messages are buffered by round and handed to `end_round`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from gossipser.errors import ConfigError
from gossipser.gossip.message import Message
from gossipser.gossip.mixing import Params

if TYPE_CHECKING:
    from gossipser.gossip.peer import Peer

Outbox = list[tuple[int, Message]]  # (destination peer id, message)

REGISTRY: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator: make `cls` available under `cls.name`."""
    if cls.name in REGISTRY:
        raise ValueError(f"algorithm {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


class Algorithm:
    """Defaults: asynchronous, sends nothing, ignores what arrives, trains every round."""

    name: ClassVar[str]
    synchronous: ClassVar[bool] = False
    buffered_kind: ClassVar[str | None] = None  # synchronous: the message kind kept by round
    uses_topology: ClassVar[bool] = True  # FedAvg clients talk to the server only
    uses_mixing: ClassVar[bool] = False  # needs the peer's row of the mixing matrix
    supports_robust: ClassVar[bool] = False  # merges through Peer.merge (a robust rule)
    # a synchronous algorithm that can also run with no round barrier (virtual clock): its
    # buffered messages then go to `receive` as they arrive
    barrier_free: ClassVar[bool] = False

    def check(self, peer: Peer) -> None:
        """Raise ConfigError when `peer` lacks what this algorithm needs."""
        if self.uses_mixing and peer.pid not in peer.mix_row:
            raise ConfigError(f"peer {peer.pid}: {self.name} needs its row of the mixing matrix")

    def train_from(self, peer: Peer) -> Params:
        """Parameters local training should start from."""
        return peer.params

    def after_training(self, peer: Peer, before: Params) -> None:
        """Called when local training replaced `before` by `peer.params` this round."""

    def message_params(self, params: Params) -> Params:
        """What one of this algorithm's model messages carries, given a model state (the
        networked node checks every frame against it)."""
        return params

    def wants_training(self, peer: Peer) -> bool:
        """Whether the peer trains in the current round."""
        return True

    def outgoing(self, peer: Peer) -> Outbox:
        """Messages to send after local training in the current round."""
        return []

    def receive(self, peer: Peer, msg: Message) -> Outbox:
        """Take in one message that is not buffered; returns replies."""
        return []

    def end_round(self, peer: Peer, inbox: dict[int, Message]) -> None:
        """Synchronous algorithms mix what arrived this round (sender -> message)."""

    def state(self) -> dict[str, float]:
        """Per-peer numbers a checkpoint must keep (restored by `restore`)."""
        return {}

    def restore(self, state: dict) -> None:
        """Take back what `state` returned."""
