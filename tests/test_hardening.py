"""A networked peer's defences on literal inputs: replay protection, the round look-ahead,
and checkpoints that survive damage and a full disk."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gossipser.errors import ConfigError
from gossipser.net.node import REPLAY_WINDOW_US, ReplayGuard
from gossipser.net.runtime import Checkpoint, _ahead

NOW = 1_800_000_000_000_000  # microseconds


def test_a_sequence_number_is_accepted_once():
    g = ReplayGuard(max_age_s=300)
    assert g.check(1, NOW, NOW) is None
    assert g.check(1, NOW, NOW) == "replayed"
    assert g.check(2, NOW, NOW) is None  # numbers are per sender


def test_frames_may_overtake_each_other_within_the_window_only():
    g = ReplayGuard(max_age_s=300)
    assert g.check(1, NOW + 10, NOW) is None
    assert g.check(1, NOW + 5, NOW) is None  # overtaken, never seen: kept
    assert g.check(1, NOW + 5, NOW) == "replayed"
    assert g.check(1, NOW + 10 + REPLAY_WINDOW_US, NOW) is None
    assert g.check(1, NOW + 9, NOW) == "replayed"  # below the window now


def test_old_or_missing_numbers_are_refused():
    g = ReplayGuard(max_age_s=300)
    assert g.check(1, NOW - 301 * 10**6, NOW) == "stale"
    assert g.check(1, NOW - 299 * 10**6, NOW) is None
    assert g.check(1, None, NOW) == "no sequence number"
    assert g.check(1, "12", NOW) == "no sequence number"
    assert g.check(1, True, NOW) == "no sequence number"


def test_the_highest_numbers_survive_a_checkpoint():
    g = ReplayGuard(max_age_s=300)
    for seq in (NOW, NOW + 7):
        g.check(3, seq, NOW)
    state = g.state()
    assert state == {"3": NOW + 7}
    restarted = ReplayGuard(max_age_s=300)
    restarted.restore(state)
    assert restarted.check(3, NOW, NOW) == "replayed"
    assert restarted.check(3, NOW + 7, NOW) == "replayed"
    assert restarted.check(3, NOW + 8, NOW) is None


def test_the_seen_set_stays_small():
    g = ReplayGuard(max_age_s=10**6)
    step = REPLAY_WINDOW_US // 10
    for k in range(1000):
        assert g.check(1, NOW + k * step, NOW) is None
    assert len(g.seen[1]) <= 75


def _node(heard: dict[int, int]):
    return SimpleNamespace(heard_round=heard)


def test_one_neighbour_alone_never_moves_a_peer_ahead():
    assert _ahead(_node({1: 10**9, 3: 0}), {1, 3}) == 0
    assert _ahead(_node({1: 50, 3: 48}), {1, 3}) == 48
    assert _ahead(_node({1: 50, 2: 7, 3: 49, 4: 0}), {1, 2, 3, 4}) == 7
    assert _ahead(_node({1: 50, 2: 49, 3: 49, 4: 0}), {1, 2, 3, 4}) == 49
    assert _ahead(_node({1: 50, 2: 40}), {1, 2, 3}) == 40
    assert _ahead(_node({}), set()) == 0


def _save(ckpt: Checkpoint, r: int) -> bool:
    return ckpt.save(params={"w": np.full(3, float(r), np.float32)},
                     extra={"opt": np.arange(r)}, header={"round": r, "rows": [r] * r})


def test_a_damaged_checkpoint_resumes_from_the_one_before(tmp_path: Path):
    ckpt = Checkpoint(tmp_path / "checkpoint.npz", "run-a")
    for r in (1, 2, 3):
        assert _save(ckpt, r)
    data = ckpt.path.read_bytes()
    ckpt.path.write_bytes(data[: len(data) // 2])  # cut in half
    params, extra, header = Checkpoint(ckpt.path, "run-a").load()
    assert header["round"] == 2 and header["rows"] == [2, 2]
    np.testing.assert_array_equal(params["w"], [2, 2, 2])
    np.testing.assert_array_equal(extra["opt"], [0, 1])
    fresh = Checkpoint(ckpt.path, "run-a")
    fresh.load()
    assert len(fresh.notes) == 1 and "resuming from checkpoint.prev.npz, round 2" in \
        fresh.notes[0]
    assert Checkpoint(ckpt.path, "run-b").load() is None  # another run's: start afresh


def test_two_damaged_checkpoints_are_one_line(tmp_path: Path):
    ckpt = Checkpoint(tmp_path / "checkpoint.npz", "run-a")
    ckpt.path.write_bytes(b"PK\x03\x04 not a zip")
    ckpt.prev.write_bytes(b"")
    with pytest.raises(ConfigError) as err:
        ckpt.load()
    assert "\n" not in str(err.value) and "delete them" in str(err.value)


def test_a_checkpoint_that_cannot_be_written_is_a_note_not_a_crash(tmp_path: Path):
    ckpt = Checkpoint(tmp_path / "gone" / "checkpoint.npz", "run-a")  # no such folder
    assert not _save(ckpt, 1)
    assert len(ckpt.notes) == 1 and "checkpoint not saved" in ckpt.notes[0]
