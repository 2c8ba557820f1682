"""A training pool on Ray (`--backend ray`): the peers' trainers live in Ray actors, on this
machine or on a cluster (`--ray-address HOST:PORT` joins one started with `ray start`).

Each actor holds the trainers (model, optimiser, schedule and data shard) of the peers
assigned to it, round-robin as in the process pool, and keeps them between rounds: a round
ships parameters in and out, never trainers. Every trainer depends only on its seed and its
jobs, so a run gives the same weights as the serial and process pools (a test checks it).
Ray is an optional extra: `pip install 'gossipser[ray]'` (after torch==2.13.0).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from gossipser.errors import ConfigError, GossipserError
from gossipser.learn.jobs import Params, PoolSpec, Shard, TrainJob, TrainResult
from gossipser.learn.metrics import Scores
from gossipser.learn.pool import jobs_by_worker, make_pool, states_by_worker
from gossipser.learn.workers import WorkerProcesses


class _Worker:
    """One Ray actor: the trainers of its peers."""

    def __init__(self, spec: PoolSpec, shards: list[Shard]) -> None:
        import torch

        torch.set_num_threads(1)
        from gossipser.learn.trainers import _Trainers

        self.trainers = _Trainers(spec, shards)

    def steps_per_epoch(self) -> dict[int, int]:
        return self.trainers.steps_per_epoch()

    def train(self, jobs: list[TrainJob]) -> list[TrainResult]:
        return [self.trainers.train(j) for j in jobs]

    def evaluate(self, states: list[Params]) -> list[Scores]:
        return [self.trainers.evaluate(s) for s in states]

    def initial(self, seeds: list[int]) -> list[Params]:
        return [self.trainers.initial(s) for s in seeds]


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("backend ray: Ray is not installed (pip install 'gossipser[ray]', "
                          "after torch==2.13.0)") from None
    return ray


class RayPool:
    """The pool interface of `ProcessPool` over `workers` Ray actors (one CPU each)."""

    def __init__(self, spec: PoolSpec, shards: Sequence[Shard], *, workers: int = 2,
                 address: str | None = None) -> None:
        ray = _ray()
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            try:
                with warnings.catch_warnings():  # Ray 2.5x's "Tip" on GPU variables: no GPUs here
                    warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\.")
                    if address:
                        ray.init(address=address, include_dashboard=False, log_to_driver=False)
                    else:
                        ray.init(num_cpus=max(1, workers), include_dashboard=False,
                                 log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"backend ray: cannot start or join Ray"
                                  f"{' at ' + address if address else ''}: {exc}") from None
            self._started = True
        self.workers = max(1, min(workers, len(shards)))
        self._owner = {s.peer: i % self.workers for i, s in enumerate(shards)}
        actor = ray.remote(num_cpus=1)(_Worker)
        self._actors = [actor.remote(spec, [s for i, s in enumerate(shards)
                                            if i % self.workers == w])
                        for w in range(self.workers)]
        self._spe: dict[int, int] = {}
        for part in self._get([a.steps_per_epoch.remote() for a in self._actors]):
            self._spe.update(part)

    def _get(self, refs):
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise GossipserError(f"ray training actor: {first}") from None

    def steps_per_epoch(self) -> dict[int, int]:
        return dict(self._spe)

    def train(self, jobs: Sequence[TrainJob]) -> list[TrainResult]:
        refs = [self._actors[w].train.remote(js)
                for w, js in jobs_by_worker(jobs, self._owner).items()]
        results = {r.peer: r for part in self._get(refs) for r in part}
        return [results[j.peer] for j in jobs]

    def evaluate(self, states: Sequence[Params]) -> list[Scores]:
        return self._spread("evaluate", states)

    def initial_states(self, seeds: Sequence[int]) -> list[Params]:
        """Fresh models' states, one per seed, built by the actors."""
        return self._spread("initial", list(seeds))

    def _spread(self, method: str, items: Sequence) -> list:
        parts = states_by_worker(len(items), self.workers)
        got = self._get([getattr(self._actors[w], method).remote([items[i] for i in idx])
                         for w, idx in parts.items()])
        out: list = [None] * len(items)
        for idx, answers in zip(parts.values(), got, strict=True):
            for i, s in zip(idx, answers, strict=True):
                out[i] = s
        return out

    def close(self, **_: object) -> None:
        for a in getattr(self, "_actors", []):
            self._ray.kill(a)
        self._actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_pool(spec: PoolSpec, shards: Sequence[Shard], *, workers: int, backend: str = "process",
              started: WorkerProcesses | None = None, address: str = ""):
    """A run's training pool: Ray actors (`backend="ray"`), else processes or this process."""
    if backend == "ray":
        if started is not None:
            started.close()
        return RayPool(spec, shards, workers=workers, address=address or None)
    return make_pool(spec, shards, workers=workers, started=started)
