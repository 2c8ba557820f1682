"""How command-line flags and TOML sections become the feature, model and training configs."""

from __future__ import annotations

from typing import Any

from gossipser.config import build
from gossipser.data.features import FeatureConfig
from gossipser.learn.models import ModelConfig
from gossipser.learn.train import TrainConfig


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
