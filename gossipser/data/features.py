"""MFCC features as in federated SER work, extracted in batches with torch and cached on disk.

Pipeline per utterance: load mono -> resample to 16 kHz -> trim silence -> peak-normalize ->
pre-emphasis 0.97 -> 20 ms frames, 20 ms step, Hann window -> |FFT|^2 -> 40 mel filters ->
log (dB, as librosa.power_to_db) -> DCT-II (ortho) -> 13 coefficients -> deltas and
delta-deltas (default). Mean/variance normalisation comes after the cache, by default over
each speaker's own utterances.
The cache holds these raw frames; model inputs (fixed-length sequences for CNN/LSTM,
utterance statistics for the DNN) are cheap views computed from them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gossipser.config import check_types
from gossipser.data.audio import peak_normalize, pre_emphasis, read_audio, trim_silence
from gossipser.errors import ConfigError, CorpusError

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16000
    pre_emphasis: float = 0.97
    frame_ms: float = 20.0
    hop_ms: float = 20.0
    window: str = "hann"
    n_mels: int = 40
    n_mfcc: int = 13
    fmin: float = 0.0
    fmax: float | None = None
    top_db: float = 80.0  # floor of the log-mel spectrogram below its maximum (librosa default)
    trim_db: float | None = 40.0  # trim leading/trailing silence this far below the peak
    deltas: int = 2  # 0: none, 1: +delta, 2: +delta+delta-delta
    cmvn: bool = True  # mean/variance normalisation of the frames (scope below)
    # "utterance": each utterance by itself; "speaker": by the statistics of all of that
    # speaker's utterances (on a device: its owner's), which keeps how an utterance differs
    # from the speaker's usual voice (energy, tilt), the cue the per-utterance scope erases
    cmvn_scope: str = "speaker"
    max_frames: int = 150  # fixed length for CNN/LSTM (crop centre / pad end); 150 = 3 s

    def __post_init__(self) -> None:
        check_types(self, "features")
        checks = [
            (self.sample_rate >= 4000, "sample_rate must be >= 4000"),
            (0.0 <= self.pre_emphasis < 1.0, "pre_emphasis must be in [0, 1)"),
            (2.0 <= self.frame_ms <= 200.0, "frame_ms must be in [2, 200]"),
            (0.5 <= self.hop_ms <= self.frame_ms, "hop_ms must be in [0.5, frame_ms]"),
            (self.window in ("hann", "hamming"), "window must be hann or hamming"),
            (1 <= self.n_mfcc <= self.n_mels <= 256, "need 1 <= n_mfcc <= n_mels <= 256"),
            (self.deltas in (0, 1, 2), "deltas must be 0, 1 or 2"),
            (self.max_frames >= 8, "max_frames must be >= 8"),
            (self.top_db > 0, "top_db must be > 0"),
            (self.cmvn_scope in ("utterance", "speaker"), "cmvn_scope must be utterance or "
             "speaker"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"feature config: {msg}")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.frame_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def n_fft(self) -> int:
        return 1 << (self.win_length - 1).bit_length()

    @property
    def dim(self) -> int:
        return self.n_mfcc * (1 + self.deltas)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"feature config: unknown keys {unknown}")
        return cls(**d)

    def librosa_kwargs(self) -> dict:
        """Settings under which `librosa.feature.mfcc` computes the same coefficients

        (librosa fixes the log floor at top_db=80, our default)."""
        return dict(
            sr=self.sample_rate, n_mfcc=self.n_mfcc, n_fft=self.n_fft, hop_length=self.hop_length,
            win_length=self.win_length, window=self.window, center=True, pad_mode="constant",
            n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax, power=2.0, htk=False,
            norm="ortho", dct_type=2, lifter=0,
        )


class MfccExtractor:
    """Batched MFCC with torch.stft and two matrix products (mel, DCT)."""

    def __init__(self, cfg: FeatureConfig) -> None:
        import librosa  # filter bank only; librosa's numerics are the reference we match
        import torch  # here, not at the top: reading cached features needs no torch

        self.cfg = cfg
        mel = librosa.filters.mel(
            sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
            fmax=cfg.fmax, htk=False, norm="slaney",
        )
        self.mel = torch.from_numpy(mel.astype(np.float32)).T.contiguous()  # (freq, mels)
        n = cfg.n_mels
        k = np.arange(n)[:, None]
        dct = np.cos(np.pi / n * (np.arange(n)[None, :] + 0.5) * k) * np.sqrt(2.0 / n)
        dct[0] /= np.sqrt(2.0)
        self.dct = torch.from_numpy(dct[: cfg.n_mfcc].T.astype(np.float32)).contiguous()
        win = torch.hann_window if cfg.window == "hann" else torch.hamming_window
        self.window = win(cfg.win_length, periodic=True, dtype=torch.float32)

    def n_frames(self, n_samples: int) -> int:
        return 1 + n_samples // self.cfg.hop_length

    def __call__(self, signals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """MFCC of each signal (already pre-emphasised) as a (frames, n_mfcc) float32 array."""
        if not signals:
            return []
        import torch

        cfg = self.cfg
        longest = max(len(s) for s in signals)
        batch = torch.zeros(len(signals), max(longest, 1))
        for i, s in enumerate(signals):
            batch[i, : len(s)] = torch.from_numpy(s)
        spec = torch.stft(
            batch, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
            window=self.window, center=True, pad_mode="constant", return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # (B, freq, frames)
        mel = torch.matmul(power.transpose(1, 2), self.mel)  # (B, frames, mels)
        db = 10.0 * torch.log10(torch.clamp(mel, min=1e-10))
        out = []
        for i, s in enumerate(signals):
            t = self.n_frames(len(s))
            d = db[i, :t]
            d = torch.maximum(d, d.max() - cfg.top_db)
            out.append((d @ self.dct).numpy().astype(np.float32, copy=False))
        return out


def add_deltas(mfcc: np.ndarray, order: int) -> np.ndarray:
    """Append delta (and delta-delta) coefficients over time, as librosa.feature.delta."""
    if order == 0:
        return mfcc
    import librosa

    width = 9 if mfcc.shape[0] >= 9 else (mfcc.shape[0] // 2) * 2 - 1
    if width < 3:
        return np.concatenate([mfcc] + [np.zeros_like(mfcc)] * order, axis=1)
    parts = [mfcc] + [
        librosa.feature.delta(mfcc.T, width=width, order=o, axis=-1).T for o in range(1, order + 1)
    ]
    return np.concatenate(parts, axis=1).astype(np.float32)


def prepare_signal(path: Path, cfg: FeatureConfig) -> np.ndarray:
    """Read and condition one file up to (and including) pre-emphasis."""
    y = read_audio(path, sample_rate=cfg.sample_rate)
    if cfg.trim_db is not None:
        y = trim_silence(y, top_db=cfg.trim_db)
    if float(np.abs(y).max()) == 0.0:
        raise CorpusError(f"cannot use audio {path.name}: silent")
    return pre_emphasis(peak_normalize(y), cfg.pre_emphasis)


@dataclass
class FeatureTable:
    """Raw MFCC frames of many utterances (variable length), with the files that failed."""

    cfg: FeatureConfig
    paths: list[str]
    frames: list[np.ndarray]
    failed: list[tuple[str, str]]  # (file name, one-line reason)

    def index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


def extract(
    paths: Sequence[Path], cfg: FeatureConfig, *, batch_size: int = 64,
    progress: Progress | None = None,
) -> FeatureTable:
    """MFCC frames for every readable file; unreadable files are recorded, never raised."""
    import torch

    extractor = MfccExtractor(cfg)
    frames: list[np.ndarray] = []
    kept: list[str] = []
    failed: list[tuple[str, str]] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        for (p, _), m in zip(pending, extractor([s for _, s in pending]), strict=True):
            kept.append(p)
            frames.append(add_deltas(m, cfg.deltas))
        pending.clear()

    with torch.inference_mode():
        for i, path in enumerate(paths):
            try:
                pending.append((str(path), prepare_signal(Path(path), cfg)))
            except CorpusError as exc:
                failed.append((Path(path).name, str(exc)))
            if len(pending) >= batch_size:
                flush()
            if progress is not None:
                progress(i + 1, len(paths))
        flush()
    return FeatureTable(cfg=cfg, paths=kept, frames=frames, failed=failed)


def default_cache_dir() -> Path:
    env = os.environ.get("GOSSIPSER_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gossipser"


def cache_key(paths: Sequence[Path], cfg: FeatureConfig) -> str:
    """Hash of the feature config and each file's path, size and mtime."""
    # normalisation is applied after the cache: its settings do not change the frames
    extraction = {k: v for k, v in cfg.to_dict().items() if k != "cmvn_scope"}
    h = hashlib.sha256(json.dumps(extraction, sort_keys=True).encode())
    for p in paths:
        st = Path(p).stat()
        h.update(f"{Path(p).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def load_or_extract(
    paths: Sequence[Path], cfg: FeatureConfig, *, cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> tuple[FeatureTable, bool]:
    """Features for `paths`, from the cache when present. Returns (table, came_from_cache)."""
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    file = cache_dir / f"mfcc-{cache_key(paths, cfg)}.npz"
    if file.exists():
        try:
            return _as_given(_read_cache(file, cfg), paths), True
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            file.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    table = extract(paths, cfg, progress=progress)
    _write_cache(file, table)
    return table, False


def _as_given(table: FeatureTable, paths: Sequence[Path]) -> FeatureTable:
    """The cached table with its paths spelled as the caller spelled them: the key holds
    resolved paths, so `../data/x.wav` and `/abs/data/x.wav` share one cache file.
    KeyError when the cache names a file that was not asked for."""
    given = {str(Path(p).resolve()): str(p) for p in paths}

    def spell(p: str) -> str:
        return given[str(Path(p).resolve())]

    return dataclasses.replace(table, paths=[spell(p) for p in table.paths])


def _write_cache(file: Path, table: FeatureTable) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(f) for f in table.frames], dtype=np.int64)
    data = (np.concatenate(table.frames) if table.frames
            else np.zeros((0, table.cfg.dim), np.float32))
    tmp = file.with_suffix(".tmp.npz")
    np.savez(
        tmp, data=data, lengths=lengths, paths=np.array(table.paths, dtype=str),
        failed=np.array(table.failed, dtype=str).reshape(-1, 2),
    )
    os.replace(tmp, file)


