"""A labelled feature set: corpus + MFCC frames, and speaker-independent splits of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gossipser.data.corpora import Corpus, Utterance, load_corpus, normalize_speaker_ids
from gossipser.data.features import (
    FeatureConfig,
    Progress,
    load_or_extract,
    model_inputs,
    normalize_group,
)
from gossipser.errors import ConfigError, CorpusError


@dataclass
class Dataset:
    """Utterances that produced features, aligned arrays: labels, speakers, frames."""

    corpus: Corpus
    cfg: FeatureConfig
    frames: list[np.ndarray]
    labels: np.ndarray  # int64 index into classes
    speakers: np.ndarray  # str
    paths: list[str]
    failed: list[tuple[str, str]]
    from_cache: bool
    _by_speaker: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.corpus.classes

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, view: str, index: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(len(self)) if index is None else index
        if self.cfg.cmvn and self.cfg.cmvn_scope == "speaker":
            frames = self._speaker_normalized()
            cfg = dataclasses.replace(self.cfg, cmvn=False)
            return model_inputs([frames[i] for i in idx], cfg, view)
        return model_inputs([self.frames[i] for i in idx], self.cfg, view)

    def _speaker_normalized(self) -> list[np.ndarray]:
        """Every utterance normalised by its speaker's statistics over the utterances this
        dataset holds of that speaker (computed once)."""
        if self._by_speaker is None:
            out: list[np.ndarray] = [np.empty(0)] * len(self)
            for spk in set(self.speakers.tolist()):
                idx = np.flatnonzero(self.speakers == spk)
                for i, f in zip(idx, normalize_group([self.frames[i] for i in idx]),
                                strict=True):
                    out[i] = f
            self._by_speaker = out
        return self._by_speaker

    def speaker_ids(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.speakers.tolist()), key=_natural))

    def failed_summary(self, limit: int = 3) -> str:
        """'skipped 2 unreadable files (a.wav: ..., b.wav: ...)' or ''."""
        if not self.failed:
            return ""
        shown = "; ".join(reason for _, reason in self.failed[:limit])
        more = f"; +{len(self.failed) - limit} more" if len(self.failed) > limit else ""
        return f"skipped {len(self.failed)} unreadable audio file(s) ({shown}{more})"


def _natural(s: str) -> tuple[int, int, str]:
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


def load_dataset(
    root: Path | str, *, corpus: str = "auto", emotions: Sequence[str] | str | None = None,
    features: FeatureConfig | None = None, cache_dir: Path | None = None,
    progress: Progress | None = None, keep: Callable[[Utterance], bool] | None = None,
    improvised_only: bool = False,
) -> Dataset:
    """Load a corpus folder and its MFCC frames (from the cache when possible).

    `keep` limits feature extraction to some utterances (a networked peer loads only its
    own shard and the evaluation set); the corpus metadata always lists them all.
    `improvised_only` keeps IEMOCAP's improvised dialogs (see load_corpus).
    """
    cfg = features or FeatureConfig()
    corp = load_corpus(root, corpus=corpus, emotions=emotions, improvised_only=improvised_only)
    paths = [u.path for u in corp.utterances if keep is None or keep(u)]
    table, cached = load_or_extract(paths, cfg, cache_dir=cache_dir, progress=progress)
    if not table.paths:
        why = f"every file failed ({table.failed[0][1]})" if table.failed else "no file selected"
        raise CorpusError(f"no usable audio under {root}: {why}")
    by_path = {str(u.path): u for u in corp.utterances}
    class_index = {c: i for i, c in enumerate(corp.classes)}
    utts = [by_path[p] for p in table.paths]
    return Dataset(
        corpus=corp, cfg=cfg, frames=table.frames,
        labels=np.array([class_index[u.emotion] for u in utts], dtype=np.int64),
        speakers=np.array([u.speaker for u in utts], dtype=str),
        paths=table.paths, failed=table.failed, from_cache=cached,
    )


def split_by_speakers(ds: Dataset, test_speakers: Sequence[str] | str) -> tuple[np.ndarray, ...]:
    """(train_index, test_index): test speakers never appear in training."""
    return split_speakers(ds.speakers, ds.corpus, test_speakers)


def split_speakers(
    speakers: np.ndarray, corpus: Corpus, test_speakers: Sequence[str] | str,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into `speakers` of (training, held-out test) utterances."""
    test = set(normalize_speaker_ids(test_speakers, corpus))
    unknown = test - set(speakers.tolist())
    if unknown:
        known = ", ".join(sorted(set(speakers.tolist()), key=_natural))
        raise ConfigError(f"test speakers {sorted(unknown)} not in corpus (speakers: {known})")
    if not test:
        raise ConfigError("no test speakers given")
    is_test = np.isin(speakers, sorted(test))
    train, held = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    if len(train) == 0:
        raise ConfigError("every speaker is a test speaker: nothing left to train on")
    return train, held


def session_groups(ds: Dataset) -> dict[str, tuple[str, ...]]:
    """Session -> the speakers of it that `ds` holds ({} when the corpus has no sessions)."""
    held = set(ds.speakers.tolist())
    groups = {s: tuple(x for x in spk if x in held) for s, spk in ds.corpus.sessions.items()}
    return {s: spk for s, spk in groups.items() if spk}


def folds_by_session(ds: Dataset, k: int) -> bool:
    """Whether `speaker_folds(ds, k)` holds out whole sessions."""
    return 2 <= k <= len(session_groups(ds))


def speaker_folds(ds: Dataset, k: int) -> list[tuple[str, ...]]:
    """K groups of test speakers for K-fold cross-validation, no speaker in two.

    Where the corpus records sessions (IEMOCAP) and K is at most their number, a fold holds
    out whole sessions (round-robin; K = sessions is leave-one-session-out), so the partner a
    test speaker talks to in a dialog is never trained on. Otherwise speakers are dealt out
    round-robin in natural order.
    """
    spk = ds.speaker_ids()
    if not 2 <= k <= len(spk):
        raise ConfigError(f"--folds must be in [2, {len(spk)}] for {len(spk)} speakers")
    if folds_by_session(ds, k):
        sessions = list(session_groups(ds).values())
        return [tuple(s for group in sessions[i::k] for s in group) for i in range(k)]
    return [tuple(spk[i::k]) for i in range(k)]


def corpus_arrays(corpus: Corpus) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(labels, speakers, paths) of every utterance the corpus lists, from file names only."""
    class_index = {c: i for i, c in enumerate(corpus.classes)}
    utts = corpus.utterances
    return (np.array([class_index[u.emotion] for u in utts], dtype=np.int64),
            np.array([u.speaker for u in utts], dtype=str), [str(u.path) for u in utts])
