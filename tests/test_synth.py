"""Synthetic emotional corpus: layout, determinism, audio format and emotion direction."""

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from gossipser.data.synth import EMOTIONS, SynthConfig, make_speaker, synthesize_utterance
from gossipser.data.synth_corpus import write_corpus
from gossipser.errors import ConfigError, CorpusError

SR = 16000


def _utterances(emotion: str, *, count: int = 3, speakers=(1, 2)) -> list[np.ndarray]:
    cfg = SynthConfig(duration_s=1.5)
    return [
        synthesize_utterance(
            speaker=make_speaker(s, seed=0), emotion=emotion,
            rng=np.random.default_rng([s, i]), cfg=cfg,
        )
        for s in speakers
        for i in range(count)
    ]


def _rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))


def _median_f0(y: np.ndarray) -> float:
    """Median F0 over loud frames by autocorrelation (searching 60..500 Hz)."""
    frames = sliding_window_view(y.astype(np.float64), 1024)[::256]
    energy = np.sqrt(np.mean(frames**2, axis=1))
    frames = frames[energy > 0.3 * energy.max()]
    frames = frames - frames.mean(axis=1, keepdims=True)
    ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2048)) ** 2)[:, :1024]
    low, high = SR // 500, SR // 60
    lag = low + np.argmax(ac[:, low:high], axis=1)
    return float(np.median(SR / lag))


def test_write_corpus_uses_the_generic_layout(tmp_path: Path) -> None:
    # Prepare
    cfg = SynthConfig(speakers=2, per_emotion=2, emotions=("angry", "sad"), duration_s=0.8)
    calls: list[tuple[int, int]] = []

    # Execute
    written = write_corpus(tmp_path, cfg, progress=lambda done, total: calls.append((done, total)))

    # Assert
    files = sorted(tmp_path.rglob("*.wav"))
    assert written == len(files) == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["angry", "sad", "speakers.csv"]
    # the speaker sheet: odd speakers male, as in RAVDESS (what `gossipser attack` infers)
    assert (tmp_path / "speakers.csv").read_text() == "speaker,gender\nspk01,male\nspk02,female\n"
    for emotion in ("angry", "sad"):
        names = sorted(p.name for p in (tmp_path / emotion).iterdir())
        assert names == ["spk01_u000.wav", "spk01_u001.wav", "spk02_u000.wav", "spk02_u001.wav"]
    assert all(re.fullmatch(r"spk\d{2}_u\d{3}\.wav", p.name) for p in files)
    assert calls == [(i, 8) for i in range(1, 9)]


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path: Path) -> None:
    # Prepare
    cfg = SynthConfig(speakers=2, per_emotion=1, emotions=("happy", "fearful"), duration_s=0.8)

    # Execute
    write_corpus(tmp_path / "a", cfg)
    write_corpus(tmp_path / "b", cfg)
    write_corpus(tmp_path / "c", replace(cfg, seed=1))

    # Assert
    rel = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.wav"))
    assert len(rel) == 4
    for r in rel:
        assert (tmp_path / "a" / r).read_bytes() == (tmp_path / "b" / r).read_bytes()
        assert (tmp_path / "a" / r).read_bytes() != (tmp_path / "c" / r).read_bytes()


def test_a_file_does_not_depend_on_which_other_emotions_are_generated(tmp_path: Path) -> None:
    # Prepare
    alone = SynthConfig(speakers=1, per_emotion=1, emotions=("angry",), duration_s=0.8)
    mixed = SynthConfig(speakers=1, per_emotion=1, emotions=("sad", "angry"), duration_s=0.8)

    # Execute
    write_corpus(tmp_path / "alone", alone)
    write_corpus(tmp_path / "mixed", mixed)

    # Assert
    name = Path("angry") / "spk01_u000.wav"
    assert (tmp_path / "alone" / name).read_bytes() == (tmp_path / "mixed" / name).read_bytes()


def test_files_are_16k_mono_pcm16_of_plausible_duration(tmp_path: Path) -> None:
    # Prepare
    cfg = SynthConfig(speakers=2, per_emotion=1, emotions=("sad", "angry"), duration_s=2.0)

    # Execute
    write_corpus(tmp_path, cfg)

    # Assert
    for path in tmp_path.rglob("*.wav"):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
        assert 0.8 * 2.0 - 0.01 <= info.duration <= 1.2 * 2.0 + 0.01
        y, _ = sf.read(path)
        assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0
        assert _rms(y) > 1e-3  # not silent
        assert _rms(y[: int(0.15 * SR)]) < 0.1 * _rms(y)  # leading silence, as recorded