def _read_cache(file: Path, cfg: FeatureConfig) -> FeatureTable:
    # open the file ourselves: np.load(path) leaks its handle when the archive is bad
    with open(file, "rb") as fh, np.load(fh, allow_pickle=False) as z:
        data, lengths = z["data"], z["lengths"]
        paths = [str(p) for p in z["paths"]]
        failed = [(str(a), str(b)) for a, b in z["failed"]]
    if len(lengths) != len(paths) or int(lengths.sum()) != len(data) or data.ndim != 2 \
            or data.shape[1] != cfg.dim:
        raise ValueError(f"inconsistent feature cache {file.name}")
    frames = np.split(data, np.cumsum(lengths)[:-1]) if len(lengths) else []
    return FeatureTable(cfg=cfg, paths=paths, frames=list(frames), failed=failed)


def to_sequence(frames: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(max_frames, dim) model input: per-utterance CMVN, centre crop or zero pad at the end."""
    x = frames
    if cfg.cmvn:
        x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-5)
    t = cfg.max_frames
    if len(x) >= t:
        start = (len(x) - t) // 2
        return np.ascontiguousarray(x[start : start + t], dtype=np.float32)
    out = np.zeros((t, x.shape[1]), dtype=np.float32)
    out[: len(x)] = x
    return out


def to_stats(frames: np.ndarray) -> np.ndarray:
    """(2 * dim,) utterance statistics for the DNN: mean and standard deviation over time."""
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0)]).astype(np.float32)


def normalize_group(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Mean/variance normalisation of several utterances of one speaker by their pooled
    statistics (per coefficient, over every frame of every utterance)."""
    if not frames:
        return []
    pooled = np.concatenate(frames, axis=0).astype(np.float64)
    mean, std = pooled.mean(axis=0), pooled.std(axis=0) + 1e-5
    return [((f - mean) / std).astype(np.float32) for f in frames]


def model_inputs(frames: Sequence[np.ndarray], cfg: FeatureConfig, view: str) -> np.ndarray:
    """Stack utterances into a model input array; view is 'sequence' or 'stats'."""
    if view == "sequence":
        return np.stack([to_sequence(f, cfg) for f in frames]) if frames else np.zeros(
            (0, cfg.max_frames, cfg.dim), np.float32)
    if view == "stats":
        return np.stack([to_stats(f) for f in frames]) if frames else np.zeros(
            (0, 2 * cfg.dim), np.float32)
    raise ConfigError(f"unknown feature view {view!r} (sequence, stats)")
