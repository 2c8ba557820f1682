"""Local training: one optimiser over one holder's data. Peers, the FedAvg clients and the
centralized baseline all train through `LocalTrainer`."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from gossipser.learn.augment import augment
from gossipser.learn.dp import PrivateSteps
from gossipser.learn.metrics import Scores, score
from gossipser.learn.models import attach_generator
from gossipser.learn.schedule import lr_at
from gossipser.learn.settings import TrainConfig, parse_augment, steps_per_epoch


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights normalised to mean 1 over the classes present."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / max((counts > 0).sum(), 1), 0)
    return w.astype(np.float32)


class LocalTrainer:
    """Adam on one data shard with a local torch.Generator for batch order, augmentation and
    the learning rate on `cfg.schedule` over `planned_steps` (default: cfg.epochs epochs);
    with DP-SGD (`cfg.dp`), clipped and noised steps on Poisson batches, calibrated to the
    same planned steps."""

    def __init__(
        self, *, model: nn.Module, x: np.ndarray, y: np.ndarray, n_classes: int,
        cfg: TrainConfig, seed: int, planned_steps: int | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.generator = torch.Generator().manual_seed(int(seed))
        # dropout masks come from a generator of our own: a trainer's stream depends only on
        # its seed, whatever else runs in the process or in other threads
        self.dropout_generator = torch.Generator().manual_seed(int(seed) + 1)
        attach_generator(model, self.dropout_generator)
        self.augment_generator = torch.Generator().manual_seed(int(seed) + 3)
        self.augmentations = parse_augment(cfg.augment)
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
        )
        weight = (torch.from_numpy(class_weights(np.asarray(y, np.int64), n_classes))
                  if cfg.class_balanced and len(y) else None)
        self.loss_fn = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        self.steps_done = 0
        self.samples_done = 0  # examples seen by the optimiser (steps x batch, summed)
        self.private: PrivateSteps | None = None
        self.planned_steps = (cfg.epochs * self.steps_per_epoch() if planned_steps is None
                              else planned_steps)
        if cfg.dp is not None:
            self.private = PrivateSteps(
                model=model, optimizer=self.optimizer, dp=cfg.dp, n=self.n_samples,
                batch_size=cfg.batch_size, planned_steps=self.planned_steps, seed=int(seed) + 2)
            self.sum_loss = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing,
                                                reduction="sum")

    @property
    def epsilon(self) -> float | None:
        """The privacy spent so far at `cfg.dp_delta` (None: training is not private)."""
        return None if self.private is None else self.private.epsilon()

    @property
    def noise(self) -> float | None:
        """The DP-SGD noise multiplier (None: training is not private)."""
        return None if self.private is None else self.private.noise

    @property
    def n_samples(self) -> int:
        return len(self.y)

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.n_samples, self.cfg.batch_size)

    def _batches(self, steps: int):
        """`steps` index batches drawn from fresh permutations; never a batch of one
        (BatchNorm cannot train on it), so a trailing singleton joins the previous batch."""
        n, bs = self.n_samples, min(self.cfg.batch_size, self.n_samples)
        done = 0
        while done < steps:
            perm = torch.randperm(n, generator=self.generator)
            cuts = list(range(0, n - bs + 1, bs))
            for i, start in enumerate(cuts):
                end = n if i == len(cuts) - 1 and n - (start + bs) < bs else start + bs
                yield perm[start:end]
                done += 1
                if done == steps:
                    return

    def train_steps(self, steps: int) -> float:
        """Run `steps` optimiser steps; returns the mean training loss (nan if none)."""
        if steps <= 0 or self.n_samples < 2:
            return float("nan")
        self.model.train()
        if self.private is not None:
            return self._private_steps(steps)
        total = 0.0
        count = 0
        for idx in self._batches(steps):
            self._set_lr(self.steps_done + count)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self._inputs(idx)), self.y[idx])
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
            count += 1
            self.samples_done += len(idx)
        self.steps_done += count
        return total / max(count, 1)

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        return augment(self.x[idx], self.augmentations, self.augment_generator)

    def _set_lr(self, step: int) -> None:
        lr = lr_at(step, self.planned_steps, self.cfg.lr, self.cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _private_steps(self, steps: int) -> float:
        dp = self.private
        total, seen = 0.0, 0
        for k in range(steps):
            idx = dp.batch()  # may be empty: the step is then noise alone, as accounted
            self._set_lr(self.steps_done + k)
            loss = self.sum_loss(dp.module(self._inputs(idx)), self.y[idx])
            dp.step(loss)
            total += float(loss.detach())
            seen += len(idx)
        self.samples_done += seen
        self.steps_done += steps
        return total / max(seen, 1)

    def state(self) -> dict[str, np.ndarray]:
        """Optimiser moments and RNG states as plain arrays (for checkpoints, no pickle)."""
        out = {**(self.private.state() if self.private is not None else {}),
               "_rng.batches": self.generator.get_state().numpy(),
               "_rng.dropout": self.dropout_generator.get_state().numpy(),
               "_rng.augment": self.augment_generator.get_state().numpy(),
               "_steps": np.array(self.steps_done, dtype=np.int64)}
        for i, st in self.optimizer.state_dict()["state"].items():
            for key, value in st.items():
                out[f"_adam.{i}.{key}"] = value.detach().numpy().copy()
        return out

    def load_state(self, saved: dict[str, np.ndarray]) -> None:
        self.generator.set_state(torch.from_numpy(np.array(saved["_rng.batches"])))
        self.dropout_generator.set_state(torch.from_numpy(np.array(saved["_rng.dropout"])))
        if "_rng.augment" in saved:  # checkpoints written before augmentation existed
            self.augment_generator.set_state(torch.from_numpy(np.array(saved["_rng.augment"])))
        self.steps_done = int(saved["_steps"])
        if self.private is not None:
            self.private.load_state(saved)
        opt = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in saved.items():
            if name.startswith("_adam."):
                _, i, key = name.split(".", 2)
                state.setdefault(int(i), {})[key] = torch.from_numpy(np.array(value))
        self.optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})

    def _generators(self) -> tuple[torch.Generator, ...]:
        return self.generator, self.dropout_generator, self.augment_generator

    def park(self) -> dict:
        """What this trainer carries from one job to the next, by reference and without a
        copy: Adam's moment tensors, the RNG states, the step count (and DP-SGD's accountant).
        A trainer of the same shard made later continues exactly after `unpark`."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return {"adam": [self.optimizer.state.get(p) for p in params],
                "rng": [g.get_state() for g in self._generators()],
                "steps": self.steps_done,
                "private": None if self.private is None else self.private.state()}

    def unpark(self, parked: dict) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        for p, st in zip(params, parked["adam"], strict=True):
            if st is not None:
                self.optimizer.state[p] = st
        for g, st in zip(self._generators(), parked["rng"], strict=True):
            g.set_state(st)
        self.steps_done = parked["steps"]
        if parked["private"] is not None:
            self.private.load_state(parked["private"])

    def train_epochs(self, epochs: float) -> float:
        return self.train_steps(int(round(epochs * self.steps_per_epoch())))


