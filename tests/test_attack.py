"""Attribute inference: recording what peers send, shadow training, and its controls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gossipser.cli.main import main
from gossipser.errors import ConfigError
from gossipser.gossip.message import Message
from gossipser.privacy.attack import (
    ALL,
    AttackConfig,
    _attack,
    _auc,
    _Fold,
    observed_updates,
    windows_of,
)
from gossipser.privacy.attributes import read_attribute_file
from gossipser.privacy.record import MessageLog

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 synthetic speakers whose pitch and formants follow their gender (speakers.csv)."""
    from gossipser.data.synth import SynthConfig
    from gossipser.data.synth_corpus import write_corpus

    root = tmp_path_factory.mktemp("voices")
    write_corpus(root, SynthConfig(speakers=16, per_emotion=2))
    return root


def _simulate(corpus: Path, out: Path, *extra: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOSSIPSER_CACHE", str(out.parent / "cache"))
        rc = main(["simulate", "--data", str(corpus), "--rounds", "2", "--local-epochs", "2",
                   "--width", "8", "--record-messages", "1", "--workers", "1",
                   "--test-speakers", "spk15,spk16", "--display", "none", "--out", str(out),
                   *extra])
    assert rc == 0


@pytest.fixture(scope="module")
def attacked(voices: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("attacked") / "run"
    _simulate(voices, out)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOSSIPSER_CACHE", str(out.parent / "cache"))
        rc = main(["attack", "--run", str(out), "--shadow-runs", "6", "--workers", "1",
                   "--controls", "60"])
    assert rc == 0
    return json.loads((out / "attack.json").read_text())


def test_attack_infers_the_planted_gender(attacked: dict) -> None:
    assert attacked["targets"] == 14
    assert attacked["auc"] >= 0.9
    lo, hi = attacked["ci"]
    assert lo <= attacked["auc"] <= hi
    assert attacked["attribute"]["classes"] == ["female", "male"]
    assert {"features.0.0", "head.1"} <= set(attacked["per_layer"])
    # one recorded round: the attacker of that round alone is the attacker of all rounds
    assert attacked["auc_by_round"] == {"1": attacked["auc_by_rounds_seen"]["1"]}


def test_attack_is_at_chance_when_the_attribute_is_shuffled(attacked: dict) -> None:
    control = attacked["control_auc"]
    assert control["runs"] == 60
    assert 0.4 <= control["mean"] <= 0.6


def test_private_layers_are_never_recorded_nor_attacked(voices: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    _simulate(voices, out, "--private-layers", "first")

    log = MessageLog.load(out / "messages.npz")

    assert log.names and not any(n.startswith("features.0.0.") for n in log.names)
    assert all(not k.startswith("features.0.0.") for p in log.sent.values() for k in p)
    assert len(log.senders()) == 14 and log.rounds == 1


def _msg(sender: int, value: float) -> Message:
    return Message(kind="model", run="r", sender=sender, round=1,
                   params={"w": np.full(3, value, np.float32), "tracker/w": np.zeros(3)})


def test_log_keeps_model_entries_once_per_round_and_round_trips(tmp_path: Path) -> None:
    log = MessageLog(2, ["w"])
    log(1, 0, 1, _msg(0, 1.0))
    log(1, 0, 2, _msg(0, 5.0))  # same round, another neighbour: the first copy is kept
    log(2, 0, 1, _msg(0, 3.0))
    log(3, 0, 1, _msg(0, 9.0))  # beyond the recorded rounds

    back = MessageLog.load(log.save(tmp_path / "m.npz"))

    assert set(back.sent) == {(1, 0), (2, 0)}
    assert set(back.sent[(1, 0)]) == {"w"}
    assert back.receivers[(1, 0)] == [1, 2]
    ups = observed_updates(back, 0, {"w": np.zeros(3, np.float32)})
    np.testing.assert_allclose(ups[1]["w"], 1.0)
    np.testing.assert_allclose(ups[2]["w"], 2.0)  # minus the round-1 model it saw


def test_a_corrupt_or_missing_log_is_one_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "messages.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match="not a message log"):
        MessageLog.load(bad)
    with pytest.raises(ConfigError, match="--record-messages"):
        MessageLog.load(tmp_path / "absent.npz")


def test_attack_on_a_run_without_a_recording_is_one_error_line(
    attacked: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    run = Path(attacked["run"])
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "summary.json").write_text((run / "summary.json").read_text())

    rc = main(["attack", "--run", str(copy)])

    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--record-messages" in err[0]


def test_attribute_file_parsing(tmp_path: Path) -> None:
    good = tmp_path / "a.csv"
    good.write_text("speaker,gender\nA, Female\nB,male\n\n")
    assert read_attribute_file(good) == {"A": "female", "B": "male"}
    bad = tmp_path / "b.csv"
    bad.write_text("A,female\nB\n")
    with pytest.raises(ConfigError, match="row 2"):
        read_attribute_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_attribute_file(tmp_path / "none.csv")


def test_rank_auc_matches_the_definition() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.4, 0.2])
    pairs = [(a, b) for a in s[y == 1] for b in s[y == 0]]
    expected = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert _auc(y, s) == pytest.approx(expected)
    assert np.isnan(_auc(np.ones(3, int), s[:3]))


@pytest.mark.parametrize("algorithm", ["gradient-tracking", "push-sum", "pairwise", "fedavg"])
def test_every_algorithm_can_be_recorded_and_attacked(voices: Path, tmp_path: Path,
                                                      algorithm: str) -> None:
    # Prepare: gradient tracking and push-sum send more than the model (trackers, weights)
    out = tmp_path / "run"
    _simulate(voices, out, "--algorithm", algorithm)

    # Execute
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOSSIPSER_CACHE", str(tmp_path / "cache"))
        rc = main(["attack", "--run", str(out), "--shadow-runs", "2", "--workers", "1",
                   "--controls", "0"])

    # Assert: only model entries are recorded, and every peer was observed by someone
    assert rc == 0
    log = MessageLog.load(out / "messages.npz")
    assert all("/" not in name for name in log.names)
    result = json.loads((out / "attack.json").read_text())
    assert result["targets"] == 14 and 0.0 <= result["auc"] <= 1.0
    assert result["control_auc"] is None


def test_attacker_keeps_the_rounds_that_leak_and_not_the_noise_after() -> None:
    # Prepare: 24 shadow peers (4 shadow runs each) and 12 targets over 20 rounds; the
    # attribute moves one of 64 weights in round 1 only; later rounds are noise, on which
    # the per-round classifiers overfit and score the targets at random
    rng = np.random.default_rng(0)
    labels = np.array([i % 2 for i in range(36)])
    targets, shadow_peers, rounds = list(range(24, 36)), list(range(24)), 20

    def update(p: int, r: int) -> dict:
        x = rng.normal(size=64)
        x[0] += (2.0 if labels[p] else -2.0) if r == 1 else 0.0
        return {"w": x}

    shadow = {r: [(p, rep, update(p, r)) for rep in range(4) for p in shadow_peers]
              for r in range(1, rounds + 1)}
    fold = _Fold(targets=targets, shadow=shadow,
                 seen={p: {r: update(p, r) for r in range(1, rounds + 1)} for p in targets})
    cfg = AttackConfig(seed=0)
    windows = windows_of(rounds)

    # Execute
    res = _attack([fold], labels, {"w": ["w"], ALL: ["w"]}, cfg, windows)

    # Assert: the shadow cross-validation picks round 1 alone, which ranks the targets
    # better than the mean over all 20 rounds does
    (_, window), = res["chosen"]
    assert window == 1
    y = labels[targets]
    first = _auc(y, np.array([res["logits"][p][1] for p in targets]))
    over_all = _auc(y, np.array([np.mean(list(res["logits"][p].values())) for p in targets]))
    assert first >= 0.85 and over_all < 0.7
    assert windows == [1, 2, 3, 5, 10, 20]


def test_the_classifiers_run_with_one_blas_thread_in_a_fresh_process() -> None:
    """In a process that has not loaded scipy yet (as `gossipser attack` starts), every BLAS
    the fits use, scipy's own included, runs one thread inside `one_blas_thread`; OpenBLAS's
    spinning threads made the attack 9-20x slower on a busy machine."""
    code = (
        "import numpy as np\n"
        "from threadpoolctl import threadpool_info\n"
        "from gossipser.privacy.attack import _fit_predict, one_blas_thread\n"
        "with one_blas_thread():\n"
        "    x = np.random.default_rng(0).normal(size=(8, 50))\n"
        "    _fit_predict(x, np.arange(8) % 2, x, 1.0, 0)\n"
        "    blas = [i for i in threadpool_info() if i['user_api'] == 'blas']\n"
        "    print(len(blas), max(i['num_threads'] for i in blas))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OPENBLAS_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-1000:]
    libraries, threads = map(int, done.stdout.split())
    assert libraries >= 2 and threads == 1  # numpy's and scipy's
