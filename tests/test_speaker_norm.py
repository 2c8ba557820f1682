"""BatchNorm by the speaker's own statistics at inference (ModelConfig.bn_stats = speaker)."""

from __future__ import annotations

import numpy as np
import pytest

from gossipser.errors import ConfigError
from gossipser.learn.models import build_model, get_state
from gossipser.learn.settings import ModelConfig, TrainConfig, speaker_groups
from gossipser.learn.train import LocalTrainer, evaluate, predict_proba, speaker_statistics


def _trained_dnn(seed: int = 0):
    """A DNN (input BatchNorm) trained a little on random data, so its running stats are set."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 10)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = build_model(ModelConfig(kind="dnn", width=8), n_features=10, n_classes=2, seed=seed)
    LocalTrainer(model=model, x=x, y=y, n_classes=2, cfg=TrainConfig(epochs=3, batch_size=16),
                 seed=seed).train_epochs(3)
    return model, x


def test_speaker_statistics_restores_the_running_averages() -> None:
    # Prepare
    model, x = _trained_dnn()
    before = get_state(model)
    # Execute
    with speaker_statistics(model, x[:7] * 5 + 3):
        inside = get_state(model)
    # Assert: inside the block the statistics are x's, afterwards the old ones are back
    after = get_state(model)
    key = "net.0.running_mean"
    np.testing.assert_allclose(inside[key], (x[:7] * 5 + 3).mean(axis=0), rtol=1e-5, atol=1e-5)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_speaker_statistics_make_predictions_invariant_to_a_speakers_offset_and_scale() -> None:
    # Prepare: speaker b is speaker a with every input scaled and shifted (a louder voice)
    model, x = _trained_dnn()
    a = x[:20]
    b = a * 3.0 + 2.0
    both = np.concatenate([a, b])
    groups = np.array(["a"] * 20 + ["b"] * 20)
    # Execute
    by_speaker = predict_proba(model, both, groups=groups)
    running = predict_proba(model, both)
    # Assert: speaker statistics undo the offset exactly; the running averages do not
    np.testing.assert_allclose(by_speaker[:20], by_speaker[20:], atol=1e-5)
    assert np.abs(running[:20] - running[20:]).max() > 1e-2


def test_one_speakers_rows_do_not_change_anothers_predictions() -> None:
    # Prepare
    model, x = _trained_dnn()
    groups = np.array(["a"] * 10 + ["b"] * 10)
    other = x[:20].copy()
    other[10:] = other[10:] * 10 - 4
    # Execute
    p1 = predict_proba(model, x[:20], groups=groups)
    p2 = predict_proba(model, other, groups=groups)
    # Assert
    np.testing.assert_allclose(p1[:10], p2[:10], atol=1e-6)


def test_a_speaker_with_one_utterance_is_normalised_over_its_frames() -> None:
    # Prepare: the CNN's BatchNorm pools over time, so one utterance has statistics
    model = build_model(ModelConfig(kind="cnn", width=8), n_features=6, n_classes=3, seed=0)
    x = np.random.default_rng(1).normal(size=(3, 40, 6)).astype(np.float32)
    # Execute
    probs = predict_proba(model, x, groups=np.array(["a", "b", "c"]))
    # Assert
    assert probs.shape == (3, 3) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_a_dnn_speaker_with_one_utterance_keeps_the_running_averages() -> None:
    # a statistics vector alone has no spread to normalise by
    model, x = _trained_dnn()
    probs = predict_proba(model, x[:3], groups=np.array(["a", "b", "b"]))
    np.testing.assert_allclose(probs[0], predict_proba(model, x[:1])[0], atol=1e-6)


def test_evaluate_takes_the_groups_and_models_without_batchnorm_ignore_them() -> None:
    # Prepare
    model = build_model(ModelConfig(kind="cnn", width=8, norm="group"), n_features=6,
                        n_classes=3, seed=0)
    x = np.random.default_rng(1).normal(size=(8, 40, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    groups = np.array(list("aabbccdd"))
    # Execute / Assert
    a, b = evaluate(model, x, y, 3, groups=groups), evaluate(model, x, y, 3)
    np.testing.assert_array_equal(a.confusion, b.confusion)


@pytest.mark.parametrize(("cfg", "grouped"), [
    (ModelConfig(), True),
    (ModelConfig(bn_stats="running"), False),
    (ModelConfig(norm="group"), False),
    (ModelConfig(norm="none"), False),
])
def test_speaker_groups_follow_the_model_config(cfg: ModelConfig, grouped: bool) -> None:
    speakers = np.array(["1", "1", "2"])
    out = speaker_groups(cfg, speakers)
    assert (out is not None) == grouped
    if grouped:
        assert out.tolist() == ["1", "1", "2"]


def test_bn_stats_is_validated() -> None:
    with pytest.raises(ConfigError, match="bn_stats"):
        ModelConfig(bn_stats="global")


def test_a_runs_pool_and_the_baseline_evaluate_by_speaker(tiny_corpus) -> None:
    # Prepare
    from gossipser.data.dataset import load_dataset, split_by_speakers
    from gossipser.gossip.plan import setup_run
    from gossipser.gossip.settings import GossipConfig
    from gossipser.learn.centralized import train_centralized

    ds = load_dataset(tiny_corpus, cache_dir=None)
    model = ModelConfig(width=8)
    train = TrainConfig(epochs=1, batch_size=4)
    # Execute
    setup = setup_run(ds, cfg=GossipConfig(rounds=1), model=model, train=train,
                      test_speakers=("spk03", "spk04"), seed=0)
    spec = setup.pool_spec()
    running = setup_run(ds, cfg=GossipConfig(rounds=1), model=ModelConfig(
        width=8, bn_stats="running"), train=train, test_speakers=("spk03", "spk04"), seed=0)
    tr, te = split_by_speakers(ds, ("spk03", "spk04"))
    base = train_centralized(ds, tr, te, model_cfg=model, train_cfg=train, seed=0)
    # Assert: the test rows keep their speakers; the baseline scores like predict_proba does
    assert sorted(set(spec.test_groups.tolist())) == ["spk03", "spk04"]
    assert running.pool_spec().test_groups is None
    x = ds.inputs(model.view, te)
    expected = evaluate(base.model, x, ds.labels[te], len(ds.classes), groups=ds.speakers[te])
    np.testing.assert_array_equal(base.scores.confusion, expected.confusion)