@settings(max_examples=15, deadline=None)
@given(
    emotion=st.sampled_from(EMOTIONS),
    speaker=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    duration=st.floats(0.5, 2.0),
)
def test_any_utterance_is_finite_float32_within_unit_range(
    emotion: str, speaker: int, seed: int, duration: float
) -> None:
    # Prepare
    cfg = SynthConfig(duration_s=duration)

    # Execute
    y = synthesize_utterance(
        speaker=make_speaker(speaker, seed=seed), emotion=emotion,
        rng=np.random.default_rng(seed), cfg=cfg,
    )

    # Assert
    assert y.dtype == np.float32 and y.ndim == 1
    assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0
    assert 0.75 * duration * SR <= len(y) <= 1.25 * duration * SR


def test_angry_is_louder_than_sad() -> None:
    # Prepare / Execute
    angry = np.mean([_rms(y) for y in _utterances("angry")])
    sad = np.mean([_rms(y) for y in _utterances("sad")])

    # Assert
    assert angry > 2.0 * sad


def test_happy_is_higher_pitched_than_sad() -> None:
    # Prepare / Execute
    happy = np.mean([_median_f0(y) for y in _utterances("happy")])
    sad = np.mean([_median_f0(y) for y in _utterances("sad")])

    # Assert
    assert happy > 1.1 * sad


def test_female_speakers_are_higher_pitched_than_male() -> None:
    # Prepare / Execute
    male = np.mean([_median_f0(y) for y in _utterances("neutral", speakers=(1, 3))])
    female = np.mean([_median_f0(y) for y in _utterances("neutral", speakers=(2, 4))])

    # Assert
    assert make_speaker(1, seed=0).name == "spk01" and not make_speaker(1, seed=0).female
    assert female > 1.4 * male


@pytest.mark.parametrize(
    "kwargs",
    [
        {"speakers": 0},
        {"per_emotion": 0},
        {"seed": -1},
        {"sample_rate": 1000},
        {"duration_s": 0.1},
        {"emotions": ("angry", "bored")},
        {"emotions": ()},
        {"emotions": ("sad", "sad")},
    ],
)
def test_invalid_config_raises_config_error(kwargs: dict) -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ConfigError, match="synth:"):
        SynthConfig(**kwargs)


def test_unknown_emotion_in_synthesize_raises_config_error() -> None:
    # Prepare
    speaker = make_speaker(1, seed=0)

    # Execute / Assert
    with pytest.raises(ConfigError, match="bored"):
        synthesize_utterance(
            speaker=speaker, emotion="bored", rng=np.random.default_rng(0), cfg=SynthConfig()
        )


def test_unwritable_output_raises_corpus_error(tmp_path: Path) -> None:
    # Prepare
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    cfg = SynthConfig(speakers=1, per_emotion=1, emotions=("calm",), duration_s=0.5)

    # Execute / Assert
    with pytest.raises(CorpusError, match="cannot create"):
        write_corpus(blocker, cfg)


def test_uneven_shards_span_the_range_with_unbalanced_classes():
    from gossipser.data.synth_corpus import utterance_counts

    cfg = SynthConfig(speakers=12, per_speaker=(2, 80), seed=4)
    counts = utterance_counts(cfg)
    sizes = counts.sum(axis=1)
    assert counts.shape == (12, len(cfg.emotions))
    assert sizes.min() == 2 and sizes.max() == 80  # 40x between the smallest and largest
    assert len(set(sizes.tolist())) >= 10  # spread over the range, not two sizes
    big = counts[sizes.argmax()]
    assert big.max() >= 2 * max(1, np.median(big))  # one speaker's classes are unbalanced
    assert (utterance_counts(cfg) == counts).all()  # seeded
    assert not (utterance_counts(SynthConfig(speakers=12, per_speaker=(2, 80), seed=5))
                == counts).all()
    assert (utterance_counts(SynthConfig(speakers=3, per_emotion=4)) == 4).all()


def test_uneven_corpus_on_disk_matches_the_counts(tmp_path):
    from gossipser.data.synth_corpus import utterance_counts

    cfg = SynthConfig(speakers=4, per_speaker=(2, 9), duration_s=0.5,
                      emotions=("neutral", "sad", "angry"))
    n = write_corpus(tmp_path, cfg)
    counts = utterance_counts(cfg)
    assert n == counts.sum() == len(list(tmp_path.rglob("*.wav")))
    for s in range(4):
        on_disk = len(list(tmp_path.glob(f"*/spk{s + 1:02d}_u*.wav")))
        assert on_disk == counts[s].sum()


@pytest.mark.parametrize("bad", [(0, 5), (9, 3)])
def test_uneven_range_must_be_ordered_and_positive(bad):
    with pytest.raises(ConfigError, match="utterances per speaker"):
        SynthConfig(per_speaker=bad)
