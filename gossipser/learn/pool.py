"""Where local training runs: in this process, or spread over worker processes.

A pool owns one `LocalTrainer` (model + Adam state + data shard) per peer and the held-out
test set. It is told "train peer i from these parameters for k steps" and "evaluate these
states", and answers with parameters and scores. Peer logic never sees torch.
Two torch threads barely speed up a small model, two processes do: `ProcessPool` shards the
peers over processes with one torch thread each.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait

import numpy as np
import torch

from gossipser.errors import GossipserError
from gossipser.learn.metrics import Scores
from gossipser.learn.models import ModelConfig, build_model, get_state, set_state
from gossipser.learn.train import LocalTrainer, TrainConfig, evaluate, steps_per_epoch

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class Shard:
    """One peer's private training data and its trainer seed."""

    peer: int
    x: np.ndarray
    y: np.ndarray
    seed: int
    planned_steps: int | None = None  # optimiser steps over the run (DP-SGD calibrates to it)


@dataclass(frozen=True)
class PoolSpec:
    model: ModelConfig
    train: TrainConfig
    n_inputs: int
    n_classes: int
    test_x: np.ndarray
    test_y: np.ndarray
    test_groups: np.ndarray | None = None  # speaker per test row: BatchNorm by speaker


@dataclass(frozen=True)
class TrainJob:
    peer: int
    params: Params
    steps: int


@dataclass(frozen=True)
class TrainResult:
    peer: int
    params: Params
    loss: float
    steps: int
    samples: int = 0  # examples the optimiser saw in these steps
    epsilon: float | None = None  # DP-SGD: privacy spent by the peer so far (None: off)
    noise: float | None = None  # DP-SGD noise multiplier
    seconds: float = 0.0  # wall time of the optimiser steps alone (bench_scale: overhead)


PARK_ABOVE = 32  # a process holding more peers than this keeps their trainers parked
CHUNK = 16  # training jobs per message to a worker process


class _Trainers:
    """The trainers of a set of shards plus one evaluation model (used in every pool).

    Live (up to `PARK_ABOVE` peers, or `park=False`): one `LocalTrainer` (torch module, Adam)
    per peer, kept between rounds. Parked (more peers, as when a simulation holds thousands):
    between rounds a peer is only its shard and its trainer's state (Adam's moment tensors,
    the step count, RNG states: what a checkpoint holds); a job unparks it into one module the
    process shares, trains, and parks it again. Both give the same weights.
    """

    def __init__(self, spec: PoolSpec, shards: Sequence[Shard], *,
                 park: bool | None = None) -> None:
        self.spec = spec
        self.shards = {s.peer: s for s in shards}
        self.park = len(self.shards) > PARK_ABOVE if park is None else park
        self.parked: dict[int, dict] = {}  # LocalTrainer.park(): tensors, no module
        self._module: torch.nn.Module | None = None  # parked peers train in this one
        self.trainers = {} if self.park else {s.peer: self._trainer(s) for s in shards}
        self.eval_model = self._build()

    def _build(self, seed: int = 0) -> torch.nn.Module:
        return build_model(self.spec.model, n_features=self.spec.n_inputs,
                           n_classes=self.spec.n_classes, seed=seed)

    def _trainer(self, s: Shard, model: torch.nn.Module | None = None) -> LocalTrainer:
        return LocalTrainer(model=model if model is not None else self._build(s.seed),
                            x=s.x, y=s.y, n_classes=self.spec.n_classes, cfg=self.spec.train,
                            seed=s.seed, planned_steps=s.planned_steps)

    def _unpark(self, peer: int) -> LocalTrainer:
        """Peer `peer`'s trainer in the shared module, in the state it was parked in (a fresh
        one at its first job). DP-SGD wraps its module for per-sample gradients, so each
        private trainer gets a module of its own."""
        if self.spec.train.dp is not None:
            model = self._build()
        else:
            if self._module is None:
                self._module = self._build()
            model = self._module
        t = self._trainer(self.shards[peer], model)
        parked = self.parked.get(peer)
        if parked is not None:
            t.unpark(parked)
        return t

    def steps_per_epoch(self) -> dict[int, int]:
        return {p: steps_per_epoch(len(s.y), self.spec.train.batch_size)
                for p, s in self.shards.items()}

    def train(self, job: TrainJob) -> TrainResult:
        t = self._unpark(job.peer) if self.park else self.trainers[job.peer]
        set_state(t.model, job.params)
        before, t0 = t.samples_done, time.perf_counter()
        loss = t.train_steps(job.steps)
        seconds = time.perf_counter() - t0
        if self.park:
            self.parked[job.peer] = t.park()
        return TrainResult(peer=job.peer, params=get_state(t.model), loss=loss, steps=job.steps,
                           samples=t.samples_done - before, epsilon=t.epsilon,
                           noise=t.noise, seconds=seconds)

    def evaluate(self, params: Params) -> Scores:
        set_state(self.eval_model, params)
        return evaluate(self.eval_model, self.spec.test_x, self.spec.test_y, self.spec.n_classes,
                        groups=self.spec.test_groups)


