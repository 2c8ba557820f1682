"""Where local training runs: in this process, or spread over worker processes.

A pool owns one `LocalTrainer` (model + Adam state + data shard) per peer and the held-out
test set. It is told "train peer i from these parameters for k steps" and "evaluate these
states", and answers with parameters and scores. Peer logic never sees torch.
Two torch threads barely speed up a small model, two processes do: `ProcessPool` shards the
peers over processes with one torch thread each.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from multiprocessing.connection import wait as mp_wait
from typing import TYPE_CHECKING

from gossipser.errors import GossipserError
from gossipser.learn.jobs import Params, PoolSpec, Shard, TrainJob, TrainResult
from gossipser.learn.metrics import Scores
from gossipser.learn.slots import Layout, Slots
from gossipser.learn.workers import WorkerProcesses

if TYPE_CHECKING:  # torch: only where training runs
    from gossipser.learn.train import LocalTrainer

CHUNK = 16  # training jobs per message to a worker process


class SerialPool:
    """Everything in the calling process (tests, one-core machines, the networked peer)."""

    def __init__(self, spec: PoolSpec, shards: Sequence[Shard], *,
                 park: bool | None = None) -> None:
        from gossipser.learn.trainers import _Trainers  # torch: only where training runs
        from gossipser.learn.workers import torch_threads

        torch_threads()  # `simulate --workers 1` trains in the command's own process
        self._t = _Trainers(spec, shards, park=park)
        self.workers = 1

    def steps_per_epoch(self) -> dict[int, int]:
        return self._t.steps_per_epoch()

    def trainer(self, peer: int) -> LocalTrainer:
        return self._t.trainers[peer]

    def train(self, jobs: Sequence[TrainJob]) -> list[TrainResult]:
        return [self._t.train(j) for j in jobs]

    def initial_states(self, seeds: Sequence[int]) -> list[Params]:
        """Fresh models' states, one per seed (built where torch is: here)."""
        return [self._t.initial(s) for s in seeds]

    def evaluate(self, states: Sequence[Params]) -> list[Scores]:
        return [self._t.evaluate(s) for s in states]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _answer(conn) -> tuple[str, object]:
    """A worker's next answer as (status, payload); an error, or a worker that died, as
    ("error" or "died", the one line to show)."""
    try:
        status, payload = conn.recv()
    except EOFError:
        return "died", "a training worker process died"
    if status == "error":
        return status, f"training worker: {payload}"
    return status, payload


def jobs_by_worker(jobs: Sequence[TrainJob], owner: dict[int, int]) -> dict[int, list[TrainJob]]:
    """The jobs each worker runs (a peer's trainer lives on worker `owner[peer]`)."""
    by_worker: dict[int, list[TrainJob]] = {}
    for j in jobs:
        by_worker.setdefault(owner[j.peer], []).append(j)
    return by_worker


def states_by_worker(n_states: int, workers: int) -> dict[int, list[int]]:
    """Indices of the states each worker evaluates, round-robin (idle workers left out)."""
    parts = {w: list(range(w, n_states, workers)) for w in range(workers)}
    return {w: idx for w, idx in parts.items() if idx}


