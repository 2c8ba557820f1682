"""Run configuration: one TOML file with sections, overridden by command-line flags.

    [data]      path, corpus, emotions, test_speakers, cache_dir
    [features]  FeatureConfig fields
    [model]     ModelConfig fields
    [train]     TrainConfig fields
    [gossip]    simulator / peer settings (see gossipser.gossip)
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from gossipser.errors import ConfigError
from gossipser.features import FeatureConfig
from gossipser.models import ModelConfig
from gossipser.train import TrainConfig

SECTIONS = ("data", "features", "model", "train", "gossip", "network", "fedavg")


def read_toml(path: Path | str | None) -> dict[str, dict[str, Any]]:
    """Parse a run config; unknown sections or a syntax error give one clear line."""
    if path is None:
        return {}
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: {exc}") from None
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"config {path}: unknown section(s) {unknown}; known: {SECTIONS}")
    for name, section in doc.items():
        if not isinstance(section, dict):
            raise ConfigError(f"config {path}: [{name}] must be a table")
    return doc


def build(cls: type, section: dict[str, Any], overrides: dict[str, Any], where: str):
    """`cls(**section)` with non-None `overrides` on top; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    merged = {**section, **{k: v for k, v in overrides.items() if v is not None}}
    unknown = sorted(set(merged) - names)
    if unknown:
        raise ConfigError(f"[{where}]: unknown key(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**merged)
    except TypeError as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


def run_configs(args: Any, doc: dict[str, dict[str, Any]]):
    """(FeatureConfig, ModelConfig, TrainConfig) from a TOML doc and parsed CLI flags."""
    a = vars(args)
    features = build(FeatureConfig, doc.get("features", {}), {
        "n_mfcc": a.get("n_mfcc"), "deltas": a.get("deltas"), "frame_ms": a.get("frame_ms"),
        "hop_ms": a.get("hop_ms"), "max_frames": a.get("max_frames"),
    }, "features")
    model = build(ModelConfig, doc.get("model", {}), {
        "kind": a.get("model"), "width": a.get("width"), "dropout": a.get("dropout"),
    }, "model")
    train = build(TrainConfig, doc.get("train", {}), {
        "epochs": a.get("epochs"), "batch_size": a.get("batch_size"), "lr": a.get("lr"),
        "class_balanced": a.get("class_balanced") or None,
    }, "train")
    return features, model, train
