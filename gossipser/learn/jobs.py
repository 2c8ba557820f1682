"""What travels between a training pool and its workers: peers' shards, the test set, the
jobs and their results. Plain numpy, no torch: the simulator's own process plans a run and
hands these over without importing torch (its training processes do the torch work).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gossipser.learn.settings import ModelConfig, TrainConfig

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