class ProcessPool:
    """Peers sharded round-robin over `workers` processes, one torch thread each.

    Each trainer depends only on its seed and its jobs, so results equal SerialPool's.
    Training jobs' parameters travel through shared memory (`gossipser.learn.slots`) where
    they fit one row per peer and the machine has room (`slots=False`: always by pickle).
    """

    def __init__(self, spec: PoolSpec, shards: Sequence[Shard], *, workers: int = 2,
                 started: WorkerProcesses | None = None, slots: bool = True) -> None:
        self.workers = max(1, min(workers, len(shards)))
        self._owner: dict[int, int] = {}
        self._spe: dict[int, int] = {}
        self._rows = max((s.peer for s in shards), default=-1) + 1
        self._slots: Slots | None = None
        self._slots_tried = not slots  # made at the first training call, from its layout
        started = started if started is not None else WorkerProcesses(self.workers)
        self._processes = started.take(self.workers)
        self._conns = self._processes.conns
        try:
            for w, conn in enumerate(self._conns):
                mine = [s for i, s in enumerate(shards) if i % self.workers == w]
                for s in mine:
                    self._owner[s.peer] = w
                conn.send(("init", (spec, mine)))
            for conn in self._conns:
                self._spe.update(self._recv(conn))
        except BaseException:
            self.close()
            raise

    def _recv(self, conn):
        status, payload = _answer(conn)
        if status in ("error", "died"):
            raise GossipserError(payload)
        return payload

    def steps_per_epoch(self) -> dict[int, int]:
        return dict(self._spe)

    @property
    def uses_slots(self) -> bool:
        """Whether training jobs' parameters travel through shared memory."""
        return self._slots is not None

    def _slots_for(self, jobs: Sequence[TrainJob]) -> Slots | None:
        """The slots these jobs' parameters can travel in (made, and mapped by every worker,
        at the first call with jobs), or None: by pickle."""
        if not jobs:
            return None
        if not self._slots_tried:
            self._slots_tried = True
            self._slots = self._make_slots(jobs[0].params)
        slots = self._slots
        if slots is None or not all(slots.layout.fits(j.params) for j in jobs):
            return None
        if len({j.peer for j in jobs}) != len(jobs):
            return None  # one row per peer: a peer's second job would overwrite its first
        return slots

    def _make_slots(self, params: Params) -> Slots | None:
        layout = Layout.of(params)
        if layout is None:
            return None
        try:
            slots = Slots.create(layout, self._rows)
        except OSError:
            return None  # no room: parameters go by pickle, as they always could
        answers = []
        try:
            for conn in self._conns:
                try:
                    conn.send(("slots", [(str(slots.path), layout, self._rows)]))
                except OSError:
                    answers.append(("died", "a training worker process died"))
                    continue
                answers.append(_answer(conn))
        finally:
            slots.unlink()  # mapped by every process that will use it, or by none
        died = [payload for status, payload in answers if status == "died"]
        if died:
            raise GossipserError(died[0])
        return slots if all(status == "ok" for status, _ in answers) else None

    def train(self, jobs: Sequence[TrainJob]) -> list[TrainResult]:
        """The jobs in chunks of `CHUNK`, fed to every worker at once by one thread each and
        answered chunk by chunk: all workers start at once, and results are taken in here
        while the workers go on (one message per worker and call made the second worker
        wait for the first one's parameters to cross the pipe). Parameters go through the
        slots where they fit: a chunk's are written into their peers' rows before the chunk
        is sent, and each answer's read from them when it arrives."""
        slots = self._slots_for(jobs)
        chunks = {w: [js[i:i + CHUNK] for i in range(0, len(js), CHUNK)]
                  for w, js in jobs_by_worker(jobs, self._owner).items()}

        sent = dict.fromkeys(chunks, 0)  # chunks each feeder has sent
        stalled: dict[int, str] = {}  # feeders stopped by an error of their own: why

        def feed(w: int) -> None:
            try:
                for chunk in chunks[w]:
                    if slots is None:
                        self._conns[w].send(("train", chunk))
                    else:
                        for j in chunk:
                            slots.write(j.peer, j.params)
                        self._conns[w].send(("train_slots", [(j.peer, j.steps) for j in chunk]))
                    sent[w] += 1
            except OSError:
                pass  # the worker died: its missing answers say so below
            except Exception as exc:  # e.g. a job that cannot be pickled: no answer will come
                stalled[w] = f"training pool: {type(exc).__name__}: {exc}"

        feeders = {w: threading.Thread(target=feed, args=(w,), daemon=True) for w in chunks}
        for t in feeders.values():
            t.start()
        worker_of = {self._conns[w]: w for w in chunks}
        left = {self._conns[w]: len(cs) for w, cs in chunks.items()}
        results: dict[int, TrainResult] = {}
        error = None
        while left:  # every answer is read, even after an error, so none is left in a pipe
            for conn in [c for c in left if worker_of[c] in stalled]:
                w = worker_of[conn]  # answered all it was sent: stop waiting for the rest
                if not feeders[w].is_alive() and len(chunks[w]) - left[conn] >= sent[w]:
                    error = error or stalled[w]
                    del left[conn]
            for conn in mp_wait(list(left), timeout=0.2):
                status, payload = _answer(conn)
                if status in ("error", "died"):
                    error = error or payload
                elif slots is None:
                    results.update((r.peer, r) for r in payload)
                else:
                    results.update((r.peer, dataclasses.replace(r, params=slots.read(r.peer)))
                                   for r in payload)
                left[conn] -= 1
                if left[conn] == 0 or status == "died":  # a dead worker answers no more
                    del left[conn]
        for t in feeders.values():
            t.join()
        if error is not None:
            raise GossipserError(error)
        return [results[j.peer] for j in jobs]

    def initial_states(self, seeds: Sequence[int]) -> list[Params]:
        """Fresh models' states, one per seed, built by the workers (this process never
        imports torch for a simulation)."""
        return self._spread("initial", list(seeds))

    def evaluate(self, states: Sequence[Params]) -> list[Scores]:
        return self._spread("evaluate", states)

    def _spread(self, op: str, items: Sequence) -> list:
        """`op` on each item, the items dealt round-robin to the workers; answers in order."""
        parts = states_by_worker(len(items), self.workers)
        for w, idx in parts.items():
            self._conns[w].send((op, [items[i] for i in idx]))
        out: list = [None] * len(items)
        error = None
        for w, idx in parts.items():  # every answer is read, even after an error
            status, payload = _answer(self._conns[w])
            if status in ("error", "died"):
                error = error or payload
                continue
            for i, s in zip(idx, payload, strict=True):
                out[i] = s
        if error is not None:
            raise GossipserError(error)
        return out

    def close(self, *, now: bool = False) -> None:
        """Stop the workers: politely, or at once (`now`, e.g. after Ctrl-C mid-round)."""
        self._processes.close(now=now)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(now=exc_type is not None)


def make_pool(spec: PoolSpec, shards: Sequence[Shard], *, workers: int,
              started: WorkerProcesses | None = None):
    """The training pool of a run: processes, or this process alone (one worker); Ray
    actors are `gossipser.learn.pool_ray.RayPool`."""
    if workers > 1:
        return ProcessPool(spec, shards, workers=workers, started=started)
    if started is not None:
        started.close()
    return SerialPool(spec, shards)
