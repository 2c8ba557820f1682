"""Deterministic synthetic emotional speech: a source-filter voice written as a generic corpus.

Layout: ``OUT/<emotion>/<speaker>_u<index>.wav``, 16-bit PCM mono. Each utterance is seeded from
(seed, speaker, emotion, index), so files do not depend on generation order or emotion subset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from gossipser.config import check_types
from gossipser.errors import ConfigError

# Bumped whenever the synthesis changes, so cached corpora are regenerated.
SYNTH_VERSION = 1

EMOTIONS: tuple[str, ...] = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised",
)

# Emotion style parameters. Means roughly follow the vocal-affect reviews of Scherer (2003) and
# Juslin & Laukka (2003): arousal raises F0, energy, rate and flattens the tilt; sadness does the
# opposite; surprise has a wide, rising contour; disgust is slow and creaky.
_KEYS = (
    "f0_st",      # F0 offset from the speaker's habitual pitch, semitones
    "range_st",   # accent size, semitones (log-scaled)
    "rate",       # syllables per second (log-scaled)
    "energy_db",  # loudness relative to the speaker's neutral
    "jitter",     # cycle-to-cycle period perturbation, fraction (log-scaled)
    "shimmer",    # cycle-to-cycle amplitude perturbation, fraction (log-scaled)
    "tilt_db",    # high-band gain: positive is brighter (pressed), negative is breathier
    "breath_db",  # aspiration noise relative to the voiced source
    "slope_st",   # F0 change over the utterance: negative is declination, positive rises
    "creak",      # period-to-period amplitude alternation (vocal fry), 0..1
    "formant",    # relative formant shift: smiling raises, a lowered larynx lowers
    "vowel_space",  # articulation: 1 is normal, below 1 pulls vowels towards schwa
)
_LOG = np.array([k in ("range_st", "rate", "jitter", "shimmer") for k in _KEYS])
_MEANS = np.array([
    # f0  range rate  dB   jitter shimmer tilt breath slope creak formant space
    [0.0, 3.0, 4.5, 0.0, 0.008, 0.040, 0.0, -26.0, -2.0, 0.05, 0.00, 1.00],     # neutral
    [-0.8, 2.6, 4.0, -3.0, 0.008, 0.040, -3.0, -20.0, -2.5, 0.05, -0.01, 0.85],  # calm
    [3.0, 5.5, 5.0, 3.0, 0.010, 0.050, 3.0, -24.0, -1.0, 0.02, 0.07, 1.10],     # happy
    [-1.8, 1.6, 3.4, -6.0, 0.012, 0.060, -7.0, -15.0, -3.0, 0.15, -0.05, 0.65],  # sad
    [3.5, 4.0, 5.4, 8.0, 0.012, 0.055, 8.0, -30.0, -3.0, 0.08, 0.04, 1.25],     # angry
    [4.5, 3.0, 5.8, 2.0, 0.025, 0.070, 1.0, -14.0, 0.0, 0.02, 0.03, 0.90],      # fearful
    [-1.2, 3.0, 3.7, -1.0, 0.020, 0.070, -2.0, -22.0, -3.0, 0.40, -0.05, 0.85],  # disgust
    [4.0, 7.5, 4.6, 4.0, 0.010, 0.050, 3.0, -18.0, 5.0, 0.02, 0.05, 1.20],      # surprised
])
# Spread (in the log domain for log-scaled keys): per utterance, per speaker and emotion
# (idiosyncratic expression), and per speaker for all emotions (habitual voice). The spreads
# overlap neighbouring emotions on purpose so the task is not trivially separable.
_UTT_SD = np.array([1.0, 0.18, 0.08, 1.5, 0.18, 0.18, 1.5, 1.8, 1.2, 0.04, 0.012, 0.06])
_SPK_EMO_SD = np.array([0.7, 0.15, 0.06, 1.1, 0.15, 0.15, 1.2, 1.5, 0.9, 0.03, 0.01, 0.05])
_SPK_SD = np.array([0.0, 0.20, 0.08, 0.0, 0.25, 0.25, 2.0, 3.0, 0.8, 0.04, 0.0, 0.08])

# Vowel formant targets (F1, F2, F3, F4; Hz, adult male, after Peterson & Barney 1952).
_VOWELS = np.array([
    [730, 1090, 2440, 3400], [270, 2290, 3010, 3600], [300, 870, 2240, 3300],
    [530, 1840, 2480, 3500], [570, 840, 2410, 3400], [660, 1720, 2410, 3450],
], dtype=float)
_SCHWA = np.array([500.0, 1500.0, 2500.0, 3500.0])
_BANDWIDTHS = np.array([70.0, 100.0, 160.0, 250.0])
_HOP, _WIN, _NFFT = 256, 512, 1024  # formant filter frames: hop, window, FFT size
_Z = np.exp(-1j * np.pi * np.arange(_NFFT // 2 + 1) / (_NFFT // 2))  # z^-1 on the FFT bins
_HALF_SINE = np.sin(np.pi * np.linspace(0.0, 1.0, 1025))
_REF_DBFS = -26.0  # RMS of neutral speech
# Separate seed streams so a speaker draw never replays an utterance draw.
_SPEAKER_STREAM, UTTERANCE_STREAM, _SENTENCE_STREAM, COUNT_STREAM = 1, 2, 3, 4
_SENTENCES = 2


@dataclass(frozen=True)
class SynthConfig:
    """How many speakers, utterances per (speaker, emotion), and the audio format.

    `per_speaker = (lo, hi)` makes shards as uneven as real recordings instead: speaker sizes
    spread log-uniformly over lo..hi utterances (the smallest and the largest always present,
    in a seeded order), and each speaker's emotions drawn from its own Dirichlet(0.7) mix, so
    classes are unbalanced per speaker. `per_emotion` is then unused.
    """

    speakers: int = 8
    per_emotion: int = 10
    per_speaker: tuple[int, int] | None = None
    seed: int = 0
    sample_rate: int = 16000
    duration_s: float = 3.0
    emotions: tuple[str, ...] = EMOTIONS

    def __post_init__(self) -> None:
        check_types(self, "synth")
        object.__setattr__(self, "emotions", tuple(self.emotions))
        if self.speakers < 1 or self.per_emotion < 1:
            raise ConfigError("synth: speakers and per_emotion must be at least 1")
        if self.per_speaker is not None:
            lo, hi = self.per_speaker
            if not 1 <= lo <= hi <= 10_000:
                raise ConfigError(f"synth: utterances per speaker must be 1 <= LO <= HI <= "
                                  f"10000, got {lo}:{hi}")
            object.__setattr__(self, "per_speaker", (int(lo), int(hi)))
        if self.seed < 0:
            raise ConfigError(f"synth: seed must be non-negative, got {self.seed}")
        if not 8000 <= self.sample_rate <= 48000:
            raise ConfigError(f"synth: sample_rate must be 8000..48000, got {self.sample_rate}")
        if not 0.5 <= self.duration_s <= 30.0:
            raise ConfigError(f"synth: duration_s must be 0.5..30 s, got {self.duration_s}")
        unknown = [e for e in self.emotions if e not in EMOTIONS]
        if unknown or not self.emotions or len(set(self.emotions)) != len(self.emotions):
            raise ConfigError(
                f"synth: emotions must be distinct names from {', '.join(EMOTIONS)}; "
                f"got {', '.join(self.emotions) or 'none'}"
            )


@dataclass(frozen=True, eq=False)
class SpeakerProfile:
    """A synthetic speaker: habitual pitch, vocal tract length and personal emotion styles."""

    name: str
    female: bool
    f0_hz: float
    formant_scale: float
    noise_dbfs: float
    styles: np.ndarray  # (len(EMOTIONS), len(_KEYS)) style means, log domain for log keys

    def style(self, emotion: str) -> np.ndarray:
        return self.styles[EMOTIONS.index(emotion)]


def make_speaker(index: int, *, seed: int) -> SpeakerProfile:
    """Speaker ``index`` (1-based) for ``seed``; odd indices are male, as in RAVDESS."""
    rng = np.random.default_rng([seed, _SPEAKER_STREAM, index])
    female = index % 2 == 0
    f0 = (210.0 if female else 110.0) * 2.0 ** (rng.normal(0.0, 2.0) / 12.0)
    scale = rng.uniform(1.03, 1.15) if female else rng.uniform(0.85, 0.99)
    means = _MEANS.copy()
    means[:, _LOG] = np.log(means[:, _LOG])
    # Expressivity scales how far this speaker moves away from neutral for every emotion.
    expressivity = rng.uniform(0.7, 1.3)
    styles = means[0] + expressivity * (means - means[0])
    styles = styles + rng.normal(0.0, _SPK_EMO_SD, size=styles.shape)
    styles = styles + rng.normal(0.0, _SPK_SD)
    return SpeakerProfile(
        name=f"spk{index:02d}", female=female, f0_hz=float(f0), formant_scale=float(scale),
        noise_dbfs=float(rng.uniform(-66.0, -58.0)), styles=styles,
    )


def _draw_style(
    speaker: SpeakerProfile, emotion: str, rng: np.random.Generator
) -> dict[str, float]:
    """This utterance's style: the speaker's style for ``emotion`` plus per-utterance spread."""
    values = speaker.style(emotion) + rng.normal(0.0, _UTT_SD)
    values = np.where(_LOG, np.exp(values), values)
    return dict(zip(_KEYS, values.tolist(), strict=True))


def _sentence(cfg: SynthConfig, which: int) -> np.ndarray:
    """Sentence ``which`` of the corpus: per syllable (vowel, stress 0..1, onset burst, s).

    Like RAVDESS's two fixed statements, every speaker and emotion reads the same few
    sentences, so the words vary less than the voice.
    """
    rng = np.random.default_rng([cfg.seed, _SENTENCE_STREAM, which])
    speech_s = cfg.duration_s - 2.0 * min(0.35, 0.2 * cfg.duration_s)
    count = max(2, round(speech_s * 4.5 * 0.85))
    stress = np.where(rng.random(count) < 0.35, 0.6, 0.0)
    stress[rng.integers(count // 2, count)] = 1.0  # the nuclear accent sits late
    burst = np.where(rng.random(count) < 0.6, rng.uniform(0.02, 0.06, count), 0.0)
    return np.stack([rng.integers(0, len(_VOWELS), count), stress, burst], axis=1)


def _syllables(
    n: int, sentence: np.ndarray, sr: int, p: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    """Syllable table (start, length, burst length, amplitude, accent, vowel) in samples."""
    count = len(sentence)
    length = rng.gamma(9.0, 1.0 / 9.0, count)
    # Short gaps between most syllables and a longer phrase pause now and then; slow speech
    # pauses more. Everything is then scaled to fill the ``n`` samples of speech.
    pause_p = float(np.clip(0.5 - 0.08 * p["rate"], 0.03, 0.3))
    gap = np.where(rng.random(count) < pause_p, rng.uniform(0.4, 1.0, count),
                   rng.uniform(0.0, 0.08, count))
    gap[-1] = 0.0
    scale = n / np.sum(length + gap)
    length, gap = length * scale, gap * scale
    start = np.concatenate([[0.0], np.cumsum(length + gap)[:-1]])
    burst = sentence[:, 2] * rng.uniform(0.8, 1.2, count) * sr
    amp = (0.6 + 0.4 * sentence[:, 1]) * rng.uniform(0.75, 1.0, count)
    accent = sentence[:, 1] * rng.uniform(0.7, 1.0, count)
    return np.stack([start, length, burst, amp, accent, sentence[:, 0]], axis=1)


def _half_sine(u: np.ndarray, power: float) -> np.ndarray:
    """``sin(pi * u) ** power`` for u in [0, 1], by table lookup (sin is slow on long arrays)."""
    return (_HALF_SINE**power)[np.rint(u * (len(_HALF_SINE) - 1)).astype(np.intp)]


def _envelopes(n: int, syl: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample voiced envelope, consonant-burst envelope and accent (pitch bump) shape."""
    t = np.arange(n, dtype=float)
    k = np.clip(np.searchsorted(syl[:, 0], t, side="right") - 1, 0, len(syl) - 1)
    local = t - syl[k, 0]
    length, burst = syl[k, 1], np.minimum(syl[k, 2], 0.4 * syl[k, 1])
    inside = (local >= 0) & (local < length)
    is_voiced = inside & (local >= burst)
    u = np.clip((local - burst) / np.maximum(length - burst, 1.0), 0.0, 1.0)
    voiced = np.where(is_voiced, _half_sine(u, 0.6) * syl[k, 3], 0.0)
    accent = np.where(is_voiced, _half_sine(u, 2.0) * syl[k, 4], 0.0)
    b = np.clip(local / np.maximum(burst, 1.0), 0.0, 1.0)
    noise = np.where(inside & ~is_voiced, _half_sine(b, 1.0), 0.0)
    return voiced, noise, accent


