"""Clips per second of our MFCC extraction against a per-file librosa loop, in one run.

  (a) gossipser.data.features.extract, no cache: read + condition + batched torch MFCC
  (b) per file: librosa.load(sr=16000) + the same trimming / normalisation / pre-emphasis +
      librosa.feature.mfcc(**cfg.librosa_kwargs())
  (c) the MFCC alone on signals already loaded and conditioned: MfccExtractor in batches
      against librosa.feature.mfcc one signal at a time

Run: .venv/bin/python scripts/bench_features.py [--data DIR] [--limit N] [--threads T]
Without --data the synthetic corpus (8 speakers x 8 emotions x 10) is written to a temp dir.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import torch

from gossipser.data.audio import peak_normalize, pre_emphasis, trim_silence
from gossipser.data.corpora import find_audio_files
from gossipser.data.features import FeatureConfig, MfccExtractor, extract, prepare_signal
from gossipser.errors import CorpusError


def librosa_file(path: Path, cfg: FeatureConfig) -> np.ndarray | None:
    """The reference pipeline for one file; None where ours would skip the file."""
    try:
        y, _ = librosa.load(path, sr=cfg.sample_rate)
    except Exception:  # noqa: BLE001 - a benchmark counts what it could read
        return None
    if cfg.trim_db is not None:
        y = trim_silence(y, top_db=cfg.trim_db)
    if y.size == 0 or float(np.abs(y).max()) == 0.0:
        return None
    y = pre_emphasis(peak_normalize(y), cfg.pre_emphasis)
    return librosa.feature.mfcc(y=y, **cfg.librosa_kwargs()).T


def timed(fn: Callable[[], object], repeat: int = 1) -> tuple[float, object]:
    """(best wall time of `repeat` calls, last result): the minimum is the least disturbed by
    other processes on a shared machine."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def prepared(paths: list[Path], cfg: FeatureConfig) -> list[np.ndarray]:
    signals = []
    for p in paths:
        try:
            signals.append(prepare_signal(p, cfg))
        except CorpusError:
            pass
    return signals


def ours_mfcc(signals: list[np.ndarray], cfg: FeatureConfig, batch: int) -> list[np.ndarray]:
    extractor = MfccExtractor(cfg)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, len(signals), batch):
            out.extend(extractor(signals[i : i + batch]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="corpus folder (default: synthetic, generated)")
    ap.add_argument("--limit", type=int, default=0, help="first N audio files (0: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; best counts")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            from gossipser.data.synth import SynthConfig
            from gossipser.data.synth_corpus import write_corpus

            root = Path(tmp) / "synth"
            t, n = timed(lambda: write_corpus(root, SynthConfig()))
            print(f"synthetic corpus: {n} files written in {t:.1f} s")
        paths = find_audio_files(root)
        if args.limit:
            paths = paths[: args.limit]
        if not paths:
            raise SystemExit(f"no audio files under {root}")
        run(paths, root, args.batch_size, args.repeat)


def run(paths: list[Path], root: Path, batch: int, repeat: int) -> None:
    cfg = FeatureConfig()
    # Warm up: page cache for the files, librosa's lazy imports, torch's first stft.
    for p in paths:
        p.read_bytes()
    librosa_file(paths[0], cfg)
    extract(paths[:2], cfg)

    t_ours, table = timed(lambda: extract(paths, cfg, batch_size=batch), repeat)
    t_ref, ref = timed(lambda: [librosa_file(p, cfg) for p in paths], repeat)
    n_ok = len(table.paths)

    t_prep, signals = timed(lambda: prepared(paths, cfg), repeat)
    seconds = sum(len(s) for s in signals) / cfg.sample_rate
    t_ours_mfcc, ours_out = timed(lambda: ours_mfcc(signals, cfg, batch), repeat)
    t_ref_mfcc, ref_out = timed(
        lambda: [librosa.feature.mfcc(y=s, **cfg.librosa_kwargs()).T for s in signals], repeat)

    ref_ok = [r for r in ref if r is not None]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ours_out, ref_out, strict=True))
    diff_files = (max(float(np.abs(a - b).max()) for a, b in zip(table.frames, ref_ok, strict=True))
                  if len(ref_ok) == n_ok else float("nan"))

    load = os.getloadavg()
    print(f"corpus: {root} ({len(paths)} files, {n_ok} usable, {seconds:.0f} s of audio after "
          f"trimming)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"batch {batch}")
    rows = [
        ("(a) vs (b) file -> MFCC", n_ok / t_ours, len(ref_ok) / t_ref),
        ("(c) MFCC only, signals loaded", len(signals) / t_ours_mfcc, len(signals) / t_ref_mfcc),
    ]
    print(f"{'':32}{'gossipser':>12}{'librosa':>12}{'ratio':>8}   (clips/s)")
    for name, ours, theirs in rows:
        print(f"{name:32}{ours:12.1f}{theirs:12.1f}{ours / theirs:7.1f}x")
    print(f"seconds: extract {t_ours:.2f} = about {t_prep:.2f} reading + conditioning and "
          f"{t_ours_mfcc:.2f} MFCC; librosa loop {t_ref:.2f}, of which MFCC {t_ref_mfcc:.2f}; "
          f"best of {repeat}")
    print(f"max |ours - librosa|: {diff:.2e} (MFCC only), {diff_files:.2e} (from the files)")


if __name__ == "__main__":
    main()
