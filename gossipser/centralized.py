"""Centralized baseline: all training speakers pooled on one machine (the upper reference)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from torch import nn

from gossipser.dataset import Dataset
from gossipser.metrics import Scores
from gossipser.modelio import n_inputs
from gossipser.models import ModelConfig, build_model
from gossipser.train import LocalTrainer, TrainConfig, evaluate

EpochCallback = Callable[[int, float], None]


@dataclass
class BaselineResult:
    model: nn.Module
    scores: Scores
    losses: list[float]


def train_centralized(
    ds: Dataset, train_idx: np.ndarray, test_idx: np.ndarray, *, model_cfg: ModelConfig,
    train_cfg: TrainConfig, seed: int, on_epoch: EpochCallback | None = None,
) -> BaselineResult:
    """Train one model on `train_idx`, evaluate on the held-out `test_idx`."""
    model = build_model(
        model_cfg, n_features=n_inputs(ds.cfg, model_cfg), n_classes=len(ds.classes), seed=seed,
    )
    x_train = ds.inputs(model_cfg.view, train_idx)
    trainer = LocalTrainer(
        model=model, x=x_train, y=ds.labels[train_idx], n_classes=len(ds.classes),
        cfg=train_cfg, seed=seed,
    )
    losses = []
    for epoch in range(train_cfg.epochs):
        losses.append(trainer.train_epochs(1))
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    scores = evaluate(model, ds.inputs(model_cfg.view, test_idx), ds.labels[test_idx],
                      len(ds.classes))
    return BaselineResult(model=model, scores=scores, losses=losses)