class SerialPool:
    """Everything in the calling process (tests, one-core machines, the networked peer)."""

    def __init__(self, spec: PoolSpec, shards: Sequence[Shard], *,
                 park: bool | None = None) -> None:
        self._t = _Trainers(spec, shards, park=park)
        self.workers = 1

    def steps_per_epoch(self) -> dict[int, int]:
        return self._t.steps_per_epoch()

    def trainer(self, peer: int) -> LocalTrainer:
        return self._t.trainers[peer]

    def train(self, jobs: Sequence[TrainJob]) -> list[TrainResult]:
        return [self._t.train(j) for j in jobs]

    def evaluate(self, states: Sequence[Params]) -> list[Scores]:
        return [self._t.evaluate(s) for s in states]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _worker_main(conn) -> None:
    # Ctrl-C is the parent's to handle: it closes the pool, which stops this worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    op, payload = conn.recv()  # started ahead of the data: imports are done while we wait
    if op != "init":
        os._exit(0)
    spec, shards = payload
    try:
        trainers = _Trainers(spec, shards)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    conn.send(("ready", trainers.steps_per_epoch()))
    while True:
        op, payload = conn.recv()
        if op not in ("train", "evaluate"):
            os._exit(0)  # nothing to flush; skipping torch's teardown saves a second
        try:
            work = trainers.train if op == "train" else trainers.evaluate
            conn.send(("ok", [work(item) for item in payload]))
        except Exception as exc:  # reported to the parent as one line, the worker lives on
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class WorkerProcesses:
    """Training processes started before the corpus is loaded: each imports torch and the
    package while the parent reads the data, and a `ProcessPool` later hands them their
    trainers (spawned, not forked: forking after torch started its threads is unsafe)."""

    def __init__(self, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list = []
        self.procs: list = []
        try:
            for _ in range(max(1, workers)):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
        except BaseException:
            self.close()
            raise

    @classmethod
    def _holding(cls, conns: list, procs: list) -> WorkerProcesses:
        held = cls.__new__(cls)
        held.conns, held.procs = conns, procs
        return held

    def take(self, n: int) -> WorkerProcesses:
        """The first `n` processes, for a pool; the others are stopped."""
        taken = WorkerProcesses._holding(self.conns[:n], self.procs[:n])
        WorkerProcesses._holding(self.conns[n:], self.procs[n:]).close()
        self.conns, self.procs = [], []
        return taken

    def close(self, *, now: bool = False) -> None:
        """Stop the workers: politely, or at once (`now`, e.g. after Ctrl-C mid-round)."""
        for conn in self.conns:
            try:
                conn.send(("stop", None))
            except (OSError, BrokenPipeError):
                pass
        for proc in self.procs:
            if now:
                proc.terminate()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        for conn in self.conns:
            conn.close()
        self.conns, self.procs = [], []


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
    """

    def __init__(self, spec: PoolSpec, shards: Sequence[Shard], *, workers: int = 2,
                 started: WorkerProcesses | None = None) -> None:
        self.workers = max(1, min(workers, len(shards)))
        self._owner: dict[int, int] = {}
        self._spe: dict[int, int] = {}
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

    def train(self, jobs: Sequence[TrainJob]) -> list[TrainResult]:
        """The jobs in chunks of `CHUNK`, fed to every worker at once by one thread each and
        answered chunk by chunk: all workers start at once, and results are unpickled here
        while the workers go on (one message per worker and call made the second worker
        wait for the first one's parameters to cross the pipe)."""
        chunks = {w: [js[i:i + CHUNK] for i in range(0, len(js), CHUNK)]
                  for w, js in jobs_by_worker(jobs, self._owner).items()}

        def feed(w: int) -> None:
            try:
                for chunk in chunks[w]:
                    self._conns[w].send(("train", chunk))
            except (OSError, BrokenPipeError):
                pass  # the worker died: its missing answers say so below

        feeders = [threading.Thread(target=feed, args=(w,), daemon=True) for w in chunks]
        for t in feeders:
            t.start()
        left = {self._conns[w]: len(cs) for w, cs in chunks.items()}
        results: dict[int, TrainResult] = {}
        error = None
        while left:  # every answer is read, even after an error, so none is left in a pipe
            for conn in mp_wait(list(left)):
                status, payload = _answer(conn)
                if status in ("error", "died"):
                    error = error or payload
                else:
                    results.update((r.peer, r) for r in payload)
                left[conn] -= 1
                if left[conn] == 0 or status == "died":  # a dead worker answers no more
                    del left[conn]
        for t in feeders:
            t.join()
        if error is not None:
            raise GossipserError(error)
        return [results[j.peer] for j in jobs]

    def evaluate(self, states: Sequence[Params]) -> list[Scores]:
        parts = states_by_worker(len(states), self.workers)
        for w, idx in parts.items():
            self._conns[w].send(("evaluate", [states[i] for i in idx]))
        out: list[Scores | None] = [None] * len(states)
        for w, idx in parts.items():
            for i, s in zip(idx, self._recv(self._conns[w]), strict=True):
                out[i] = s
        return out  # type: ignore[return-value]

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
