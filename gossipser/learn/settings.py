"""What a model and its training are asked to be: the `[model]` and `[train]` configs and the
small rules derived from them. No torch here, so that a process that only plans a run (the
simulator's main process, whose training processes do the torch work) never imports it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gossipser.config import check_types
from gossipser.errors import ConfigError

if TYPE_CHECKING:
    from gossipser.data.features import FeatureConfig

KINDS = ("dnn", "cnn", "lstm")


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "cnn"
    width: int = 64  # DNN hidden units / 4, CNN channels, LSTM hidden size per direction
    dropout: float = 0.3
    # normalisation inside the CNN and of the DNN's input: "batch" (BatchNorm: running
    # statistics are part of the model and get averaged), "group" (GroupNorm, 8 groups: no
    # statistics, per-sample, as DP-SGD needs) or "none"
    norm: str = "batch"
    # which statistics BatchNorm normalises with at inference: "speaker" (those of the
    # speaker's own utterances, computed on the device as speaker-scope CMVN is) or "running"
    # (the running averages of training). One speaker per peer means every training batch is
    # one speaker's, so the running averages hold within-speaker spread only; a new speaker's
    # activations normalised by them drift off what the layers were trained on.
    bn_stats: str = "speaker"

    def __post_init__(self) -> None:
        check_types(self, "model")
        if self.kind not in KINDS:
            raise ConfigError(f"model kind {self.kind!r} unknown; choose one of {', '.join(KINDS)}")
        if not 4 <= self.width <= 1024:
            raise ConfigError("model width must be in [4, 1024]")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("model dropout must be in [0, 1)")
        if self.norm not in ("batch", "group", "none"):
            raise ConfigError(f"[model] norm must be batch, group or none, got {self.norm!r}")
        if self.bn_stats not in ("speaker", "running"):
            raise ConfigError(f"[model] bn_stats must be speaker or running, got "
                              f"{self.bn_stats!r}")

    @property
    def view(self) -> str:
        """Which feature view the model reads: utterance statistics or a frame sequence."""
        return "stats" if self.kind == "dnn" else "sequence"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


AUGMENTATIONS: tuple[str, ...] = ("shift", "mask")
SCHEDULES: tuple[str, ...] = ("onecycle", "constant")


def parse_augment(spec: str) -> tuple[str, ...]:
    """'shift,mask' -> ('shift', 'mask'); '' or 'none' -> (). Raises ValueError on a bad name."""
    names = tuple(s.strip() for s in spec.split(",") if s.strip() and s.strip() != "none")
    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad:
        raise ValueError(f"unknown augmentation {', '.join(bad)}; choose from "
                         f"{', '.join(AUGMENTATIONS)} or none")
    return names


@dataclass(frozen=True)
class DPSettings:
    """What `TrainConfig`'s dp_* fields ask for (noise None: calibrate to `epsilon`)."""

    clip: float
    delta: float
    noise: float | None = None
    epsilon: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_balanced: bool = False
    label_smoothing: float = 0.1
    # learning-rate schedule over the planned steps, and batch augmentation
    # (gossipser.learn.augment: "shift", "mask", both comma-separated, or "none")
    schedule: str = "onecycle"
    augment: str = "shift,mask"
    # DP-SGD (gossipser.learn.dp): a target epsilon (noise calibrated from the planned
    # steps) or a noise multiplier; per-sample gradients clipped to dp_clip
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_noise: float | None = None
    dp_clip: float = 1.0

    def __post_init__(self) -> None:
        check_types(self, "train")
        if self.dp_epsilon is not None and self.dp_noise is not None:
            raise ConfigError("train config: give dp_epsilon or dp_noise, not both")
        if (self.dp_epsilon is not None and not self.dp_epsilon > 0
                or self.dp_noise is not None and not self.dp_noise > 0):
            raise ConfigError("train config: dp_epsilon and dp_noise must be > 0")
        if not 0 < self.dp_delta < 1 or not self.dp_clip > 0:
            raise ConfigError("train config: need 0 < dp_delta < 1 and dp_clip > 0")
        if self.epochs < 0 or self.batch_size < 2 or not 0 < self.lr < 1:
            raise ConfigError("train config: need epochs >= 0, batch_size >= 2, 0 < lr < 1")
        if not 0 <= self.label_smoothing < 1 or self.weight_decay < 0:
            raise ConfigError("train config: label_smoothing in [0, 1), weight_decay >= 0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"train config: schedule must be one of {', '.join(SCHEDULES)}")
        try:
            parse_augment(self.augment)
        except ValueError as exc:
            raise ConfigError(f"train config: {exc}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def dp(self) -> DPSettings | None:
        """DP-SGD settings, or None when training is not private."""
        if self.dp_epsilon is None and self.dp_noise is None:
            return None
        return DPSettings(clip=self.dp_clip, delta=self.dp_delta, noise=self.dp_noise,
                          epsilon=self.dp_epsilon)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps of one epoch over `n` examples (none below two: no batch of one)."""
    return max(1, n // batch_size) if n >= 2 else 0


def n_inputs(features: FeatureConfig, config: ModelConfig) -> int:
    return 2 * features.dim if config.view == "stats" else features.dim


def speaker_groups(cfg: ModelConfig, speakers: np.ndarray) -> np.ndarray | None:
    """The speaker of each test row when `cfg` normalises BatchNorm by the
    speaker's own statistics, else None (running averages)."""
    return np.asarray(speakers) if cfg.norm == "batch" and cfg.bn_stats == "speaker" else None