def _batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def speaker_statistics(model: nn.Module, x: np.ndarray, *, batch_size: int = 256):
    """Within the block, `model`'s BatchNorm layers normalise with the statistics of `x`
    (one speaker's utterances, no labels needed) instead of their running averages; the
    running averages are put back afterwards. The model is in eval mode within the block."""
    norms = _batch_norms(model)
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(),
              m.momentum) for m in norms]
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the chunks below
            m.train()
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size],
                                                            dtype=np.float32)))
        model.eval()
        yield model
    finally:
        with torch.no_grad():
            for m, (mean, var, count, momentum) in zip(norms, saved, strict=True):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
                m.momentum = momentum


def _probabilities(model: nn.Module, x: np.ndarray, batch_size: int) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32))
            out.append(torch.softmax(model(xb), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict_proba(model: nn.Module, x: np.ndarray, *, groups: np.ndarray | None = None,
                  batch_size: int = 256) -> np.ndarray:
    """Class probabilities, (N, n_classes), with the model in eval mode. With `groups` (the
    speaker of each row) BatchNorm uses each speaker's own statistics (`speaker_statistics`);
    a speaker with a single row of utterance statistics (DNN) keeps the running averages."""
    if groups is None or not _batch_norms(model) or len(x) == 0:
        return _probabilities(model, x, batch_size)
    groups = np.asarray(groups)
    out: np.ndarray | None = None
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if len(idx) < 2 and x.ndim == 2:  # one utterance's statistics vector has no spread:
            probs = _probabilities(model, x[idx], batch_size)  # the running averages serve
        else:
            with speaker_statistics(model, x[idx], batch_size=batch_size):
                probs = _probabilities(model, x[idx], batch_size)
        if out is None:
            out = np.zeros((len(x), probs.shape[1]), np.float32)
        out[idx] = probs
    return out


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, n_classes: int, *,
             groups: np.ndarray | None = None) -> Scores:
    """Scores on (x, y); `groups` as for `predict_proba`."""
    if len(y) == 0:
        return score(np.zeros(0, int), np.zeros(0, int), n_classes)
    return score(y, predict_proba(model, x, groups=groups).argmax(axis=1), n_classes)
