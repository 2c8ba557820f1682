"""The torch side of every pool (in this process, in a worker process or in a Ray actor):
peers' trainers over their shards. What travels between a pool and its workers is in
`gossipser.learn.jobs`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from gossipser.learn.jobs import Params, PoolSpec, Shard, TrainJob, TrainResult
from gossipser.learn.metrics import Scores
from gossipser.learn.models import attach_generator, build_model, get_state, set_state
from gossipser.learn.settings import steps_per_epoch
from gossipser.learn.train import LocalTrainer, evaluate

PARK_ABOVE = 32  # a process holding more peers than this keeps their trainers parked


class _Trainers:
    """The trainers of a set of shards plus one evaluation model (used in every pool).

    Live (up to `PARK_ABOVE` peers, or `park=False`): one `LocalTrainer` (torch module, Adam)
    per peer, kept between rounds. Parked (more peers, as when a simulation holds thousands):
    no module per peer. Each peer keeps a `LocalTrainer` of its own (its shard, Adam and its
    moment tensors, RNG streams) built on the one module the process shares, into which a job
    loads the peer's weights. DP-SGD wraps a module per trainer, so a private peer is parked
    instead: between jobs only its trainer's state (what a checkpoint holds), unparked into a
    fresh module. All three give the same weights.
    """

    def __init__(self, spec: PoolSpec, shards: Sequence[Shard], *,
                 park: bool | None = None) -> None:
        self.spec = spec
        self.shards = {s.peer: s for s in shards}
        self.park = len(self.shards) > PARK_ABOVE if park is None else park
        self.parked: dict[int, dict] = {}  # DP-SGD: LocalTrainer.park(), tensors, no module
        self.sharing: dict[int, LocalTrainer] = {}  # otherwise: trainers on `_module`
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
        """Peer `peer`'s trainer on the shared module (its dropout drawing from the peer's
        own stream again), built at its first job. DP-SGD wraps its module for per-sample
        gradients, so a private trainer is rebuilt on a module of its own each job, in the
        state it was parked in."""
        if self.spec.train.dp is None:
            if self._module is None:
                self._module = self._build()
            t = self.sharing.get(peer)
            if t is None:
                t = self.sharing[peer] = self._trainer(self.shards[peer], self._module)
            attach_generator(self._module, t.dropout_generator)
            return t
        t = self._trainer(self.shards[peer], self._build())
        parked = self.parked.get(peer)
        if parked is not None:
            t.unpark(parked)
        return t

    def initial(self, seed: int) -> Params:
        """A fresh model's state, initialised from `seed` (as every peer builds it)."""
        return get_state(self._build(seed))

    def steps_per_epoch(self) -> dict[int, int]:
        return {p: steps_per_epoch(len(s.y), self.spec.train.batch_size)
                for p, s in self.shards.items()}

    def train(self, job: TrainJob) -> TrainResult:
        t = self._unpark(job.peer) if self.park else self.trainers[job.peer]
        set_state(t.model, job.params)
        before, t0 = t.samples_done, time.perf_counter()
        loss = t.train_steps(job.steps)
        seconds = time.perf_counter() - t0
        if self.park and self.spec.train.dp is not None:
            self.parked[job.peer] = t.park()
        return TrainResult(peer=job.peer, params=get_state(t.model), loss=loss, steps=job.steps,
                           samples=t.samples_done - before, epsilon=t.epsilon,
                           noise=t.noise, seconds=seconds)

    def evaluate(self, params: Params) -> Scores:
        set_state(self.eval_model, params)
        return evaluate(self.eval_model, self.spec.test_x, self.spec.test_y, self.spec.n_classes,
                        groups=self.spec.test_groups)
