"""MFCC extraction: agreement with librosa, model views, config validation, the on-disk cache
and bad audio files."""

from __future__ import annotations

import gc
import shutil
import warnings
import zipfile
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from gossipser.data.audio import peak_normalize, read_audio, trim_silence
from gossipser.data.dataset import load_dataset
from gossipser.data.features import (
    FeatureConfig,
    MfccExtractor,
    add_deltas,
    cache_key,
    default_cache_dir,
    extract,
    load_or_extract,
    model_inputs,
    prepare_signal,
    to_sequence,
    to_stats,
)
from gossipser.errors import ConfigError, CorpusError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SR = 16000
TOL = 1e-3  # absolute, on MFCC values of order 1..500

CONFIGS = [
    pytest.param(FeatureConfig(), id="default"),
    pytest.param(
        FeatureConfig(frame_ms=25.0, hop_ms=10.0, n_mfcc=20, window="hamming"), id="25ms-hamming",
    ),
]


def _chirp(n: int, f0: float, f1: float) -> np.ndarray:
    t = np.arange(n) / SR
    dur = n / SR
    return (0.6 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * dur)))).astype(np.float32)


def _test_signals() -> list[np.ndarray]:
    """Four signals of different lengths and characters (all longer than one FFT frame)."""
    rng = np.random.default_rng(7)
    t = np.arange(4001) / SR
    am_tone = (0.4 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(
        np.float32)
    return [
        _chirp(16000, 100.0, 6000.0),
        (0.3 * rng.standard_normal(12345)).astype(np.float32),
        am_tone,
        _chirp(1500, 3000.0, 300.0) + (0.01 * rng.standard_normal(1500)).astype(np.float32),
    ]


def _librosa_mfcc(signal: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    return librosa.feature.mfcc(y=signal, **cfg.librosa_kwargs()).T  # (frames, n_mfcc)


def _corpus_files(root: Path) -> list[Path]:
    """One take per emotion folder, different speakers: lengths differ by a few tenths of a s."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    return [sorted(f.glob("*.wav"))[i] for i, f in enumerate(folders)]


# ---------------------------------------------------------------- agreement with librosa


@pytest.mark.parametrize("cfg", CONFIGS)
def test_batched_mfcc_matches_librosa_on_synthetic_signals(cfg: FeatureConfig) -> None:
    # Prepare
    signals = _test_signals()
    extractor = MfccExtractor(cfg)

    # Execute
    ours = extractor(signals)

    # Assert
    assert len(ours) == len(signals)
    for signal, mfcc in zip(signals, ours, strict=True):
        ref = _librosa_mfcc(signal, cfg)
        assert mfcc.dtype == np.float32
        assert mfcc.shape == ref.shape == (extractor.n_frames(len(signal)), cfg.n_mfcc)
        np.testing.assert_allclose(mfcc, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_batched_mfcc_matches_librosa_on_corpus_files(
    cfg: FeatureConfig, tiny_corpus: Path,
) -> None:
    # Prepare
    signals = [prepare_signal(p, cfg) for p in _corpus_files(tiny_corpus)]
    assert len({len(s) for s in signals}) > 1  # the batch really mixes lengths

    # Execute
    ours = MfccExtractor(cfg)(signals)

    # Assert
    for signal, mfcc in zip(signals, ours, strict=True):
        ref = _librosa_mfcc(signal, cfg)
        assert mfcc.shape == ref.shape
        np.testing.assert_allclose(mfcc, ref, rtol=0, atol=TOL)


def test_batch_partners_do_not_change_a_signal_features() -> None:
    # Prepare: zero padding to the longest signal must not leak into a short one's frames
    signals = _test_signals()
    extractor = MfccExtractor(FeatureConfig())

    # Execute
    together = extractor(signals)
    alone = [extractor([s])[0] for s in signals]

    # Assert
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_extract_matches_a_librosa_pipeline_from_the_files(tiny_corpus: Path) -> None:
    # Prepare
    cfg = FeatureConfig(deltas=0)  # the bare MFCC, as librosa computes it
    paths = _corpus_files(tiny_corpus)

    # Execute
    table = extract(paths, cfg, batch_size=3)  # two batches: 3 + 1

    # Assert: librosa reads, resamples, pre-emphasises and computes the MFCC itself
    assert table.failed == []
    assert table.paths == [str(p) for p in paths]
    for path, frames in zip(paths, table.frames, strict=True):
        y, _ = librosa.load(path, sr=cfg.sample_rate)
        y = peak_normalize(trim_silence(y, top_db=cfg.trim_db))
        y = librosa.effects.preemphasis(y, coef=cfg.pre_emphasis, zi=0)
        ref = _librosa_mfcc(y, cfg)
        assert frames.shape == ref.shape
        np.testing.assert_allclose(frames, ref, rtol=0, atol=TOL)


@pytest.mark.ravdess
def test_ravdess_flac_features_match_librosa(ravdess_root: Path) -> None:
    # Prepare: six FLACs from different actors
    files = [sorted((ravdess_root / f"Actor_{a:02d}").glob("*.flac"))[a] for a in range(1, 7)]
    cfg = FeatureConfig(deltas=0)

    # Execute
    table = extract(files, cfg)

    # Assert
    assert table.failed == []
    assert len(table.frames) == 6
    for path, frames in zip(files, table.frames, strict=True):
        y, _ = librosa.load(path, sr=cfg.sample_rate)
        y = peak_normalize(trim_silence(y, top_db=cfg.trim_db))
        y = librosa.effects.preemphasis(y, coef=cfg.pre_emphasis, zi=0)
        ref = _librosa_mfcc(y, cfg)
        assert frames.shape == ref.shape
        np.testing.assert_allclose(frames, ref, rtol=0, atol=TOL)


# ---------------------------------------------------------------- deltas and model views


@pytest.mark.parametrize("order", [1, 2])
def test_deltas_append_librosa_deltas(order: int) -> None:
    # Prepare
    cfg = FeatureConfig(deltas=order)
    mfcc = MfccExtractor(cfg)([_chirp(8000, 200.0, 4000.0)])[0]

    # Execute
    full = add_deltas(mfcc, order)

    # Assert
    assert full.shape == (len(mfcc), cfg.dim) == (len(mfcc), 13 * (1 + order))
    np.testing.assert_array_equal(full[:, :13], mfcc)
    for o in range(1, order + 1):
        ref = librosa.feature.delta(mfcc.T, width=9, order=o).T
        np.testing.assert_allclose(full[:, 13 * o : 13 * (o + 1)], ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("n_frames", [1, 2, 3, 4, 8])
def test_deltas_of_very_short_utterances_keep_the_shape(n_frames: int) -> None:
    # Prepare
    mfcc = np.random.default_rng(0).standard_normal((n_frames, 13)).astype(np.float32)

    # Execute
    full = add_deltas(mfcc, 2)

    # Assert
    assert full.shape == (n_frames, 39)
    assert np.isfinite(full).all()


def test_extract_with_deltas_gives_the_wider_frames(tiny_corpus: Path) -> None:
    # Prepare
    cfg = FeatureConfig(deltas=2)

    # Execute
    table = extract(_corpus_files(tiny_corpus)[:2], cfg)

    # Assert
    assert [f.shape[1] for f in table.frames] == [39, 39]


def test_to_sequence_crops_the_centre_of_a_long_utterance() -> None:
    # Prepare
    cfg = FeatureConfig(max_frames=100, cmvn=False)
    frames = np.arange(200 * 13, dtype=np.float32).reshape(200, 13)

    # Execute
    seq = to_sequence(frames, cfg)

    # Assert
    assert seq.shape == (100, 13)
    assert seq.dtype == np.float32
    np.testing.assert_array_equal(seq, frames[50:150])


def test_to_sequence_pads_a_short_utterance_at_the_end() -> None:
    # Prepare
    cfg = FeatureConfig(max_frames=100, cmvn=False)
    frames = np.ones((30, 13), dtype=np.float32)

    # Execute
    seq = to_sequence(frames, cfg)

    # Assert
    assert seq.shape == (100, 13)
    np.testing.assert_array_equal(seq[:30], frames)
    assert not seq[30:].any()


def test_to_sequence_cmvn_normalises_each_coefficient() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    frames = (rng.standard_normal((50, 13)) * np.arange(1, 14) + 100).astype(np.float32)
    cfg = FeatureConfig(max_frames=50)

    # Execute
    seq = to_sequence(frames, cfg)

    # Assert
    np.testing.assert_allclose(seq.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(seq.std(axis=0), 1.0, atol=1e-3)


def test_to_sequence_cmvn_of_a_constant_utterance_is_finite() -> None:
    # Prepare
    frames = np.full((20, 13), 3.0, dtype=np.float32)

    # Execute
    seq = to_sequence(frames, FeatureConfig(max_frames=10))

    # Assert
    assert np.isfinite(seq).all()
    assert not seq.any()


def test_to_stats_gives_mean_and_std() -> None:
    # Prepare
    frames = np.array([[1.0, 10.0], [3.0, 10.0]], dtype=np.float32)

    # Execute
    stats = to_stats(frames)

    # Assert
    assert stats.shape == (4,)
    assert stats.dtype == np.float32
    np.testing.assert_allclose(stats, [2.0, 10.0, 1.0, 0.0])


def test_model_inputs_stack_both_views() -> None:
    # Prepare
    cfg = FeatureConfig(deltas=1, max_frames=40)
    frames = [np.ones((n, cfg.dim), np.float32) for n in (10, 40, 90)]

    # Execute
    seq = model_inputs(frames, cfg, "sequence")
    stats = model_inputs(frames, cfg, "stats")
    empty_seq = model_inputs([], cfg, "sequence")
    empty_stats = model_inputs([], cfg, "stats")

    # Assert
    assert seq.shape == (3, 40, 26)
    assert stats.shape == (3, 52)
    assert empty_seq.shape == (0, 40, 26)
    assert empty_stats.shape == (0, 52)
    with pytest.raises(ConfigError, match="unknown feature view"):
        model_inputs(frames, cfg, "spectrogram")


# ---------------------------------------------------------------- config


def test_feature_config_defaults_and_derived_sizes() -> None:
    # Prepare / Execute
    cfg = FeatureConfig()
    other = FeatureConfig(frame_ms=25.0, hop_ms=10.0, deltas=0)

    # Assert
    assert (cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.dim) == (320, 320, 512, 39)
    assert (cfg.deltas, cfg.cmvn_scope) == (2, "speaker")
    assert (other.win_length, other.hop_length, other.n_fft, other.dim) == (400, 160, 512, 13)
    assert FeatureConfig.from_dict(other.to_dict()) == other


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 2000},
        {"pre_emphasis": 1.0},
        {"pre_emphasis": -0.1},
        {"frame_ms": 1.0},
        {"frame_ms": 500.0},
        {"hop_ms": 30.0},  # longer than the 20 ms frame
        {"hop_ms": 0.1},
        {"window": "blackman"},
        {"n_mfcc": 0},
        {"n_mfcc": 41},  # more than n_mels
        {"n_mels": 300, "n_mfcc": 13},
        {"deltas": 3},
        {"max_frames": 4},
        {"top_db": 0.0},
    ],
)
def test_feature_config_rejects_bad_values(kwargs: dict) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="^feature config: "):
        FeatureConfig(**kwargs)


def test_feature_config_from_dict_rejects_unknown_keys() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="unknown keys"):
        FeatureConfig.from_dict({"n_mfcc": 13, "nmfcc": 20})


# ---------------------------------------------------------------- cache


def _copy_files(src: list[Path], dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, dst / p.name)) for p in src]


def test_second_load_comes_from_the_cache(tiny_corpus: Path, tmp_path: Path) -> None:
    # Prepare
    paths = _corpus_files(tiny_corpus)
    cfg = FeatureConfig()

    # Execute
    first, cached_first = load_or_extract(paths, cfg, cache_dir=tmp_path)
    second, cached_second = load_or_extract(paths, cfg, cache_dir=tmp_path)

    # Assert
    assert (cached_first, cached_second) == (False, True)
    assert len(list(tmp_path.glob("mfcc-*.npz"))) == 1
    assert second.paths == first.paths
    assert second.failed == first.failed
    assert len(second.frames) == len(first.frames)
    for a, b in zip(first.frames, second.frames, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_a_corpus_named_by_another_path_shares_the_cache_and_keeps_its_spelling(
    tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the same files, once by absolute path and once relative to the working dir
    cache = tmp_path / "cache"
    monkeypatch.chdir(tiny_corpus.parent)
    absolute = _corpus_files(tiny_corpus)
    relative = [Path(tiny_corpus.name) / p.relative_to(tiny_corpus) for p in absolute]
    load_or_extract(absolute, FeatureConfig(), cache_dir=cache)
    first = load_dataset(tiny_corpus, cache_dir=cache)

    # Execute
    table, cached = load_or_extract(relative, FeatureConfig(), cache_dir=cache)
    again = load_dataset(tiny_corpus.name, cache_dir=cache)  # crashed with a KeyError once

    # Assert: one cache file each, and paths as this caller gave them
    assert cached and len(list(cache.glob("mfcc-*.npz"))) == 2
    assert table.paths == [str(p) for p in relative]
    assert again.from_cache and len(again) == len(first)
    assert not Path(again.paths[0]).is_absolute()


def test_cache_keeps_the_failed_files(tiny_corpus: Path, tmp_path: Path) -> None:
    # Prepare
    data = tmp_path / "data"
    paths = _copy_files(_corpus_files(tiny_corpus)[:2], data)
    (data / "broken.wav").write_bytes(b"not a wav file at all")
    paths.append(data / "broken.wav")
    cache = tmp_path / "cache"
    first, _ = load_or_extract(paths, FeatureConfig(), cache_dir=cache)

    # Execute
    second, cached = load_or_extract(paths, FeatureConfig(), cache_dir=cache)

    # Assert
    assert cached
    assert second.failed == first.failed
    assert [name for name, _ in second.failed] == ["broken.wav"]
    assert len(second.frames) == 2


def test_a_changed_config_gets_its_own_cache_entry(tiny_corpus: Path, tmp_path: Path) -> None:
    # Prepare
    paths = _corpus_files(tiny_corpus)[:2]
    load_or_extract(paths, FeatureConfig(), cache_dir=tmp_path)

    # Execute
    table, cached = load_or_extract(paths, FeatureConfig(n_mfcc=20), cache_dir=tmp_path)

    # Assert
    assert not cached
    assert table.frames[0].shape[1] == 60  # 20 coefficients, deltas, delta-deltas
    assert len(list(tmp_path.glob("mfcc-*.npz"))) == 2
    assert cache_key(paths, FeatureConfig()) != cache_key(paths, FeatureConfig(n_mfcc=20))


def test_a_rewritten_audio_file_invalidates_the_cache(tiny_corpus: Path, tmp_path: Path) -> None:
    # Prepare
    src = _corpus_files(tiny_corpus)
    paths = _copy_files(src[:2], tmp_path / "data")
    cache = tmp_path / "cache"
    load_or_extract(paths, FeatureConfig(), cache_dir=cache)
    shutil.copy(src[2], paths[0])  # same name, other content

    # Execute
    table, cached = load_or_extract(paths, FeatureConfig(), cache_dir=cache)

    # Assert
    assert not cached
    expected = extract([src[2]], FeatureConfig()).frames[0]
    np.testing.assert_array_equal(table.frames[0], expected)


def _damage_garbage(file: Path) -> None:
    file.write_bytes(b"\x00garbage, not an npz archive" * 10)


def _damage_missing_key(file: Path) -> None:
    np.savez(file, data=np.zeros((1, 13), np.float32))


@pytest.mark.parametrize("damage", [_damage_garbage, _damage_missing_key],
                         ids=["garbage", "missing-key"])
def test_a_damaged_cache_file_is_rebuilt(tiny_corpus: Path, tmp_path: Path, damage) -> None:
    # Prepare
    paths = _corpus_files(tiny_corpus)[:2]
    good, _ = load_or_extract(paths, FeatureConfig(), cache_dir=tmp_path)
    (file,) = tmp_path.glob("mfcc-*.npz")
    damage(file)

    # Execute
    table, cached = load_or_extract(paths, FeatureConfig(), cache_dir=tmp_path)

    # Assert
    assert not cached
    for a, b in zip(good.frames, table.frames, strict=True):
        np.testing.assert_array_equal(a, b)
    _, cached_again = load_or_extract(paths, FeatureConfig(), cache_dir=tmp_path)
    assert cached_again


def test_a_truncated_cache_file_is_rebuilt(tiny_corpus: Path, tmp_path: Path) -> None:
    # Prepare: half an archive, as a full disk or a killed copy leaves it
    paths = _corpus_files(tiny_corpus)[:2]
    good, _ = load_or_extract(paths, FeatureConfig(), cache_dir=tmp_path)
    (file,) = tmp_path.glob("mfcc-*.npz")
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    # Execute: np.load(path) leaks its file handle when the zip is bad; record that warning
    # here rather than let it surface as an unraisable error in some later test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            result = load_or_extract(paths, FeatureConfig(), cache_dir=tmp_path)
        except zipfile.BadZipFile:
            result = None
        gc.collect()
    if result is None:
        pytest.fail("load_or_extract let zipfile.BadZipFile escape")

    # Assert
    table, cached = result
    assert not cached
    for a, b in zip(good.frames, table.frames, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_default_cache_dir_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    monkeypatch.setenv("GOSSIPSER_CACHE", str(tmp_path / "here"))

    # Execute / Assert
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("GOSSIPSER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "gossipser"


# ---------------------------------------------------------------- bad and unusual audio


def test_extract_records_unusable_files_and_keeps_the_good_ones(
    tiny_corpus: Path, tmp_path: Path,
) -> None:
    # Prepare
    good = _copy_files(_corpus_files(tiny_corpus)[:3], tmp_path)
    whole = good[0].read_bytes()
    bad = {
        "empty.wav": b"",
        "garbage.wav": b"\x13\x37 this is no audio " * 50,
        "header_only.wav": whole[:30],  # cut inside the RIFF header
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    sf.write(tmp_path / "no_samples.wav", np.zeros(0, np.float32), SR)
    sf.write(tmp_path / "silent.wav", np.zeros(SR, np.float32), SR)
    paths = sorted(tmp_path.glob("*.wav"))
    calls: list[tuple[int, int]] = []

    # Execute
    table = extract(paths, FeatureConfig(), batch_size=2,
                    progress=lambda i, n: calls.append((i, n)))

    # Assert
    assert table.paths == [str(p) for p in good]
    assert len(table.frames) == 3
    failed = dict(table.failed)
    assert set(failed) == {*bad, "no_samples.wav", "silent.wav"}
    for name, reason in failed.items():
        assert name in reason
        assert "\n" not in reason
    assert "silent" in failed["silent.wav"]
    assert "no samples" in failed["no_samples.wav"]
    assert calls[-1] == (len(paths), len(paths))


def test_read_audio_resamples_and_mixes_down(tmp_path: Path) -> None:
    # Prepare: 0.5 s of 440 Hz, 44.1 kHz stereo with the right channel at half amplitude
    sr = 44100
    t = np.arange(sr // 2) / sr
    tone = np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "stereo.wav", np.stack([tone, 0.5 * tone], axis=1), sr,
             subtype="FLOAT")

    # Execute
    y = read_audio(tmp_path / "stereo.wav", sample_rate=SR)

    # Assert
    assert y.dtype == np.float32
    assert y.ndim == 1
    assert len(y) == SR // 2
    assert abs(float(np.abs(y[1000:-1000]).max()) - 0.75) < 0.01
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * SR / len(y) - 440) < 3


def test_read_audio_gives_one_line_errors(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "bad.flac").write_bytes(b"fLaC but not really")

    # Execute / Assert
    for name in ("missing.wav", "bad.flac"):
        with pytest.raises(CorpusError, match=f"^cannot read audio {name}: [^\n]+$"):
            read_audio(tmp_path / name, sample_rate=SR)
