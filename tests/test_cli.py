"""The command line end to end on a tiny synthetic corpus: train, predict, synth, and the one
line a user sees when something is wrong."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gossipser.cli.main import build_parser, main
from gossipser.data.corpora import CONVENTIONS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEAKERS = ("spk01", "spk02", "spk03", "spk04")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own feature cache, never the user's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GOSSIPSER_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def trained(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One CNN trained by `gossipser train` for the tests that read or use its output."""
    out = tmp_path_factory.mktemp("train_cnn")
    cache = tmp_path_factory.mktemp("train_cnn_cache")
    stdout, stderr = io.StringIO(), io.StringIO()
    with (pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout),
          contextlib.redirect_stderr(stderr)):
        mp.setenv("GOSSIPSER_CACHE", str(cache))
        rc = main(["train", "--data", str(tiny_corpus), "--model", "cnn", "--epochs", "2",
                   "--test-speakers", "spk04", "--out", str(out)])
    return {"rc": rc, "out": out, "cache": cache, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue()}


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _check_scores(summary: dict, n_classes: int) -> None:
    for key in ("ua", "wa", "macro_f1", "macro_precision", "macro_recall"):
        assert 0.0 <= summary[key] <= 1.0, key
    cm = np.array(summary["confusion"])
    assert cm.shape == (n_classes, n_classes)
    assert (cm >= 0).all()
    if len(summary["folds"]) == 1:  # with folds, wa is the mean over folds
        assert summary["wa"] == pytest.approx(np.trace(cm) / cm.sum())


def _files(corpus: Path, n: int) -> list[str]:
    return [str(p) for p in sorted(corpus.glob("*/spk04_u00*.wav"))[:n]]


def _error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gossipser: error: ")
    return lines[0]


# ---------------------------------------------------------------- help


def test_help_lists_every_command_with_a_description() -> None:
    # Prepare
    exe = Path(sys.executable).with_name("gossipser")
    if not exe.exists():
        pytest.skip(f"console script not installed beside {sys.executable}")
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    helps = {c.dest: c.help for c in subparsers._choices_actions}

    # Execute
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60,
                          check=False)

    # Assert
    assert proc.returncode == 0, proc.stderr
    assert {"synth", "train", "predict"} <= set(helps)
    text = " ".join(proc.stdout.split())  # argparse wraps long help lines
    for name, description in helps.items():
        assert description, f"command {name} has no description"
        assert f"{name} {' '.join(description.split())}" in text


# ---------------------------------------------------------------- train


def test_train_writes_summary_and_model(trained: dict, tiny_corpus: Path) -> None:
    # Prepare
    out = trained["out"]

    # Execute
    summary = _summary(out)

    # Assert
    assert trained["rc"] == 0, trained["stderr"]
    assert summary["classes"] == ["neutral", "happy", "sad", "angry"]
    assert summary["model"] == "cnn"
    assert summary["corpus"] == "generic"
    _check_scores(summary, 4)
    assert np.array(summary["confusion"]).sum() == 12  # spk04: 4 emotions x 3 takes
    assert summary["folds"][0]["test_speakers"] == ["spk04"]
    assert summary["train_config"]["epochs"] == 2
    assert summary["skipped_files"] == 0
    assert {"model.npz", "model.json", "summary.json"} <= {p.name for p in out.iterdir()}
    card = json.loads((out / "model.json").read_text())
    assert card["classes"] == summary["classes"]
    with np.load(out / "model.npz", allow_pickle=False) as z:
        assert z.files
    assert "48 utterances, 4 speakers, 4 classes" in trained["stdout"]
    assert list(trained["cache"].glob("mfcc-*.npz"))  # GOSSIPSER_CACHE was used


