"""Shared-memory rows for training jobs' parameters (`gossipser.learn.slots`), on literal
arrays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from gossipser.learn.slots import Layout, Slots


def params(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {"w": scale * np.arange(6, dtype=np.float32).reshape(2, 3),
            "b": scale * np.array([7.0, 8.0], dtype=np.float32)}


def test_a_layout_places_each_parameter_after_the_last_in_a_padded_row() -> None:
    layout = Layout.of(params())
    assert layout == Layout(entries=(("w", (2, 3), 0), ("b", (2,), 6)), dtype="float32", row=16)
    assert layout.fits(params(2.0))
    assert not layout.fits({"w": params()["w"]})  # a parameter missing
    assert not layout.fits({**params(), "b": np.zeros(3, np.float32)})  # another shape
    assert not layout.fits({**params(), "b": np.zeros(2, np.float64)})  # another dtype
    assert not layout.fits({**params(), "b": [7.0, 8.0]})  # not an array


@pytest.mark.parametrize("state", [
    {}, {"w": np.zeros(2, np.float32), "b": np.zeros(2, np.float64)},
    {"steps": np.zeros(2, np.int64)}])
def test_no_layout_for_states_one_row_cannot_hold(state) -> None:
    assert Layout.of(state) is None


def test_rows_hold_what_was_written_and_reads_are_copies(tmp_path: Path) -> None:
    layout = Layout.of(params())
    path = tmp_path / "slots"
    path.write_bytes(bytes(3 * layout.row * 4))
    mine, theirs = Slots(path, layout, 3), Slots(path, layout, 3)  # two mappings of one file
    mine.write(2, params(2.0))
    mine.write(0, params(-1.0))
    got = theirs.read(2)
    assert {k: v.tolist() for k, v in got.items()} == {
        "w": [[0.0, 2.0, 4.0], [6.0, 8.0, 10.0]], "b": [14.0, 16.0]}
    got["b"][0] = 99.0  # a read is a copy: the row keeps its value
    assert theirs.views(2)["b"][0] == 14.0
    assert theirs.views(0)["b"].tolist() == [-7.0, -8.0]
    assert theirs.views(1)["w"].tolist() == [[0.0] * 3] * 2  # never written
    with pytest.raises(IndexError, match="no row 3"):
        theirs.views(3)


def test_creating_slots_reserves_their_space_or_says_there_is_no_room(monkeypatch) -> None:
    layout = Layout.of(params())
    slots = Slots.create(layout, 5)
    try:
        assert slots.path.stat().st_size == 5 * 16 * 4
        slots.write(4, params(3.0))
    finally:
        slots.unlink()
    assert not slots.path.exists()
    assert slots.read(4)["b"].tolist() == [21.0, 24.0]  # the mapping outlives the name

    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(os, "statvfs", lambda place: Full())
    with pytest.raises(OSError, match="no room"):
        Slots.create(layout, 5)