def _smooth_noise(n: int, step: int, rng: np.random.Generator) -> np.ndarray:
    knots = rng.normal(0.0, 1.0, n // step + 2)
    return np.interp(np.arange(n) / step, np.arange(len(knots)), knots)


def _glottal_source(
    f0: np.ndarray, sr: int, p: dict[str, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Rosenberg pulses following ``f0`` with jitter, shimmer and creak; returns (dg, g)."""
    n_periods = int(np.sum(f0) / sr) + 3
    period0 = (np.cumsum(f0) / sr).astype(np.intp)
    f0_j = f0 * (1.0 + p["jitter"] * rng.standard_normal(n_periods)[period0])
    phase = np.cumsum(f0_j) / sr
    period = phase.astype(np.intp)
    # One glottal cycle as a table over the phase; pressed (bright) voices close faster.
    t_open, t_close = 0.42, float(np.clip(0.16 - 0.008 * p["tilt_db"], 0.06, 0.3))
    x = np.arange(1024) / 1024
    table = np.where(
        x < t_open, 0.5 * (1.0 - np.cos(np.pi * x / t_open)),
        np.where(x < t_open + t_close, np.cos(0.5 * np.pi * (x - t_open) / t_close), 0.0),
    )
    g = table[((phase - period) * 1024).astype(np.intp)]
    gain = np.exp(p["shimmer"] * rng.standard_normal(n_periods + 2))
    gain = gain * (1.0 - np.clip(p["creak"], 0.0, 0.9) * (np.arange(n_periods + 2) % 2))
    dg = np.diff(g, prepend=0.0) * gain[period]  # derivative = lip radiation
    return dg, g


def _frame_centres(n: int) -> np.ndarray:
    """Sample index at the centre of each analysis frame of ``_frame_filter``."""
    return np.arange((n + _WIN - _HOP) // _HOP + 1) * _HOP + _WIN // 2 - (_WIN - _HOP)


def _resonators(freqs: np.ndarray, bandwidths: np.ndarray, sr: int) -> np.ndarray:
    """Response on the FFT bins of a cascade of unity-DC-gain resonators, per row of ``freqs``.

    The denominators are multiplied into one polynomial per row, whose response an FFT gives.
    """
    from scipy.fft import rfft  # here: reading a corpus made earlier needs no scipy
    r = np.exp(-np.pi * bandwidths / sr)
    a1, a2 = -2.0 * r * np.cos(2.0 * np.pi * np.clip(freqs, 50.0, 0.45 * sr) / sr), r * r
    poly = np.zeros((len(freqs), 2 * freqs.shape[1] + 1))
    poly[:, 0] = 1.0
    for k in range(freqs.shape[1]):
        prev = poly.copy()
        poly[:, 1:] += a1[:, k, None] * prev[:, :-1]
        poly[:, 2:] += a2[k] * prev[:, :-2]
    gain = np.prod(1.0 + a1 + a2, axis=1)[:, None]
    return (gain / rfft(poly.astype(np.float32), _NFFT)).astype(np.complex64)


def _frame_filter(x: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Filter ``x`` by a response that may change every frame (rows of ``response``, or one row).

    Hann-windowed frames are filtered in the frequency domain and overlap-added: a
    time-varying filter without a per-sample Python loop.
    """
    from scipy.fft import irfft, rfft  # here: reading a corpus made earlier needs no scipy
    n, pad = len(x), _WIN - _HOP
    frames = sliding_window_view(np.concatenate([np.zeros(pad), x, np.zeros(_WIN)]), _WIN)
    frames = (frames[::_HOP] * np.hanning(_WIN + 1)[:-1]).astype(np.float32)
    y = irfft(rfft(frames, _NFFT) * response, _NFFT)
    out = np.zeros((len(frames) + _NFFT // _HOP, _HOP))
    for j in range(_NFFT // _HOP):
        out[j:j + len(frames)] += y[:, j * _HOP:(j + 1) * _HOP]
    return out.ravel()[pad:pad + n] / (_WIN / (2 * _HOP))  # periodic Hann overlap-adds to this


def _bursts(white: np.ndarray, env: np.ndarray, fric_hz: float, sr: int) -> np.ndarray:
    """Consonant bursts: differentiated noise through one broad fricative resonance.

    Its impulse response is short, so each burst is convolved on its own.
    """
    from scipy.fft import irfft  # here: reading a corpus made earlier needs no scipy
    shape = _resonators(np.array([[fric_hz]]), np.array([1200.0]), sr) * (1.0 - _Z)
    h = irfft(shape[0], _NFFT)[:128]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], env > 0, [0]]).astype(np.int8)))
    out = np.zeros(len(white))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        out[a:b] = np.convolve(white[a:b] * env[a:b], h)[: b - a]
    return out


def _rms(x: np.ndarray, where: np.ndarray | None = None) -> float:
    """Root mean square, over the samples where ``where`` is true if any are."""
    if where is not None and np.any(where):
        x = x[where]
    return float(np.sqrt(np.mean(x * x) + 1e-12))


def synthesize_utterance(
    *, speaker: SpeakerProfile, emotion: str, rng: np.random.Generator, cfg: SynthConfig
) -> np.ndarray:
    """One utterance of ``speaker`` in ``emotion`` as float32 samples in [-1, 1]."""
    if emotion not in EMOTIONS:
        raise ConfigError(f"synth: unknown emotion {emotion!r}")
    sr, p = cfg.sample_rate, _draw_style(speaker, emotion, rng)
    # Fast speech is a little shorter; +-20 % around the configured mean duration.
    stretch = np.clip((4.5 / p["rate"]) ** 0.5 * rng.uniform(0.9, 1.1), 0.8, 1.2)
    total = cfg.duration_s * stretch
    lead, trail = (int(min(rng.uniform(0.2, 0.5), 0.2 * total) * sr) for _ in range(2))
    n = int(total * sr) - lead - trail
    syl = _syllables(n, _sentence(cfg, int(rng.integers(_SENTENCES))), sr, p, rng)
    voiced, burst_env, accent = _envelopes(n, syl)

    # Pitch in semitones around the speaker's habitual F0: declination (or a rise) across
    # the utterance, bumps on accented syllables, and a slow wander.
    contour = p["f0_st"] + p["slope_st"] * (np.arange(n) / n - 0.5) + p["range_st"] * accent
    contour += 0.4 * _smooth_noise(n, int(0.15 * sr), rng)
    f0 = np.clip(speaker.f0_hz * np.exp2(contour / 12.0), 50.0, 600.0)

    dg, g = _glottal_source(f0, sr, p, rng)
    source = dg * voiced
    loud = voiced > 0.3
    source /= _rms(source, loud)
    # Aspiration (voiced parts) and bursts (unvoiced parts) never overlap in time, so one
    # draw of white noise serves both.
    white = rng.standard_normal(n)
    aspiration = white * voiced * (0.4 + g)
    source += aspiration / _rms(aspiration, loud) * 10.0 ** (p["breath_db"] / 20.0)

    # Formants glide between vowel targets placed at syllable centres; the spectral tilt is a
    # one-pole low/high-band mix applied with them.
    vowels = _VOWELS[syl[:, 5].astype(np.intp)]
    vowels = _SCHWA + p["vowel_space"] * (vowels - _SCHWA)
    targets = vowels * speaker.formant_scale * (1.0 + p["formant"])
    targets *= 1.0 + 0.03 * rng.standard_normal(targets.shape)
    centres = syl[:, 0] + 0.5 * syl[:, 1]
    formants = np.stack([np.interp(_frame_centres(n), centres, f) for f in targets.T], axis=1)
    low = 0.15 / (1.0 - 0.85 * _Z)
    tilt = low + (1.0 - low) * 10.0 ** (p["tilt_db"] / 20.0)
    speech = _frame_filter(source, _resonators(formants, _BANDWIDTHS, sr) * tilt)
    speech /= _rms(speech, loud)

    fric = rng.uniform(2500.0, 5500.0) * speaker.formant_scale
    noise = _bursts(white, burst_env, fric, sr)
    speech += noise / _rms(noise, burst_env > 0.3) * 10.0 ** (rng.uniform(-20.0, -10.0) / 20.0)
    speech *= 10.0 ** ((_REF_DBFS + p["energy_db"]) / 20.0) / _rms(speech)

    out = np.concatenate([np.zeros(lead), speech, np.zeros(trail)])
    # Room/mic hiss: uniform noise (RMS is 1/sqrt(12), hence the +10.8 dB) at the speaker's floor.
    out += (rng.random(len(out)) - 0.5) * 10.0 ** ((speaker.noise_dbfs + 10.8) / 20.0)
    return np.tanh(out).astype(np.float32)  # soft limiter, as a loud take would saturate
