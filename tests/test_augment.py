"""Batch augmentation and the learning-rate schedule of local training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gossipser.errors import ConfigError
from gossipser.learn.augment import augment
from gossipser.learn.models import build_model
from gossipser.learn.schedule import lr_at
from gossipser.learn.settings import ModelConfig, TrainConfig, parse_augment
from gossipser.learn.train import LocalTrainer


def _batch(b: int = 6, t: int = 50, d: int = 26) -> torch.Tensor:
    return torch.arange(b * t * d, dtype=torch.float32).reshape(b, t, d) + 1.0


def test_shift_rolls_each_utterance_in_time_within_a_fifth() -> None:
    x = _batch()
    out = augment(x, ("shift",), torch.Generator().manual_seed(0))
    shifts = set()
    for b in range(len(x)):
        # a roll: some shift s makes the two equal, and the frames themselves are untouched
        found = [s for s in range(-10, 11) if torch.equal(torch.roll(x[b], s, dims=0), out[b])]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 1  # not one shift for the whole batch
    assert torch.equal(x, _batch())  # the input is not modified in place


def test_mask_zeroes_bands_only() -> None:
    x = _batch(b=64)
    out = augment(x, ("mask",), torch.Generator().manual_seed(1))
    zero = out == 0
    assert torch.equal(out[~zero], x[~zero])
    assert zero.any()
    # at most two time masks of 50 // 7 = 7 frames and one band of 26 // 13 = 2 coefficients
    full_frames = zero.all(dim=2).sum(dim=1)
    assert int(full_frames.max()) <= 14
    assert int(zero.all(dim=1).sum(dim=1).max()) <= 2


def test_augment_leaves_statistics_views_and_no_augmentation_alone() -> None:
    g = torch.Generator().manual_seed(0)
    stats = torch.randn(5, 26)
    assert augment(stats, ("shift", "mask"), g) is stats
    x = _batch()
    assert augment(x, (), g) is x


def test_parse_augment_names_and_errors() -> None:
    assert parse_augment("shift, mask") == ("shift", "mask")
    assert parse_augment("none") == () == parse_augment("")
    with pytest.raises(ValueError, match="unknown augmentation mixup"):
        parse_augment("shift,mixup")
    with pytest.raises(ConfigError, match="augmentation"):
        TrainConfig(augment="speed")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")


def test_onecycle_warms_up_peaks_and_decays() -> None:
    total, lr = 1000, 1e-3
    curve = np.array([lr_at(s, total, lr, "onecycle") for s in range(total + 50)])
    assert curve[0] == pytest.approx(lr / 25)
    assert curve.max() == pytest.approx(lr)
    assert int(curve.argmax()) == 100  # the end of the warm-up tenth
    assert np.all(np.diff(curve[:100]) > 0) and np.all(np.diff(curve[100:total]) < 0)
    assert curve[total - 1] < lr / 1000 and curve[-1] == curve[total]  # flat past the plan
    assert lr_at(7, total, lr, "constant") == lr == lr_at(7, 0, lr, "onecycle")


def _trainer(cfg: TrainConfig, planned: int | None = None) -> LocalTrainer:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 30, 13)).astype(np.float32), rng.integers(0, 4, 40)
    model = build_model(ModelConfig(kind="cnn", width=8), n_features=13, n_classes=4, seed=0)
    return LocalTrainer(model=model, x=x, y=y, n_classes=4, cfg=cfg, seed=0,
                        planned_steps=planned)


def test_trainer_follows_the_schedule_over_its_planned_steps() -> None:
    t = _trainer(TrainConfig(epochs=2, batch_size=8, lr=1e-2), planned=20)
    t.train_steps(10)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(9, 20, 1e-2, "onecycle"))
    t.train_steps(10)
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(lr_at(19, 20, 1e-2, "onecycle"))
    flat = _trainer(TrainConfig(epochs=2, batch_size=8, lr=1e-2, schedule="constant"))
    flat.train_steps(5)
    assert flat.optimizer.param_groups[0]["lr"] == 1e-2
    assert _trainer(TrainConfig(epochs=3, batch_size=8)).planned_steps == 15


def test_resumed_trainer_continues_the_same_augmented_run() -> None:
    cfg = TrainConfig(epochs=2, batch_size=8, augment="shift,mask")
    whole = _trainer(cfg)  # 5 steps an epoch; each call starts a fresh permutation
    whole.train_steps(5)
    whole.train_steps(5)
    first = _trainer(cfg)
    first.train_steps(5)
    saved = {**first.state(), **{k: v.detach().numpy().copy()
                                 for k, v in first.model.state_dict().items()}}
    second = _trainer(cfg)
    second.model.load_state_dict({k: torch.from_numpy(saved[k])
                                  for k in second.model.state_dict()})
    second.load_state(saved)
    second.train_steps(5)
    for a, b in zip(whole.model.parameters(), second.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # without augmentation the same seed gives another run: augmentation is really applied
    plain = _trainer(TrainConfig(epochs=2, batch_size=8, augment="none"))
    plain.train_steps(5)
    plain.train_steps(5)
    assert not all(torch.allclose(a, b) for a, b in
                   zip(whole.model.parameters(), plain.model.parameters(), strict=True))
