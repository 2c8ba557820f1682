"""The synthetic corpus on disk: how many utterances each speaker records of each emotion, and
writing them as ``OUT/<emotion>/<speaker>_u<index>.wav`` (the voices are `gossipser.data.synth`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from gossipser.data.synth import (
    COUNT_STREAM,
    EMOTIONS,
    UTTERANCE_STREAM,
    SynthConfig,
    make_speaker,
    synthesize_utterance,
)
from gossipser.errors import CorpusError

SPEAKER_SHEET = "speakers.csv"  # speaker,attribute rows of a corpus folder

def utterance_counts(cfg: SynthConfig) -> np.ndarray:
    """(speakers, emotions) utterance counts: `per_emotion` everywhere, or uneven shards
    (see `SynthConfig.per_speaker`). Deterministic in the seed."""
    n_emo = len(cfg.emotions)
    if cfg.per_speaker is None:
        return np.full((cfg.speakers, n_emo), cfg.per_emotion, dtype=int)
    lo, hi = cfg.per_speaker
    rng = np.random.default_rng([cfg.seed, COUNT_STREAM])
    sizes = np.rint(np.geomspace(lo, hi, cfg.speakers)).astype(int) if cfg.speakers > 1 else (
        np.array([hi]))
    sizes = sizes[rng.permutation(cfg.speakers)]
    counts = np.zeros((cfg.speakers, n_emo), dtype=int)
    for s, n in enumerate(sizes):
        share = rng.dirichlet(np.full(n_emo, 0.7)) * n
        c = np.floor(share).astype(int)
        c[np.argsort(c - share)[: n - c.sum()]] += 1  # largest remainders: sum is exactly n
        counts[s] = c
    return counts


def write_corpus(
    out_dir: Path, cfg: SynthConfig, progress: Callable[[int, int], None] | None = None
) -> int:
    """Write the corpus under ``out_dir``; returns the number of files written."""
    out_dir = Path(out_dir)
    counts = utterance_counts(cfg)
    total = int(counts.sum())
    speakers = [make_speaker(i, seed=cfg.seed) for i in range(1, cfg.speakers + 1)]
    done = 0
    for emotion in cfg.emotions:
        folder = out_dir / emotion
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CorpusError(f"synth: cannot create {folder}: {exc.strerror}") from exc
        for s, speaker in enumerate(speakers, start=1):
            for i in range(counts[s - 1, cfg.emotions.index(emotion)]):
                rng = np.random.default_rng(
                    [cfg.seed, UTTERANCE_STREAM, s, EMOTIONS.index(emotion), i]
                )
                audio = synthesize_utterance(speaker=speaker, emotion=emotion, rng=rng, cfg=cfg)
                path = folder / f"{speaker.name}_u{i:03d}.wav"
                try:
                    sf.write(path, audio, cfg.sample_rate, subtype="PCM_16", format="WAV")
                except (OSError, sf.LibsndfileError) as exc:
                    raise CorpusError(f"synth: cannot write {path}: {exc}") from exc
                done += 1
                if progress is not None:
                    progress(done, total)
    write_speaker_sheet(out_dir, speakers)
    return done


def write_speaker_sheet(out_dir: Path, speakers) -> Path:
    """`speakers.csv` (speaker,gender) beside the audio: what `gossipser attack` infers."""
    path = Path(out_dir) / SPEAKER_SHEET
    rows = "".join(f"{s.name},{'female' if s.female else 'male'}\n" for s in speakers)
    try:
        path.write_text("speaker,gender\n" + rows)
    except OSError as exc:
        raise CorpusError(f"synth: cannot write {path}: {exc.strerror}") from exc
    return path
