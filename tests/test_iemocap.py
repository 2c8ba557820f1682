"""IEMOCAP as released, on a miniature release written here: session layout, EmoEvaluation
labels and their awkward lines, speakers, the iemocap4 merge, session folds, the skipped-file
report, and `gossipser train` / `simulate` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gossipser.cli.commands import default_test_speakers
from gossipser.cli.main import main
from gossipser.data.corpora import load_corpus, normalize_speaker_ids
from gossipser.data.dataset import (
    Dataset,
    corpus_arrays,
    folds_by_session,
    load_dataset,
    speaker_folds,
)
from gossipser.data.features import FeatureConfig
from gossipser.data.iemocap import parse_labels, parse_utterance
from gossipser.errors import ConfigError, CorpusError
from gossipser.gossip.plan import plan_run
from gossipser.gossip.settings import GossipConfig
from gossipser.privacy.attributes import default_attributes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
# session -> dialog -> [(speaker letter and number, label)]; None: the wav has no label line
RELEASE = {
    "Session1": {
        "Ses01F_impro01": [("F000", "neu"), ("F001", "hap"), ("F002", "exc"), ("F003", "sad"),
                           ("F004", "ang"), ("M000", "neu"), ("M001", "exc"), ("M002", "ang"),
                           ("M003", "sad"), ("M004", "xxx"), ("M005", "hap")],
        "Ses01F_script01_1": [("F000", "neu"), ("F001", "ang"), ("F002", "fru"), ("F003", None),
                              ("M000", "sad"), ("M001", "neu"), ("M002", "oth")],
    },
    "Session2": {
        "Ses02M_impro03": [("F000", "hap"), ("F001", "neu"), ("F002", "sad"), ("F003", "ang"),
                           ("F004", "exc"), ("M000", "neu"), ("M001", "hap"), ("M002", "ang"),
                           ("M003", "sad"), ("M004", "fea")],
        "Ses02M_script02_2": [("F000", "neu"), ("M000", "ang")],
    },
}
NO_LABEL_FILE = {"Ses02M_script02_2"}
PITCH = {"neu": 120, "hap": 220, "exc": 240, "sad": 95, "ang": 190, "fru": 170, "fea": 260}


def write_wav(path: Path, label: str | None, seed: int) -> None:
    """0.6 s of a harmonic tone whose pitch follows the label, with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.6 * SR)) / SR
    f0 = PITCH.get(label or "", 150) * (1 + 0.04 * rng.standard_normal())
    y = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 5)) * np.hanning(len(t))
    y = y + 0.01 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * y / np.abs(y).max()).astype(np.float32), SR, subtype="PCM_16")


def label_file(dialog: str, rows: list[tuple[str, str | None]], *, extra: str = "") -> str:
    """An EmoEvaluation file as released: header, blank lines, one label line per turn
    followed by each annotator's categorical and dimensional lines."""
    lines = [HEADER, ""]
    for k, (who, label) in enumerate(rows):
        if label is None:
            continue
        start = 2.0 + 3.1 * k
        lines += [f"[{start:.4f} - {start + 2.5:.4f}]\t{dialog}_{who}\t{label}\t"
                  "[2.5000, 3.0000, 2.5000]",
                  "C-E1:\tNeutral;\t()", "C-E3:\tFrustration; Anger;\t(irritated [a bit])",
                  "C-F2:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom  2;\t()",
                  "A-F2:\tval 2; act 3; dom  3;\t(mildly aggravated)", ""]
    return "\n".join(lines) + extra


