"""Saved models: weights as a pickle-free .npz beside a JSON card (classes, configs)."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from gossipser.data.features import FeatureConfig
from gossipser.errors import ConfigError
from gossipser.learn.models import build_model, get_state, set_state
from gossipser.learn.settings import ModelConfig, n_inputs

WEIGHTS = "model.npz"
CARD = "model.json"


@dataclass(frozen=True)
class SavedModel:
    model: nn.Module
    classes: tuple[str, ...]
    features: FeatureConfig
    config: ModelConfig


def save_model(
    out: Path, model: nn.Module, *, classes: tuple[str, ...], features: FeatureConfig,
    config: ModelConfig, extra: dict | None = None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / WEIGHTS, **get_state(model))
    card = {
        "format": "gossipser-model/1", "classes": list(classes),
        "features": features.to_dict(), "model": config.to_dict(), **(extra or {}),
    }
    (out / CARD).write_text(json.dumps(card, indent=2) + "\n")


def load_model(path: Path | str) -> SavedModel:
    """Load a model folder written by `save_model` (or the .json/.npz inside it)."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    card_file, weights_file = folder / CARD, folder / WEIGHTS
    if not card_file.exists() or not weights_file.exists():
        raise ConfigError(f"no saved model in {folder} (expected {CARD} and {WEIGHTS})")
    try:
        card = json.loads(card_file.read_text())
        if card.get("format") != "gossipser-model/1":
            raise ConfigError(f"{card_file} is not a gossipser model card")
        classes = tuple(str(c) for c in card["classes"])
        features = FeatureConfig.from_dict(card["features"])
        config = ModelConfig(**card["model"])
        with open(weights_file, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
    except (KeyError, TypeError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"cannot load model from {folder}: {exc}") from None
    model = build_model(config, n_features=n_inputs(features, config), n_classes=len(classes))
    missing = sorted(set(get_state(model)) - set(state))
    if missing:
        raise ConfigError(f"cannot load model from {folder}: {WEIGHTS} lacks {missing[:3]}")
    set_state(model, state)
    model.eval()
    return SavedModel(model=model, classes=classes, features=features, config=config)
