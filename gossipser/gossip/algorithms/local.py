"""Local training only: no messages (the lower bound every gossip run is compared with)."""

from __future__ import annotations

from gossipser.gossip.algorithms.base import Algorithm, register


@register
class Local(Algorithm):
    name = "local"
