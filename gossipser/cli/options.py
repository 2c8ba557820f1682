"""How command-line flags and TOML sections become the feature, model and training configs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gossipser.config import build, check_types
from gossipser.data.features import FeatureConfig
from gossipser.learn.settings import ModelConfig, TrainConfig


@dataclass(frozen=True)
class DataConfig:
    """[data] section: where the corpus is and which part of it a run uses."""

    path: str | None = None  # corpus folder (default: the bundled synthetic corpus)
    corpus: str = "auto"  # loader name, or auto-detect
    emotions: str | list[str] | None = None  # a named set, "a,b,c" or a list
    test_speakers: str | list | None = None  # "21,22" or a list of names/numbers
    iemocap_improvised_only: bool = False  # IEMOCAP: keep the improvised dialogs only
    cache_dir: str | None = None  # feature cache
    seed: int = 0  # `gossipser peer`/`server`: the run seed every process shares
    run: str | None = None  # `gossipser peer`/`server`: run id (default: from seed and config)

    def __post_init__(self) -> None:
        check_types(self, "data")


class NoFlags:
    """No command-line overrides: every setting comes from the config document (a networked
    run, which its config alone defines; a recorded run read back by `gossipser attack`)."""

    def __getattr__(self, name: str) -> Any:
        return None


def data_config(doc: dict[str, dict[str, Any]]) -> DataConfig:
    """The [data] section of a TOML doc, typed and checked."""
    return build(DataConfig, doc.get("data", {}), {}, "data")


def run_configs(args: Any, doc: dict[str, dict[str, Any]]):
    """(FeatureConfig, ModelConfig, TrainConfig) from a TOML doc and parsed CLI flags."""
    a = vars(args)
    features = build(FeatureConfig, doc.get("features", {}), {
        "n_mfcc": a.get("n_mfcc"), "deltas": a.get("deltas"), "frame_ms": a.get("frame_ms"),
        "hop_ms": a.get("hop_ms"), "max_frames": a.get("max_frames"),
        "cmvn_scope": a.get("cmvn_scope"),
    }, "features")
    train = build(TrainConfig, doc.get("train", {}), {
        "epochs": a.get("epochs"), "batch_size": a.get("batch_size"), "lr": a.get("lr"),
        "class_balanced": a.get("class_balanced") or None, "dp_epsilon": a.get("dp_epsilon"),
        "dp_noise": a.get("dp_noise"), "dp_delta": a.get("dp_delta"), "dp_clip": a.get("dp_clip"),
        "schedule": a.get("schedule"), "augment": a.get("augment"),
    }, "train")
    norm = a.get("norm")
    if norm is None and "norm" not in doc.get("model", {}) and train.dp is not None:
        norm = "group"  # DP-SGD needs per-sample gradients, which BatchNorm does not have
    model = build(ModelConfig, doc.get("model", {}), {
        "kind": a.get("model"), "width": a.get("width"), "dropout": a.get("dropout"),
        "norm": norm, "bn_stats": a.get("bn_stats"),
    }, "model")
    return features, model, train


def gossip_config(args: Any, doc: dict):
    """The `[gossip]` config: the flags over the TOML section over the defaults."""
    from gossipser.gossip.settings import GossipConfig

    a = vars(args)
    keys = ("algorithm", "topology", "peers", "rounds", "local_epochs", "step_share", "mixing",
            "partition", "drop", "churn", "stragglers", "fraction", "eval_every", "workers",
            "patience", "private_layers", "robust", "byzantine", "attack", "backend",
            "ray_address", "clock", "device_speed", "step_time", "latency", "bandwidth",
            "churn_period", "wait", "init")
    return build(GossipConfig, doc.get("gossip", {}), {k: a.get(k) for k in keys}, "gossip")
