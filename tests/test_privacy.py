"""DP-SGD: per-utterance clipping, the accountant, and what train/simulate report."""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm as gaussian
from torch import nn

from gossipser.cli.main import main
from gossipser.errors import ConfigError
from gossipser.learn.dp import PrivateSteps, check_model, epsilon_of, noise_multiplier
from gossipser.learn.models import build_model, get_state
from gossipser.learn.settings import DPSettings, ModelConfig, TrainConfig
from gossipser.learn.train import LocalTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOSSIPSER_CACHE", str(tmp_path / "cache"))


def _exact_gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """The exact epsilon of `steps` full-batch Gaussian steps (Balle & Wang 2018: the
    composition is one Gaussian mechanism with mu = sqrt(steps) / sigma), by bisection."""
    mu = math.sqrt(steps) / sigma

    def delta_of(eps: float) -> float:
        return gaussian.cdf(-eps / mu + mu / 2) - math.exp(eps) * gaussian.cdf(-eps / mu - mu / 2)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 10), (2.0, 100), (5.0, 400)])
def test_accountant_bounds_the_exact_epsilon_of_full_batch_steps(sigma: float,
                                                                 steps: int) -> None:
    # Execute: with sample rate 1 the mechanism is a plain Gaussian, whose epsilon is known
    rdp = epsilon_of(sigma, 1.0, steps, 1e-5)
    exact = _exact_gaussian_epsilon(sigma, steps, 1e-5)

    # Assert: RDP is an upper bound, and not a loose one
    assert exact <= rdp <= 1.4 * exact


def test_subsampling_and_fewer_steps_spend_less() -> None:
    full = epsilon_of(1.0, 1.0, 100, 1e-5)
    assert epsilon_of(1.0, 0.1, 100, 1e-5) < full
    assert epsilon_of(1.0, 1.0, 50, 1e-5) < full
    assert epsilon_of(1.0, 0.1, 0, 1e-5) == 0.0


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_calibrated_noise_meets_the_target_epsilon(target: float) -> None:
    dp = DPSettings(clip=1.0, delta=1e-5, epsilon=target)

    sigma = noise_multiplier(dp, sample_rate=0.25, steps=300)

    spent = epsilon_of(sigma, 0.25, 300, 1e-5)
    assert target - 0.05 <= spent <= target
    assert epsilon_of(sigma * 0.9, 0.25, 300, 1e-5) > target  # and it is not far too noisy


def _tiny_dnn() -> nn.Module:
    return build_model(ModelConfig(kind="dnn", width=4, dropout=0.0, norm="none"),
                       n_features=6, n_classes=3, seed=0)


def _clipped_mean_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           clip: float) -> list[torch.Tensor]:
    """The reference: each example's gradient on its own, clipped to `clip`, averaged."""
    total = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1], reduction="sum").backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
        scale = min(1.0, clip / float(norm))
        total = [t + scale * g for t, g in zip(total, grads, strict=True)]
    return [t / len(x) for t in total]


@pytest.mark.parametrize("clip", [0.05, 1e6])
def test_private_gradient_is_the_mean_of_per_utterance_clipped_gradients(clip: float) -> None:
    # Prepare: a full batch of 8 (sample rate 1) and noise too small to matter
    model = _tiny_dnn()
    reference_model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 6, generator=g) * 3, torch.randint(0, 3, (8,), generator=g)
    expected = _clipped_mean_gradient(reference_model, x, y, clip)
    steps = PrivateSteps(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         dp=DPSettings(clip=clip, delta=1e-5, noise=1e-15), n=8, batch_size=8,
                         planned_steps=1, seed=0)

    # Execute
    steps.gradients(nn.functional.cross_entropy(steps.module(x), y, reduction="sum"))

    # Assert: clipped (clip 0.05 binds on every example) or plain mean (clip 1e6)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-7)
    got = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    if clip < 1:
        assert float(got) <= clip + 1e-6


def test_noise_has_the_calibrated_scale() -> None:
    # Prepare: zero inputs into a bias-free layer give zero gradients, so p.grad is noise alone
    model = nn.Sequential(nn.Linear(200, 50, bias=False))
    steps = PrivateSteps(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                         dp=DPSettings(clip=0.5, delta=1e-5, noise=2.0), n=10, batch_size=10,
                         planned_steps=1, seed=0)

    # Execute
    steps.gradients(steps.module(torch.zeros(10, 200)).sum())

    # Assert: std = noise x clip / expected batch size
    std = float(model[0].weight.grad.std())
    assert std == pytest.approx(2.0 * 0.5 / 10, rel=0.05)


