"""Models, local training and saved models: shapes, seeding, state exchange, determinism."""

from __future__ import annotations

import gc
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gossipser.data.features import FeatureConfig
from gossipser.errors import ConfigError
from gossipser.learn.modelio import CARD, WEIGHTS, load_model, save_model
from gossipser.learn.models import build_model, count_parameters, get_state, set_state
from gossipser.learn.settings import ModelConfig, TrainConfig, n_inputs
from gossipser.learn.train import LocalTrainer, class_weights, evaluate, predict_proba

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DIM, FRAMES, CLASSES = 13, 24, 4
KINDS = ["dnn", "cnn", "lstm"]


def _inputs(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """A random batch in the shape the model family reads."""
    rng = np.random.default_rng(seed)
    shape = (n, 2 * DIM) if kind == "dnn" else (n, FRAMES, DIM)
    return rng.standard_normal(shape).astype(np.float32)


def _model(kind: str, seed: int = 0, **cfg) -> torch.nn.Module:
    n_features = 2 * DIM if kind == "dnn" else DIM
    return build_model(ModelConfig(kind=kind, width=8, **cfg), n_features=n_features,
                       n_classes=CLASSES, seed=seed)


def _separable(kind: str, n_per_class: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes whose inputs differ by a clear offset on every feature."""
    x = _inputs(kind, 2 * n_per_class, seed)
    y = np.repeat([0, 1], n_per_class)
    x[y == 1] += 1.5
    return x, y


def _states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- shapes and init


@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_backward_shapes(kind: str) -> None:
    # Prepare
    model = _model(kind)
    x = torch.from_numpy(_inputs(kind, 5))

    # Execute
    logits = model(x)
    logits.sum().backward()

    # Assert
    assert logits.shape == (5, CLASSES)
    assert count_parameters(model) > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.shape == p.shape
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kind", ["cnn", "lstm"])
def test_sequence_models_accept_any_length(kind: str) -> None:
    # Prepare
    model = _model(kind).eval()

    # Execute
    outs = [model(torch.zeros(2, t, DIM)) for t in (8, 31, 150)]

    # Assert
    assert [tuple(o.shape) for o in outs] == [(2, CLASSES)] * 3


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_init_and_other_seed_differs(kind: str) -> None:
    # Execute
    a, b, c = (get_state(_model(kind, seed=s)) for s in (3, 3, 4))

    # Assert
    assert _states_equal(a, b)
    assert not _states_equal(a, c)


def test_build_model_leaves_the_global_generator_alone() -> None:
    # Prepare
    before = torch.get_rng_state()

    # Execute
    _model("cnn", seed=5)

    # Assert
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    "kwargs", [{"kind": "transformer"}, {"width": 2}, {"width": 2048}, {"dropout": 1.0},
               {"dropout": -0.1}],
)
def test_model_config_rejects_bad_values(kwargs: dict) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError):
        ModelConfig(**kwargs)


def test_model_config_view_follows_the_kind() -> None:
    # Execute / Assert
    assert [ModelConfig(kind=k).view for k in KINDS] == ["stats", "sequence", "sequence"]
    assert n_inputs(FeatureConfig(deltas=1), ModelConfig(kind="dnn")) == 52
    assert n_inputs(FeatureConfig(deltas=1), ModelConfig(kind="lstm")) == 26


# ---------------------------------------------------------------- state exchange


@pytest.mark.parametrize("kind", KINDS)
def test_get_state_set_state_round_trip(kind: str) -> None:
    # Prepare
    source, target = _model(kind, seed=1), _model(kind, seed=2)
    x = torch.from_numpy(_inputs(kind, 4))
    source.train()
    source(x)  # move the BatchNorm running statistics away from their init
    state = get_state(source)

    # Execute
    set_state(target, state)

    # Assert
    assert _states_equal(get_state(target), state)
    source.eval()
    target.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_get_state_returns_copies_of_floating_tensors_only() -> None:
    # Prepare
    model = _model("cnn")

    # Execute
    state = get_state(model)
    first = next(iter(state))
    state[first] += 1.0

    # Assert
    assert all(a.dtype == np.float32 for a in state.values())
    assert not any(k.endswith("num_batches_tracked") for k in state)
    assert not np.array_equal(get_state(model)[first], state[first])


def test_set_state_rejects_a_wrong_shape() -> None:
    # Prepare
    narrow = get_state(_model("cnn"))
    wide = build_model(ModelConfig(kind="cnn", width=16), n_features=DIM, n_classes=CLASSES)

    # Execute / Assert
    with pytest.raises(ConfigError, match="does not fit"):
        set_state(wide, narrow)


def test_set_state_rejects_an_unknown_name() -> None:
    # Prepare
    model = _model("dnn")

    # Execute / Assert
    with pytest.raises(ConfigError, match="'bogus.weight'"):
        set_state(model, {"bogus.weight": np.zeros(3, np.float32)})


# ---------------------------------------------------------------- local training


@pytest.mark.parametrize("kind", ["dnn", "cnn"])
def test_local_trainer_learns_a_separable_problem(kind: str) -> None:
    # Prepare
    x, y = _separable(kind)
    model = _model(kind, dropout=0.0)
    trainer = LocalTrainer(model=model, x=x, y=y, n_classes=2 if kind == "dnn" else CLASSES,
                           cfg=TrainConfig(batch_size=8, lr=1e-2), seed=0)
    first = trainer.train_steps(3)

    # Execute
    later = [trainer.train_steps(3) for _ in range(6)]

    # Assert
    assert later[-1] < first
    assert trainer.steps_done == 21
    assert evaluate(model, x, y, CLASSES).wa == 1.0


def _trained_state(kind: str, seed: int, disturb: bool) -> dict[str, np.ndarray]:
    """State after 2 x 3 steps with dropout active; `disturb` draws from torch's global RNG
    before and between the training calls, as other peers in the same process would."""
    x, y = _separable(kind, n_per_class=8)
    model = _model(kind, seed=seed, dropout=0.5)
    trainer = LocalTrainer(model=model, x=x, y=y, n_classes=CLASSES,
                           cfg=TrainConfig(batch_size=4), seed=seed)
    if disturb:
        torch.rand(1000)
    trainer.train_steps(3)
    if disturb:
        torch.randn(77)
        torch.nn.Dropout(0.5)(torch.ones(100))
    trainer.train_steps(3)
    return get_state(model)


@pytest.mark.parametrize("kind", KINDS)
def test_training_depends_only_on_the_seed(kind: str) -> None:
    # Execute
    quiet = _trained_state(kind, seed=11, disturb=False)
    disturbed = _trained_state(kind, seed=11, disturb=True)
    other_seed = _trained_state(kind, seed=12, disturb=False)

    # Assert
    assert _states_equal(quiet, disturbed)
    assert not _states_equal(quiet, other_seed)


def test_interleaved_trainers_match_trainers_run_alone() -> None:
    # Prepare
    x, y = _separable("cnn", n_per_class=8)

    def make(seed: int) -> LocalTrainer:
        return LocalTrainer(model=_model("cnn", seed=seed, dropout=0.5), x=x, y=y,
                            n_classes=CLASSES, cfg=TrainConfig(batch_size=4), seed=seed)

    alone = []
    for seed in (1, 2):
        t = make(seed)
        t.train_steps(2)
        t.train_steps(2)
        alone.append(get_state(t.model))

    # Execute: two peers taking turns in one process
    a, b = make(1), make(2)
    for _ in range(2):
        a.train_steps(2)
        b.train_steps(2)

    # Assert
    assert _states_equal(get_state(a.model), alone[0])
    assert _states_equal(get_state(b.model), alone[1])


def test_training_leaves_the_global_generator_alone() -> None:
    # Prepare
    x, y = _separable("cnn", n_per_class=4)
    trainer = LocalTrainer(model=_model("cnn", dropout=0.5), x=x, y=y, n_classes=CLASSES,
                           cfg=TrainConfig(batch_size=4), seed=0)
    before = torch.get_rng_state()

    # Execute
    trainer.train_steps(2)

    # Assert
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(("n", "batch_size", "sizes"),
                         [(5, 2, [2, 3]), (8, 4, [4, 4]), (3, 32, [3]), (9, 4, [4, 5])])
def test_batches_cover_an_epoch_without_singletons(n: int, batch_size: int,
                                                   sizes: list[int]) -> None:
    # Prepare
    trainer = LocalTrainer(model=_model("dnn"), x=_inputs("dnn", n), y=np.zeros(n, int),
                           n_classes=CLASSES, cfg=TrainConfig(batch_size=batch_size), seed=0)

    # Execute
    batches = list(trainer._batches(trainer.steps_per_epoch()))

    # Assert
    assert [len(b) for b in batches] == sizes
    assert sorted(torch.cat(batches).tolist()) == list(range(n))


def test_too_little_data_trains_nothing() -> None:
    # Prepare
    model = _model("dnn")
    trainer = LocalTrainer(model=model, x=_inputs("dnn", 1), y=np.zeros(1, int),
                           n_classes=CLASSES, cfg=TrainConfig(), seed=0)
    before = get_state(model)

    # Execute
    loss = trainer.train_epochs(1)

    # Assert
    assert np.isnan(loss)
    assert trainer.steps_per_epoch() == 0
    assert _states_equal(get_state(model), before)


def test_class_weights_are_inverse_frequency_with_mean_one() -> None:
    # Execute
    w = class_weights(np.array([0, 0, 0, 1]), 3)

    # Assert: counts 3, 1, 0 -> 4/(3*2), 4/(1*2), absent class 0
    np.testing.assert_allclose(w, [2 / 3, 2.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs", [{"epochs": -1}, {"batch_size": 1}, {"lr": 0.0}, {"lr": 1.0},
               {"label_smoothing": 1.0}, {"weight_decay": -1e-4}],
)
def test_train_config_rejects_bad_values(kwargs: dict) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="^train config: "):
        TrainConfig(**kwargs)


def test_predict_proba_rows_are_distributions() -> None:
    # Prepare
    model = _model("lstm")

    # Execute
    p = predict_proba(model, _inputs("lstm", 7), batch_size=3)

    # Assert
    assert p.shape == (7, CLASSES)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert not model.training


def test_evaluate_on_no_data_gives_zero_scores() -> None:
    # Execute
    s = evaluate(_model("dnn"), _inputs("dnn", 0), np.zeros(0, int), CLASSES)

    # Assert
    assert (s.wa, s.ua, s.macro_f1) == (0.0, 0.0, 0.0)
    assert s.confusion.shape == (CLASSES, CLASSES)


# ---------------------------------------------------------------- saved models


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_identical_predictions(kind: str, tmp_path: Path) -> None:
    # Prepare
    features = FeatureConfig(deltas=1, max_frames=32)
    config = ModelConfig(kind=kind, width=8)
    model = build_model(config, n_features=n_inputs(features, config), n_classes=3, seed=9)
    shape = (6, 2 * features.dim) if kind == "dnn" else (6, features.max_frames, features.dim)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model.train()
    model(torch.from_numpy(x))  # non-trivial BatchNorm statistics
    classes = ("neutral", "happy", "sad")

    # Execute
    save_model(tmp_path / "m", model, classes=classes, features=features, config=config,
               extra={"note": "test"})
    saved = load_model(tmp_path / "m")

    # Assert
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CARD, WEIGHTS]
    with np.load(tmp_path / "m" / WEIGHTS, allow_pickle=False) as z:
        assert set(z.files) == set(get_state(model))
    card = json.loads((tmp_path / "m" / CARD).read_text())
    assert card["format"] == "gossipser-model/1"
    assert card["classes"] == list(classes)
    assert card["note"] == "test"
    assert (saved.classes, saved.features, saved.config) == (classes, features, config)
    assert not saved.model.training
    np.testing.assert_array_equal(predict_proba(saved.model, x), predict_proba(model, x))


def test_load_model_accepts_the_card_path(tmp_path: Path) -> None:
    # Prepare
    config = ModelConfig(kind="dnn", width=8)
    model = build_model(config, n_features=26, n_classes=2)
    save_model(tmp_path, model, classes=("a", "b"), features=FeatureConfig(deltas=0),
               config=config)

    # Execute
    saved = load_model(tmp_path / CARD)

    # Assert
    assert _states_equal(get_state(saved.model), get_state(model))


def _write_model(folder: Path) -> None:
    config = ModelConfig(kind="dnn", width=8)
    save_model(folder, build_model(config, n_features=26, n_classes=2), classes=("a", "b"),
               features=FeatureConfig(), config=config)


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / CARD).unlink(),
        lambda d: (d / CARD).write_text("{not json"),
        lambda d: (d / CARD).write_text('{"format": "something-else/3"}'),
        lambda d: (d / CARD).write_text(
            (d / CARD).read_text().replace('"kind": "dnn"', '"kind": "rnn"')),
        lambda d: np.savez(d / WEIGHTS, **{"net.1.weight": np.zeros((3, 3), np.float32)}),
        lambda d: (d / WEIGHTS).write_bytes(b"garbage"),
    ],
    ids=["no-card", "bad-json", "wrong-format", "bad-kind", "wrong-shape", "garbage-weights"],
)
def test_load_model_turns_a_bad_folder_into_config_error(tmp_path: Path, damage) -> None:
    # Prepare
    _write_model(tmp_path)
    damage(tmp_path)

    # Execute / Assert
    with pytest.raises(ConfigError):
        load_model(tmp_path)


def test_load_model_turns_truncated_weights_into_config_error(tmp_path: Path) -> None:
    # Prepare
    _write_model(tmp_path)
    weights = tmp_path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    # Execute: np.load(path) leaks its handle on a bad zip; keep that warning inside this test
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            load_model(tmp_path)
        except zipfile.BadZipFile:
            escaped = True
        except ConfigError:
            escaped = False
        gc.collect()

    # Assert
    if escaped:
        pytest.fail("load_model let zipfile.BadZipFile escape")


def test_load_model_refuses_weights_that_lack_a_parameter(tmp_path: Path) -> None:
    # Prepare
    _write_model(tmp_path)
    with np.load(tmp_path / WEIGHTS, allow_pickle=False) as z:
        state = {k: z[k] for k in z.files}
    del state["net.1.weight"]
    np.savez(tmp_path / WEIGHTS, **state)

    # Execute / Assert
    with pytest.raises(ConfigError, match="net.1.weight"):
        load_model(tmp_path)


def test_groupnorm_cnn_has_no_running_statistics_and_trains_per_sample():
    import torch

    from gossipser.learn.models import build_model, get_state
    from gossipser.learn.settings import ModelConfig

    model = build_model(ModelConfig(kind="cnn", width=16, norm="group"), n_features=13,
                        n_classes=4)
    assert not any("running" in k for k in get_state(model))
    x = torch.randn(3, 50, 13)
    model.eval()
    one = model(x[:1])
    assert torch.allclose(model(x)[:1], one, atol=1e-5)  # a sample's output ignores the batch
    assert build_model(ModelConfig(kind="cnn", width=16, norm="none"), n_features=13,
                       n_classes=4)(x).shape == (3, 4)