def test_train_with_two_folds(trained: dict, tiny_corpus: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the features the module fixture cached are reused
    monkeypatch.setenv("GOSSIPSER_CACHE", str(trained["cache"]))
    out = tmp_path / "out"

    # Execute
    rc = main(["train", "--data", str(tiny_corpus), "--model", "cnn", "--epochs", "1",
               "--folds", "2", "--out", str(out)])

    # Assert
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "features from cache" in captured.out
    summary = _summary(out)
    _check_scores(summary, 4)
    folds = summary["folds"]
    assert len(folds) == 2
    held_out = [s for f in folds for s in f["test_speakers"]]
    assert sorted(held_out) == list(SPEAKERS)  # every speaker tested exactly once
    assert np.array(summary["confusion"]).sum() == 48
    for k in (1, 2):
        assert (out / f"fold{k}" / "model.npz").exists()
        assert (out / f"fold{k}" / "model.json").exists()


@pytest.mark.parametrize("model", ["dnn", "lstm"])
def test_train_dnn_and_lstm(model: str, tiny_corpus: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    out = tmp_path / "out"

    # Execute
    rc = main(["train", "--data", str(tiny_corpus), "--model", model, "--epochs", "1",
               "--width", "16", "--test-speakers", "spk03,spk04", "--out", str(out)])

    # Assert
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = _summary(out)
    assert summary["model"] == model
    _check_scores(summary, 4)
    assert np.array(summary["confusion"]).sum() == 24
    assert (out / "model.npz").exists()


def test_train_skips_an_unreadable_file_with_a_warning(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    (data / "sad" / "spk01_u099.wav").write_bytes(b"this is not audio")

    # Execute
    rc = main(["train", "--data", str(data), "--model", "dnn", "--epochs", "1",
               "--test-speakers", "spk04", "--out", str(tmp_path / "out")])

    # Assert
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "skipped 1 unreadable audio file(s)" in captured.out
    assert "spk01_u099.wav" in captured.out
    assert _summary(tmp_path / "out")["skipped_files"] == 1


def test_train_on_unrecognisable_folder_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: audio files whose names follow no convention (and no emotion folder)
    data = tmp_path / "recordings"
    data.mkdir()
    for name in ("take1.wav", "take2.wav", "interview.flac"):
        (data / name).write_bytes(b"RIFF")

    # Execute
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "out")])

    # Assert
    captured = capsys.readouterr()
    assert rc == 2
    line = _error_line(captured.err)
    assert "cannot recognise the corpus" in line
    for name, convention in CONVENTIONS.items():
        assert f"{name} ({convention.example})" in line
    assert not (tmp_path / "out").exists()


def test_train_on_a_folder_without_audio_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    (tmp_path / "notes.txt").write_text("no audio here\n")

    # Execute
    rc = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "out")])

    # Assert
    assert rc == 2
    assert "no audio files" in _error_line(capsys.readouterr().err)


