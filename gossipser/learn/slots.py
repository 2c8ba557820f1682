"""Peers' parameters in memory the simulator's process and its training processes share.

A `ProcessPool` round sends every training peer's model to a worker and gets it back: at
1,000 DNN peers that was 217 MB pickled, piped and unpickled each way, a round, the
command's process taking CPU time from the workers it waits for. With slots, each peer has
one row of a memory-mapped file every process maps: the pool writes a job's parameters into
the peer's row and sends only (peer, steps); the worker trains from the row and writes the
result back into it; the pool copies it out when the answer arrives (the pipe orders the
writes). The file is unlinked as soon as every worker has mapped it, so nothing is left
behind, even after a crash.

Plain numpy, no torch. A model state fits the slots when it has the layout they were made
for (the same names, shapes and one floating dtype); anything else travels by pickle.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Params = dict[str, np.ndarray]

_ALIGN = 16  # elements: each row starts on a cache line (64 bytes of float32)


@dataclass(frozen=True)
class Layout:
    """Where each parameter lives in a row: (name, shape, offset in elements)."""

    entries: tuple[tuple[str, tuple[int, ...], int], ...]
    dtype: str
    row: int  # elements per row, padded to `_ALIGN`

    @classmethod
    def of(cls, params: Params) -> Layout | None:
        """The layout of `params`, or None where one row cannot hold it (no parameters, or
        more than one dtype, or a dtype that is not floating)."""
        dtypes = {np.asarray(a).dtype for a in params.values()}
        if len(dtypes) != 1 or not np.issubdtype(next(iter(dtypes)), np.floating):
            return None
        entries, offset = [], 0
        for name, a in params.items():
            entries.append((name, tuple(np.shape(a)), offset))
            offset += int(np.size(a))
        row = -(-offset // _ALIGN) * _ALIGN
        return cls(tuple(entries), str(next(iter(dtypes))), row)

    def fits(self, params: Params) -> bool:
        if len(params) != len(self.entries):
            return False
        for name, shape, _ in self.entries:
            a = params.get(name)
            if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype != self.dtype:
                return False
        return True


class Slots:
    """One row per peer (peer ids 0..rows-1) of a memory-mapped file."""

    def __init__(self, path: Path, layout: Layout, rows: int) -> None:
        self.path, self.layout, self.rows = path, layout, rows
        self._map = np.memmap(path, dtype=layout.dtype, mode="r+", shape=(rows, layout.row))
        self._views: dict[int, Params] = {}  # per row, per parameter: a view into the map

    @classmethod
    def create(cls, layout: Layout, rows: int) -> Slots:
        """A new file of `rows` rows, its space reserved now (so that a full disk is an
        OSError here, not a bus error mid-round), in shared memory where the machine has
        room there, else in the temporary directory."""
        size = rows * layout.row * np.dtype(layout.dtype).itemsize
        places = [Path("/dev/shm"), Path(tempfile.gettempdir())]
        error: OSError | None = None
        for place in places:
            try:
                room = os.statvfs(place)
                if room.f_bavail * room.f_frsize < 2 * size:  # leave the machine half
                    continue
                fd, name = tempfile.mkstemp(prefix="gossipser-slots-", dir=place)
            except OSError as exc:
                error = exc
                continue
            try:
                os.posix_fallocate(fd, 0, size)
                return cls(Path(name), layout, rows)
            except OSError as exc:
                error = exc
                Path(name).unlink(missing_ok=True)
            finally:
                os.close(fd)
        raise error or OSError(f"no room for {size / 1e6:.0f} MB of parameter slots")

    def unlink(self) -> None:
        """Remove the file's name (the mappings live on until closed)."""
        self.path.unlink(missing_ok=True)

    def views(self, row: int) -> Params:
        """The row's parameters, in place (valid until the row is written again)."""
        views = self._views.get(row)
        if views is None:
            if not 0 <= row < self.rows:
                raise IndexError(f"parameter slots: no row {row} (rows 0..{self.rows - 1})")
            views = self._views[row] = {
                name: self._map[row, off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)
                for name, shape, off in self.layout.entries}
        return views

    def write(self, row: int, params: Params) -> None:
        for name, view in self.views(row).items():
            np.copyto(view, params[name])

    def read(self, row: int) -> Params:
        """A copy of the row's parameters."""
        return {name: view.copy() for name, view in self.views(row).items()}
