"""Replay protection for networked nodes (`gossipser.net.node`, which also checks sessions).

Every frame a node sends carries `seq`, a per-sender number that only grows and follows the
wall clock (microseconds since the epoch, or one more than the last when the clock has not
moved), inside the authenticated part of the frame. A receiver keeps, per sender, the
numbers seen within `REPLAY_WINDOW_US` of the highest (frames of one sender may overtake
each other by that much) and drops a number seen before, one below that window, or one older
than `max_frame_age` seconds (a frame recorded in an earlier run). The highest number per
sender is kept across a checkpoint, so a restarted peer cannot be fed old frames.
"""

from __future__ import annotations

import time

REPLAY_WINDOW_US = 30_000_000  # how far (in sequence numbers: microseconds) frames may reorder


class ReplayGuard:
    """Per-sender sequence numbers: `check` says why a number must be dropped, or None."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_us = int(max_age_s * 1e6)
        self.highest: dict[int, int] = {}
        self.seen: dict[int, set[int]] = {}
        self.floor: dict[int, int] = {}  # restored from a checkpoint: nothing at or below

    def check(self, sender: int, seq: object, now_us: int) -> str | None:
        if type(seq) is not int:
            return "no sequence number"
        high = self.highest.get(sender)
        seen = self.seen.setdefault(sender, set())
        if seq in seen or seq <= self.floor.get(sender, -1):
            return "replayed"
        if seq < now_us - self.max_age_us:
            return "stale"
        if high is not None and seq <= high - REPLAY_WINDOW_US:
            return "replayed"
        seen.add(seq)
        if high is None or seq > high:
            self.highest[sender] = seq
            cut = seq - REPLAY_WINDOW_US
            if len(seen) > 64:
                self.seen[sender] = {s for s in seen if s > cut}
        return None

    def state(self) -> dict[str, int]:
        """What a checkpoint keeps: the highest number per sender."""
        return {str(k): v for k, v in self.highest.items()}

    def restore(self, state: dict) -> None:
        for k, v in state.items():
            self.floor[int(k)] = int(v)
            self.highest[int(k)] = max(self.highest.get(int(k), 0), int(v))


def now_us() -> int:
    return time.time_ns() // 1000