def test_train_with_an_unknown_test_speaker_is_one_error_line(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    rc = main(["train", "--data", str(tiny_corpus), "--epochs", "1", "--test-speakers",
               "spk09", "--out", str(tmp_path / "out")])

    # Assert
    assert rc == 2
    line = _error_line(capsys.readouterr().err)
    assert "'spk09'" in line
    for spk in SPEAKERS:
        assert spk in line  # the message lists the speakers there are


def test_train_refuses_folds_together_with_test_speakers(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    rc = main(["train", "--data", str(tiny_corpus), "--epochs", "1", "--folds", "2",
               "--test-speakers", "spk04", "--out", str(tmp_path / "out")])

    # Assert
    assert rc == 2
    assert "--folds or --test-speakers" in _error_line(capsys.readouterr().err)


def test_train_with_a_bad_feature_flag_is_one_error_line(
    tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    rc = main(["train", "--data", str(tiny_corpus), "--n-mfcc", "100", "--out",
               str(tmp_path / "out")])

    # Assert
    assert rc == 2
    assert "feature config" in _error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- predict


def test_predict_json(trained: dict, tiny_corpus: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    files = _files(tiny_corpus, 3)

    # Execute
    rc = main(["predict", "--model", str(trained["out"]), *files, "--json"])

    # Assert
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = json.loads(captured.out)
    assert [r["file"] for r in results] == files
    classes = ["neutral", "happy", "sad", "angry"]
    for r in results:
        assert r["emotion"] in classes
        assert list(r["probabilities"]) == classes
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
        assert r["emotion"] == max(r["probabilities"], key=r["probabilities"].get)


def test_predict_text_prints_one_line_per_file(
    trained: dict, tiny_corpus: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: relative names keep the lines short whatever the temporary folder is
    monkeypatch.chdir(tiny_corpus)
    files = ["angry/spk04_u000.wav", "sad/spk04_u001.wav"]

    # Execute
    rc = main(["predict", "--model", str(trained["out"]), *files])

    # Assert
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2
    for f, line in zip(files, lines, strict=True):
        assert line.startswith(f"{f}: ")
        assert sum(c in line for c in ("neutral", "happy", "sad", "angry")) == 4


def test_predict_reports_a_corrupt_file_and_predicts_the_others(
    trained: dict, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVE and then nothing useful")
    good = _files(tiny_corpus, 2)

    # Execute
    rc = main(["predict", "--model", str(trained["out"]), good[0], str(bad), good[1], "--json"])

    # Assert
    captured = capsys.readouterr()
    assert rc == 1
    results = json.loads(captured.out)
    assert [r["file"] for r in results] == [good[0], str(bad), good[1]]
    assert "emotion" in results[0] and "emotion" in results[2]
    error = results[1]["error"]
    assert "bad.wav" in error
    assert "\n" not in error


def test_predict_text_reports_a_missing_file(
    trained: dict, tiny_corpus: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    monkeypatch.chdir(tiny_corpus)
    files = ["sad/gone.wav", "happy/spk04_u002.wav"]

    # Execute
    rc = main(["predict", "--model", str(trained["out"]), *files])

    # Assert
    captured = capsys.readouterr()
    assert rc == 1
    first, *_, last = captured.out.strip().splitlines()
    assert first.startswith("sad/gone.wav: error cannot read audio gone.wav")
    assert last.startswith("happy/spk04_u002.wav: ")


def test_predict_text_error_for_a_long_path_stays_on_one_line(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    deep = tmp_path.joinpath(*["recordings-from-the-second-session"] * 4)
    deep.mkdir(parents=True)
    (deep / "bad.wav").write_bytes(b"not audio")

    # Execute
    rc = main(["predict", "--model", str(trained["out"]), str(deep / "bad.wav")])

    # Assert
    assert rc == 1
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_predict_text_shows_file_names_with_brackets(
    trained: dict, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    shutil.copy(_files(tiny_corpus, 1)[0], tmp_path / "clip[take2].wav")
    monkeypatch.chdir(tmp_path)

    # Execute
    rc = main(["predict", "--model", str(trained["out"]), "clip[take2].wav"])

    # Assert
    assert rc == 0
    assert "clip[take2].wav" in capsys.readouterr().out


def test_predict_with_no_model_is_one_error_line(
    tmp_path: Path, tiny_corpus: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    rc = main(["predict", "--model", str(tmp_path / "nothing"), *_files(tiny_corpus, 1)])

    # Assert
    assert rc == 2
    assert "no saved model" in _error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- synth


def test_synth_writes_the_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    out = tmp_path / "synth"

    # Execute
    rc = main(["synth", "--out", str(out), "--speakers", "2", "--per-emotion", "1",
               "--emotions", "neutral,sad"])

    # Assert
    assert rc == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.wav"))
    assert files == ["neutral/spk01_u000.wav", "neutral/spk02_u000.wav",
                     "sad/spk01_u000.wav", "sad/spk02_u000.wav"]
    assert "wrote 4 synthetic WAV files" in capsys.readouterr().out


def test_synth_with_an_unknown_emotion_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    rc = main(["synth", "--out", str(tmp_path), "--emotions", "neutral,grumpy"])

    # Assert
    assert rc == 2
    assert "'grumpy'" in _error_line(capsys.readouterr().err)


def test_simulate_starts_its_workers_before_torch_is_imported():
    from gossipser.learn.workers import planned_workers

    # what `main` imports before it starts them must not pull torch in
    code = ("import sys, gossipser.cli.main, gossipser.config, gossipser.learn.workers; "
            "heavy = {'torch', 'numpy', 'networkx'} & set(sys.modules); "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert planned_workers(None, None, {}) == 2
    assert planned_workers(None, None, {"gossip": {"workers": 3}}) == 3
    assert planned_workers(4, None, {"gossip": {"workers": 3}}) == 4  # the flag wins
    assert planned_workers(None, "ray", {}) == 0
    assert planned_workers(None, None, {"gossip": {"backend": "ray"}}) == 0
    assert planned_workers(1, None, {}) == 0
    assert planned_workers(None, None, {"gossip": {"workers": "two"}}) == 0


@pytest.mark.parametrize("init", ["shared", "independent"])
def test_simulate_runs_without_torch_in_its_own_process(init: str, tiny_corpus: Path,
                                                        tmp_path: Path):
    # the command plans and mixes; its training processes build, train and score the models
    # (extracting features does need torch: done here first, as a cached corpus would be)
    from gossipser.data.dataset import load_dataset

    assert not load_dataset(tiny_corpus).from_cache
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch imported by the simulate command itself')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from gossipser.cli.main import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "run"
    config = tmp_path / "run.toml"
    config.write_text('[gossip]\ninit = "shared"\n')
    # shared from the config file; independent from the flag, which wins over the file
    flag = ["--init", init] if init == "independent" else []
    done = subprocess.run(
        [sys.executable, "-c", code, "simulate", "--config", str(config), *flag,
         "--data", str(tiny_corpus), "--rounds", "2",
         "--local-epochs", "1", "--peers", "3", "--test-speakers", "spk04", "--display",
         "none", "--record-messages", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = _summary(out)
    assert summary["stopped"]["round"] == 2
    assert summary["config"]["gossip"]["init"] == init
    assert 0.0 <= summary["final"]["ua_mean"] <= 1.0


def test_the_command_line_lists_every_registered_algorithm():
    from gossipser.cli.main import ALGORITHMS as listed
    from gossipser.gossip.algorithms import ALGORITHMS

    assert listed == ALGORITHMS
