"""Training processes, started before anything heavy is imported.

`WorkerProcesses` spawns the processes a `ProcessPool` later hands its trainers to. This
module imports neither torch nor numpy, so `gossipser simulate` can start them first thing:
each imports torch and the package while the command's own process imports torch, reads
the corpus and plans the run, which puts the second core to work from the start.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
from pathlib import Path

DEFAULT_WORKERS = 2  # simulator training processes (GossipConfig.workers)


def torch_threads() -> None:
    """Import torch and give it one intra-op thread (GOSSIPSER_TORCH_THREADS: another count):
    small models gain nothing from a second thread, and on a busy machine spinning OpenMP
    threads slow everything else down; processes give the parallelism. Called by the command
    (except `simulate`, whose own process leaves torch to its training processes) and by a
    pool that trains in this process. `simulate` extracting features on a cold cache does it
    with torch's default threads while its training processes wait: the features are the
    same to the bit (checked with 1 and 2 threads)."""
    import torch

    torch.set_num_threads(int(os.environ.get("GOSSIPSER_TORCH_THREADS", "1")))


def _worker_main(conn) -> None:
    # Ctrl-C is the parent's to handle: it closes the pool, which stops this worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch  # here, not at the top: the parent starts us before it imports torch

    from gossipser.learn.jobs import TrainJob, TrainResult
    from gossipser.learn.slots import Slots
    from gossipser.learn.trainers import _Trainers

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
    slots = None  # shared memory for training jobs' parameters (`gossipser.learn.slots`)

    def attach(item) -> bool:
        nonlocal slots
        path, layout, rows = item
        slots = Slots(Path(path), layout, rows)
        return True

    def train_in_slot(item) -> TrainResult:
        peer, steps = item
        if slots is None:
            raise RuntimeError("a training job in shared memory before the memory was mapped")
        result = trainers.train(TrainJob(peer=peer, params=slots.views(peer), steps=steps))
        slots.write(peer, result.params)
        return dataclasses.replace(result, params={})

    ops = {"train": trainers.train, "evaluate": trainers.evaluate, "initial": trainers.initial,
           "slots": attach, "train_slots": train_in_slot}
    while True:
        op, payload = conn.recv()
        work = ops.get(op)
        if work is None:
            os._exit(0)  # nothing to flush; skipping torch's teardown saves a second
        try:
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


def planned_workers(workers: object, backend: object, doc: dict) -> int:
    """How many training processes a simulation will want, from its flags or else its
    config's [gossip] section (0: none, e.g. the Ray backend or one worker). A bad value
    counts as none: the command checks the config itself and says what is wrong."""
    section = doc.get("gossip", {}) if isinstance(doc, dict) else {}
    backend = backend if backend is not None else section.get("backend", "process")
    workers = workers if workers is not None else section.get("workers", DEFAULT_WORKERS)
    if backend != "process" or type(workers) is not int or workers < 2:
        return 0
    return workers


def workers_for(started: WorkerProcesses | None, wanted: int) -> WorkerProcesses | None:
    """The processes a run wants: those `main` started, when there are as many, else new
    ones (the others stopped); None when it wants none."""
    if started is not None and len(started.procs) == wanted:
        return started
    if started is not None:
        started.close(now=True)
    return WorkerProcesses(wanted) if wanted else None