def _dp_trainer(seed: int = 0, **dp) -> LocalTrainer:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    cfg = TrainConfig(epochs=2, batch_size=8, **({"dp_epsilon": 4.0} | dp))
    return LocalTrainer(model=_tiny_dnn(), x=x, y=y, n_classes=3, cfg=cfg, seed=seed)


def test_dp_trainer_spends_what_it_planned_and_is_deterministic() -> None:
    a, b, c = _dp_trainer(), _dp_trainer(), _dp_trainer(seed=1)

    for t in (a, b, c):
        t.train_epochs(2)  # the planned 2 epochs of 5 steps

    assert a.steps_done == 10
    assert a.epsilon == pytest.approx(4.0, abs=0.05)
    assert a.epsilon == pytest.approx(epsilon_of(a.private.noise, 8 / 40, 10, 1e-5))
    for k, v in get_state(a.model).items():
        np.testing.assert_array_equal(v, get_state(b.model)[k])
    assert any(not np.array_equal(v, get_state(c.model)[k])
               for k, v in get_state(a.model).items())


def test_dp_trainer_resumes_its_budget_and_streams_from_a_checkpoint() -> None:
    # Prepare
    run, resumed = _dp_trainer(), _dp_trainer()
    run.train_steps(3)
    saved, params = run.state(), get_state(run.model)

    # Execute
    resumed.load_state(saved)
    resumed.model.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()})
    run.train_steps(2)
    resumed.train_steps(2)

    # Assert
    assert resumed.epsilon == pytest.approx(run.epsilon)
    for k, v in get_state(run.model).items():
        np.testing.assert_allclose(v, get_state(resumed.model)[k], rtol=1e-5, atol=1e-6)


def test_models_without_per_utterance_gradients_are_refused() -> None:
    cnn = build_model(ModelConfig(kind="cnn", width=8, norm="batch"), n_features=13,
                      n_classes=4)
    lstm = build_model(ModelConfig(kind="lstm", width=8), n_features=13, n_classes=4)
    with pytest.raises(ConfigError, match="--norm group"):
        check_model(cnn)
    with pytest.raises(ConfigError, match="--model cnn or dnn"):
        check_model(lstm)
    check_model(build_model(ModelConfig(kind="cnn", width=8, norm="group"), n_features=13,
                            n_classes=4))


@pytest.mark.parametrize("bad", [{"dp_epsilon": 1.0, "dp_noise": 1.0}, {"dp_epsilon": 0.0},
                                 {"dp_noise": -1.0}, {"dp_epsilon": 1.0, "dp_delta": 1.0},
                                 {"dp_epsilon": 1.0, "dp_clip": 0.0}])
def test_bad_dp_settings_are_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_simulate_with_dp_reports_the_epsilon_each_peer_spent(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute: no --norm: DP-SGD picks GroupNorm by itself
    out = tmp_path / "run"
    rc = main(["simulate", "--data", str(tiny_corpus), "--rounds", "2", "--local-epochs", "1",
               "--width", "8", "--dp-epsilon", "6", "--test-speakers", "spk04",
               "--display", "plain", "--workers", "1", "--out", str(out)])

    # Assert
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epsilon_max"] == pytest.approx(6.0, abs=0.05)
    assert summary["final"]["epsilon"] == summary["epsilon_max"]
    assert len(summary["epsilon_per_peer"]) == 3
    assert summary["dp"]["delta"] == 1e-5
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    spent = [float(r["epsilon_max"]) for r in rows]
    assert 0 < spent[0] < spent[1] == pytest.approx(summary["epsilon_max"])
    assert "epsilon" in captured.out


def test_train_with_dp_noise_reports_epsilon(tiny_corpus: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "train"
    rc = main(["train", "--data", str(tiny_corpus), "--epochs", "2", "--width", "8",
               "--dp-noise", "1.5", "--test-speakers", "spk04", "--out", str(out)])

    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    fold = summary["folds"][0]
    # 36 training utterances, batch 32: one step per epoch at sample rate 32/36
    assert fold["epsilon"] == pytest.approx(epsilon_of(1.5, 32 / 36, fold["optimizer_steps"],
                                                       1e-5))
    assert summary["epsilon_max"] == fold["epsilon"]
    assert "-DP per utterance" in captured.out


def test_dp_with_batchnorm_asked_for_is_one_error_line(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    rc = main(["train", "--data", str(tiny_corpus), "--epochs", "1", "--norm", "batch",
               "--dp-epsilon", "4", "--test-speakers", "spk04", "--out", str(tmp_path / "o")])

    assert rc != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--norm group" in err[0]