def write_release(root: Path, *, audio: bool = True) -> Path:
    """RELEASE under `root`; `audio=False` writes empty WAVs (enough for the loader)."""
    seed = 0
    for session, dialogs in RELEASE.items():
        labels = root / session / "dialog" / "EmoEvaluation"
        labels.mkdir(parents=True)
        for dialog, rows in dialogs.items():
            for who, label in rows:
                wav = root / session / "sentences" / "wav" / dialog / f"{dialog}_{who}.wav"
                if audio:
                    write_wav(wav, label, seed)
                else:
                    wav.parent.mkdir(parents=True, exist_ok=True)
                    wav.touch()
                seed += 1
            # the whole dialog's recording: not an utterance, neither loaded nor skipped
            (root / session / "dialog" / "wav").mkdir(parents=True, exist_ok=True)
            (root / session / "dialog" / "wav" / f"{dialog}.wav").touch()
            if dialog in NO_LABEL_FILE:
                continue
            # a label line for an utterance whose wav is not there is harmless
            stray = f"[99.0 - 99.5]\t{dialog}_F099\tneu\t[3, 3, 3]\n"
            text = label_file(dialog, rows, extra=stray)
            newline = "\r\n" if session == "Session2" else "\n"
            (labels / f"{dialog}.txt").write_text(text.replace("\n", newline), newline="")
        # per-annotator files in subfolders follow another format and are not read
        (labels / "Categorical").mkdir()
        (labels / "Categorical" / "whatever_e2_cat.txt").write_text(
            f"{next(iter(dialogs))}_F000 :Happiness; ()\n")
    return root


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The miniature release with audio, shared read-only: copy it to change anything."""
    return write_release(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOSSIPSER_CACHE", str(tmp_path / "cache"))


def _utt(corpus, stem: str):
    return next(u for u in corpus.utterances if u.path.stem == stem)


def _dataset(corpus) -> Dataset:
    """A Dataset over the corpus listing, without audio (for split and fold logic)."""
    labels, speakers, paths = corpus_arrays(corpus)
    return Dataset(corpus=corpus, cfg=FeatureConfig(), frames=[], labels=labels,
                   speakers=speakers, paths=paths, failed=[], from_cache=False)


# ---------------------------------------------------------------- ids and label lines


@pytest.mark.parametrize(("stem", "expected"), [
    ("Ses01F_impro01_M012", ("Ses01M", "Ses01", "Ses01F_impro01", "improvised")),
    ("Ses01F_impro01_F000", ("Ses01F", "Ses01", "Ses01F_impro01", "improvised")),
    ("Ses05M_script02_2_F023", ("Ses05F", "Ses05", "Ses05M_script02_2", "scripted")),
    ("Ses03M_impro05b_M001", ("Ses03M", "Ses03", "Ses03M_impro05b", "improvised")),
    ("Ses02F_script01_1b_M004", ("Ses02M", "Ses02", "Ses02F_script01_1b", "scripted")),
])
def test_utterance_ids_give_session_gender_speaker_and_recording(stem, expected):
    # Execute / Assert
    assert parse_utterance(stem) == expected


@pytest.mark.parametrize("stem", ["Ses01X_impro01_F000", "Ses01F_impro01", "Ses01F_impro01_F",
                                  "Ses01F_chat01_F000", "Ses1F_impro01_F000", "readme"])
def test_names_that_are_not_utterance_ids(stem):
    # Execute / Assert
    assert parse_utterance(stem) is None


def test_label_lines_are_read_and_everything_else_ignored():
    # Prepare
    text = "\r\n".join([
        HEADER, "",
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]",
        "C-E2:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom  2;\t()",
        "[10.0100 - 11.3925]  Ses01F_impro01_M001  Exc  [3.5, 3.5, 3.0]",  # spaces, capital
        "C-E1:\t[not a label line]", "",
        "[12.5 - 13.0]\tSes01F_impro01_F000\tang\t[1, 4, 4]",  # a repeat keeps the first
    ])

    # Execute
    labels = parse_labels(text)

    # Assert
    assert labels == {"Ses01F_impro01_F000": "neu", "Ses01F_impro01_M001": "exc"}


# ---------------------------------------------------------------- the loader


def test_release_is_detected_with_speakers_labels_and_metadata(release):
    # Execute
    corpus = load_corpus(release)

    # Assert
    assert corpus.name == "iemocap"
    assert corpus.speakers == ("Ses01F", "Ses01M", "Ses02F", "Ses02M")
    assert corpus.classes == ("neutral", "happy", "sad", "angry", "fearful", "excited",
                              "frustrated")
    assert corpus.counts() == {"neutral": 6, "happy": 4, "sad": 5, "angry": 5, "fearful": 1,
                               "excited": 3, "frustrated": 1}
    m = _utt(corpus, "Ses01F_impro01_M002")  # the male speaker in a female-led dialog
    assert (m.speaker, m.emotion, m.session, m.recording, m.corpus) == (
        "Ses01M", "angry", "Ses01", "improvised", "iemocap")
    f = _utt(corpus, "Ses02M_impro03_F004")
    assert (f.speaker, f.emotion, f.session) == ("Ses02F", "excited", "Ses02")
    assert _utt(corpus, "Ses01F_script01_1_F002").recording == "scripted"
    assert corpus.sessions == {"Ses01": ("Ses01F", "Ses01M"), "Ses02": ("Ses02F", "Ses02M")}
    assert all(u.path.parent.parent.name == "wav" and "sentences" in u.path.parts
               for u in corpus.utterances)  # never the whole-dialog recordings
    assert corpus.notes == ()
    assert corpus.merged == ()


def test_iemocap4_merges_excited_into_happy_and_drops_the_other_classes(release):
    # Execute
    four = load_corpus(release, corpus="iemocap", emotions="iemocap4")
    five = load_corpus(release, emotions="five")
    four_fear = load_corpus(release, emotions="iemocap4,fear")

    # Assert
    assert four.classes == ("neutral", "happy", "sad", "angry")
    assert four.counts() == {"neutral": 6, "happy": 7, "sad": 5, "angry": 5}
    assert four.merged == (("excited", "happy"),)
    assert _utt(four, "Ses01F_impro01_F002").emotion == "happy"  # was exc
    assert "Ses01F_script01_1_F002" not in {u.path.stem for u in four.utterances}  # fru
    assert five.counts() == {"neutral": 6, "happy": 4, "sad": 5, "angry": 5, "fearful": 1}
    assert five.merged == ()  # five keeps excited out rather than merging it
    assert four_fear.counts()["happy"] == 7 and four_fear.counts()["fearful"] == 1
    with pytest.raises(ConfigError, match="excited is merged into happy"):
        load_corpus(release, emotions="iemocap4,excited")


def test_skipped_files_are_counted_by_reason_with_their_first_names(release):
    # Execute
    corpus = load_corpus(release)

    # Assert
    wav1, wav2 = "Session1/sentences/wav", "Session2/sentences/wav"
    assert corpus.skipped_summary() == (
        f"skipped 5 files: 1 labelled xxx (first: {wav1}/Ses01F_impro01/Ses01F_impro01_M004.wav)"
        f"; 1 with no label line (first: {wav1}/Ses01F_script01_1/Ses01F_script01_1_F003.wav)"
        f"; 1 labelled oth (first: {wav1}/Ses01F_script01_1/Ses01F_script01_1_M002.wav)"
        f"; 2 with no EmoEvaluation file (first: {wav2}/Ses02M_script02_2/"
        f"Ses02M_script02_2_F000.wav, {wav2}/Ses02M_script02_2/Ses02M_script02_2_M000.wav)"
    )
    assert len(corpus.utterances) + len(corpus.skipped) == sum(
        len(rows) for dialogs in RELEASE.values() for rows in dialogs.values())


def test_improvised_only_keeps_the_improvised_dialogs(release, tiny_corpus):
    # Execute
    corpus = load_corpus(release, emotions="iemocap4", improvised_only=True)

    # Assert
    assert {u.recording for u in corpus.utterances} == {"improvised"}
    assert corpus.counts() == {"neutral": 4, "happy": 7, "sad": 4, "angry": 4}
    with pytest.raises(ConfigError, match="improvised-only .* is generic"):
        load_corpus(tiny_corpus, improvised_only=True)


def test_junk_label_file_stray_wav_and_missing_label_folder(tmp_path):
    # Prepare
    root = write_release(tmp_path / "rel", audio=False)
    junk = root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_script01_1.txt"
    junk.write_bytes(b"\x00\xff\xfe binary \x89PNG\r\n")
    (root / "Session1" / "sentences" / "wav" / "Ses01F_impro01" / "notes.wav").touch()
    shutil.rmtree(root / "Session2" / "dialog")

    # Execute
    corpus = load_corpus(root, corpus="iemocap")

    # Assert
    assert corpus.notes == ("Session1/dialog/EmoEvaluation/Ses01F_script01_1.txt has no "
                            "label lines", "Session2 has no dialog/EmoEvaluation folder")
    reasons = dict(zip((p.name for p in corpus.skipped), corpus.skip_reasons, strict=True))
    assert reasons["notes.wav"] == "not named like an IEMOCAP utterance"
    assert reasons["Ses01F_script01_1_F000.wav"] == "with no label line"
    assert reasons["Ses02M_impro03_F000.wav"] == "with no EmoEvaluation file"
    assert corpus.speakers == ("Ses01F", "Ses01M")


def test_unusable_folders_are_one_line_errors(tmp_path, tiny_corpus):
    # Prepare
    no_labels = write_release(tmp_path / "rel", audio=False)
    for session in ("Session1", "Session2"):
        shutil.rmtree(no_labels / session / "dialog")

    # Execute / Assert
    with pytest.raises(CorpusError, match="no EmoEvaluation label files under") as caught:
        load_corpus(no_labels)
    assert "\n" not in str(caught.value)
    with pytest.raises(CorpusError, match="no IEMOCAP session folders .* Session1/sentences"):
        load_corpus(tiny_corpus, corpus="iemocap")


# ---------------------------------------------------------------- splits and peers


def test_session_folds_and_default_test_session(release):
    # Prepare
    ds = load_dataset(release, emotions="iemocap4", cache_dir=None)

    # Execute
    two = speaker_folds(ds, 2)
    three = speaker_folds(ds, 3)

    # Assert
    assert len(ds) == 23 and not ds.failed
    assert two == [("Ses01F", "Ses01M"), ("Ses02F", "Ses02M")]
    assert folds_by_session(ds, 2) and not folds_by_session(ds, 3)
    assert three == [("Ses01F", "Ses02M"), ("Ses01M",), ("Ses02F",)]  # by speaker beyond 2
    assert default_test_speakers(ds) == ("Ses02F", "Ses02M")
    assert normalize_speaker_ids("ses02,Ses01F", ds.corpus) == ("Ses02F", "Ses02M", "Ses01F")
    with pytest.raises(ConfigError, match=r"'Ses03' not among .* \(or sessions: Ses01, Ses02\)"):
        normalize_speaker_ids("Ses03", ds.corpus)
    values, _ = default_attributes(ds)
    assert values == {"Ses01F": "female", "Ses01M": "male", "Ses02F": "female",
                      "Ses02M": "male"}


def test_full_release_layout_gives_five_session_folds_and_eight_peers(tmp_path):
    # Prepare: five sessions, two speakers each, labels only (the loader opens no audio)
    root = tmp_path / "full"
    for n in range(1, 6):
        dialog = f"Ses{n:02d}F_impro01"
        rows = [(f"{g}{i:03d}", lab) for g in "FM" for i, lab in enumerate(("neu", "hap", "exc",
                                                                             "ang", "sad"))]
        for who, _ in rows:
            wav = root / f"Session{n}" / "sentences" / "wav" / dialog / f"{dialog}_{who}.wav"
            wav.parent.mkdir(parents=True, exist_ok=True)
            wav.touch()
        labels = root / f"Session{n}" / "dialog" / "EmoEvaluation"
        labels.mkdir(parents=True)
        (labels / f"{dialog}.txt").write_text(label_file(dialog, rows))
    corpus = load_corpus(root, emotions="iemocap4")
    ds = _dataset(corpus)

    # Execute
    folds = speaker_folds(ds, 5)
    test = default_test_speakers(ds)
    plan = plan_run(corpus, cfg=GossipConfig(), test_speakers=test, seed=0)

    # Assert
    assert len(corpus.speakers) == 10
    assert folds == [(f"Ses{n:02d}F", f"Ses{n:02d}M") for n in range(1, 6)]
    assert test == ("Ses05F", "Ses05M")
    assert len(plan.peer_paths) == 8  # one peer per speaker of the four training sessions
    assert all(len(p) == 5 for p in plan.peer_paths)
    assert len(plan.test_paths) == 10
    assert all("Session5" in p for p in plan.test_paths)


# ---------------------------------------------------------------- command line


def test_train_defaults_to_leave_one_session_out(release, tmp_path, capsys):
    # Prepare
    out = tmp_path / "out"

    # Execute
    rc = main(["train", "--data", str(release), "--emotions", "iemocap4", "--model", "dnn",
               "--width", "8", "--epochs", "1", "--out", str(out)])

    # Assert
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["corpus"] == "iemocap"
    assert summary["classes"] == ["neutral", "happy", "sad", "angry"]
    assert summary["emotion_set"] == "iemocap4"
    assert [f["test_speakers"] for f in summary["folds"]] == [["Ses01F", "Ses01M"],
                                                              ["Ses02F", "Ses02M"]]
    assert np.array(summary["confusion"]).sum() == 23  # every utterance tested once
    text = " ".join(captured.out.split())
    assert "corpus: iemocap (auto-detected)" in text
    assert "2 folds by session (leave-one-session-out)" in text
    assert "found: neutral 6, happy 7, sad 5, angry 5 (excited merged into happy)" in text
    assert "sessions: Ses01 14, Ses02 9; improvised 19, scripted 4" in text
    assert "skipped 5 files: 1 labelled xxx" in text


def test_simulate_holds_out_the_last_session_with_one_peer_per_speaker(release, tmp_path,
                                                                         capsys):
    # Prepare
    out = tmp_path / "run"

    # Execute
    rc = main(["simulate", "--data", str(release), "--corpus", "iemocap", "--emotions",
               "iemocap4", "--iemocap-improvised-only", "--rounds", "2", "--local-epochs", "1",
               "--model", "dnn", "--width", "8", "--workers", "1", "--display", "none",
               "--out", str(out)])

    # Assert
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_speakers"] == ["Ses02F", "Ses02M"]
    assert summary["peers"] == 2
    assert summary["data"]["emotion_set"] == "iemocap4"
    assert summary["data"]["iemocap_improvised_only"] is True
    assert 0.0 <= summary["final"]["ua_mean"] <= 1.0
    text = " ".join(captured.out.split())
    assert "19 utterances" in text
    assert "sessions: Ses01 10, Ses02 9; improvised 19 (improvised only)" in text
    assert "testing on speakers Ses02F, Ses02M (9 utterances)" in text


def test_improvised_only_on_another_corpus_is_one_error_line(tiny_corpus, tmp_path, capsys):
    # Execute
    rc = main(["train", "--data", str(tiny_corpus), "--iemocap-improvised-only",
               "--out", str(tmp_path / "out")])

    # Assert
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "improvised-only" in lines[0] and "generic" in lines[0]
