"""Reading audio files into 16 kHz mono float32, with silence trimming and pre-emphasis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from gossipser.errors import CorpusError


def read_audio(path: Path | str, *, sample_rate: int) -> np.ndarray:
    """Read a WAV/FLAC (or anything libsndfile reads) as mono float32 at `sample_rate`.

    Raises CorpusError with one line when the file is unreadable, empty or not finite.
    """
    path = Path(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorpusError(f"cannot read audio {path.name}: {msg}") from None
    if data.size == 0:
        raise CorpusError(f"cannot read audio {path.name}: no samples")
    y = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if sr != sample_rate:
        import librosa  # imported lazily: resampling is the rare path for prepared corpora

        y = librosa.resample(y, orig_sr=sr, target_sr=sample_rate).astype(np.float32)
    if not np.isfinite(y).all():
        raise CorpusError(f"cannot read audio {path.name}: non-finite samples")
    return np.ascontiguousarray(y, dtype=np.float32)


def trim_silence(y: np.ndarray, *, top_db: float, frame: int = 512, hop: int = 128) -> np.ndarray:
    """Drop leading and trailing frames quieter than `top_db` below the loudest frame."""
    if len(y) < frame:
        return y
    n = 1 + (len(y) - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]
    rms = np.sqrt(np.mean(y[idx] ** 2, axis=1))
    db = 20.0 * np.log10(np.maximum(rms, 1e-10) / max(float(rms.max()), 1e-10))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return y
    return y[loud[0] * hop : min(len(y), loud[-1] * hop + frame)]


def peak_normalize(y: np.ndarray) -> np.ndarray:
    peak = float(np.abs(y).max()) if y.size else 0.0
    return y / peak if peak > 0 else y


def pre_emphasis(y: np.ndarray, coef: float) -> np.ndarray:
    """y[t] - coef * y[t-1], first sample kept (as librosa.effects.preemphasis with zi=0)."""
    if coef == 0.0 or y.size == 0:
        return y
    out = np.empty_like(y)
    out[0] = y[0]
    out[1:] = y[1:] - coef * y[:-1]
    return out
