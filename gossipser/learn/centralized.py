"""Centralized baseline: all training speakers pooled on one machine (the upper reference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from gossipser.data.dataset import Dataset
from gossipser.learn.metrics import Scores
from gossipser.learn.models import build_model
from gossipser.learn.settings import ModelConfig, TrainConfig, n_inputs, speaker_groups
from gossipser.learn.train import LocalTrainer, evaluate

EpochCallback = Callable[[int, float], None]


@dataclass
class BaselineResult:
    model: nn.Module
    scores: Scores
    losses: list[float]
    history: list[tuple[int, Scores]] = field(default_factory=list)  # (epoch, test scores)
    steps: int = 0  # optimiser steps
    samples: int = 0  # examples the optimiser saw
    epsilon: float | None = None  # DP-SGD: privacy spent at train_cfg.dp_delta (None: off)
    noise: float | None = None


def train_centralized(
    ds: Dataset, train_idx: np.ndarray, test_idx: np.ndarray, *, model_cfg: ModelConfig,
    train_cfg: TrainConfig, seed: int, on_epoch: EpochCallback | None = None,
    eval_every: int = 0,
) -> BaselineResult:
    """Train one model on `train_idx`, evaluate on the held-out `test_idx` (also every
    `eval_every` epochs when > 0, kept in `history`)."""
    model = build_model(
        model_cfg, n_features=n_inputs(ds.cfg, model_cfg), n_classes=len(ds.classes), seed=seed,
    )
    x_train = ds.inputs(model_cfg.view, train_idx)
    trainer = LocalTrainer(
        model=model, x=x_train, y=ds.labels[train_idx], n_classes=len(ds.classes),
        cfg=train_cfg, seed=seed,
    )
    x_test, y_test = ds.inputs(model_cfg.view, test_idx), ds.labels[test_idx]
    groups = speaker_groups(model_cfg, ds.speakers[test_idx])
    losses, history = [], []
    for epoch in range(train_cfg.epochs):
        losses.append(trainer.train_epochs(1))
        if eval_every and (epoch + 1) % eval_every == 0:
            history.append((epoch + 1, evaluate(model, x_test, y_test, len(ds.classes),
                                                groups=groups)))
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    scores = evaluate(model, x_test, y_test, len(ds.classes), groups=groups)
    return BaselineResult(model=model, scores=scores, losses=losses, history=history,
                          steps=trainer.steps_done, samples=trainer.samples_done,
                          epsilon=trainer.epsilon, noise=trainer.noise)
