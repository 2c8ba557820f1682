"""Typed events the engines emit; the metrics writer and the displays subscribe.

The engine never prints: it calls each listener with each event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunStarted:
    info: dict


@dataclass(frozen=True)
class PeerStatus:
    peer: int
    online: bool
    ua: float | None  # None when the round was not evaluated
    loss: float | None  # None when the peer did not train this round
    distance: float  # squared distance of its parameters to the peers' mean
    bytes_sent: int  # cumulative


@dataclass(frozen=True)
class RoundFinished:
    round: int
    rounds: int
    row: dict  # the metrics.csv row (evaluation columns empty when not evaluated)
    peers: tuple[PeerStatus, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class RunFinished:
    summary: dict


Event = RunStarted | RoundFinished | RunFinished
Listener = Callable[[Event], None]
