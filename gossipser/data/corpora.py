"""Corpus loaders: find audio files under a folder and read speaker and emotion from their names.

Each corpus is recognised by its file-name convention, never by folder names (the `generic`
convention alone reads the emotion from the parent folder), except IEMOCAP, whose labels sit in
separate files and whose release layout is recognised instead (see `iemocap`). No audio file
is opened here.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from gossipser.data import iemocap
from gossipser.data.conventions import CONVENTIONS
from gossipser.data.emotions import emotion_merges, parse_emotions
from gossipser.errors import ConfigError, CorpusError

# Order is the preference when one folder holds the same stem with several extensions.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")


@dataclass(frozen=True, kw_only=True)
class Utterance:
    """One audio file with its speaker and canonical emotion (from its name, or for IEMOCAP
    from the label files), and the session and kind of recording where the corpus has them."""

    path: Path
    speaker: str
    emotion: str
    corpus: str
    session: str | None = None  # recording session, where the corpus has them (IEMOCAP)
    recording: str | None = None  # "improvised" or "scripted" (IEMOCAP)


@dataclass(frozen=True, kw_only=True)
class Corpus:
    """The utterances of one corpus folder; `classes` is in canonical order."""

    name: str
    root: Path
    utterances: tuple[Utterance, ...]
    classes: tuple[str, ...]
    skipped: tuple[Path, ...] = ()  # audio files that could not be labelled
    skip_reasons: tuple[str, ...] = ()  # why each was skipped, when that varies (IEMOCAP)
    notes: tuple[str, ...] = ()  # one-line warnings about the folder (an unreadable label file)
    merged: tuple[tuple[str, str], ...] = ()  # classes folded into others: (from, into)

    def __post_init__(self) -> None:
        stray = {u.emotion for u in self.utterances} - set(self.classes)
        if stray or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes {self.classes} do not cover emotions {sorted(stray)}")
        if self.skip_reasons and len(self.skip_reasons) != len(self.skipped):
            raise ValueError("skip_reasons must give one reason per skipped file")

    @property
    def speakers(self) -> tuple[str, ...]:
        """Speaker ids, sorted numerically where they are numbers."""
        return tuple(sorted({u.speaker for u in self.utterances}, key=_speaker_key))

    def counts(self) -> dict[str, int]:
        """Number of utterances per class, in class order."""
        n = Counter(u.emotion for u in self.utterances)
        return {e: n[e] for e in self.classes}

    @property
    def sessions(self) -> dict[str, tuple[str, ...]]:
        """Session -> its speakers, in order; {} unless every utterance names a session and
        no speaker spans two (then a session is a set of speakers, and folds can use it)."""
        of: dict[str, set[str]] = {}
        for u in self.utterances:
            if u.session is None:
                return {}
            of.setdefault(u.speaker, set()).add(u.session)
        if any(len(s) > 1 for s in of.values()):
            return {}
        out: dict[str, list[str]] = {}
        for spk in self.speakers:
            out.setdefault(next(iter(of[spk])), []).append(spk)
        return {s: tuple(out[s]) for s in sorted(out, key=_speaker_key)}

    def skipped_summary(self, limit: int = 3) -> str:
        """'' when nothing was skipped, else 'skipped N files (first: a, b, c)', or with reasons
        'skipped N files: 2 labelled xxx (first: a, b); 1 with no label line (first: c)'."""
        if not self.skipped:
            return ""
        noun = "file" if len(self.skipped) == 1 else "files"
        if not self.skip_reasons:
            first = ", ".join(_show(p, self.root) for p in self.skipped[:limit])
            return f"skipped {len(self.skipped)} {noun} (first: {first})"
        by_reason: dict[str, list[Path]] = {}
        for path, reason in zip(self.skipped, self.skip_reasons, strict=True):
            by_reason.setdefault(reason, []).append(path)
        parts = [f"{len(paths)} {reason} (first: "
                 f"{', '.join(_show(p, self.root) for p in paths[:limit])})"
                 for reason, paths in by_reason.items()]
        return f"skipped {len(self.skipped)} {noun}: {'; '.join(parts)}"


def find_audio_files(root: Path) -> list[Path]:
    """Audio files under `root`, recursively and sorted; hidden entries are ignored.

    When one folder holds the same stem with several extensions (X.wav and X.flac), only the
    one earliest in AUDIO_EXTENSIONS is kept.
    """
    rank = {ext: i for i, ext in enumerate(AUDIO_EXTENSIONS)}
    chosen: dict[tuple[str, str], tuple[int, Path]] = {}
    visited: set[str] = set()
    # Follow symlinked folders (corpora are often linked in), but never visit one twice.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            stem, ext = os.path.splitext(name)
            r = rank.get(ext.lower())
            if r is None or name.startswith("."):
                continue
            key = (dirpath, stem)
            if key not in chosen or r < chosen[key][0]:
                chosen[key] = (r, Path(dirpath, name))
    return sorted(path for _, path in chosen.values())


def detect_convention(files: Sequence[Path], *, root: Path | None = None) -> str:
    """Name of the convention matching the most files, if it matches at least half of them.

    Ties go to the earlier convention in CONVENTIONS. Raises CorpusError otherwise.
    """
    where = f" under {root}" if root is not None else ""
    if not files:
        raise CorpusError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found{where}")
    matched = {name: sum(c.parse(f) is not None for f in files) for name, c in CONVENTIONS.items()}
    best = max(CONVENTIONS, key=lambda name: matched[name])  # max keeps the first of equals
    if 2 * matched[best] >= len(files):
        return best
    convs = CONVENTIONS.values()
    example = next((f for f in files if all(c.parse(f) is None for c in convs)), files[0])
    tried = ", ".join([*(f"{c.name} ({c.example})" for c in convs),
                       f"iemocap ({iemocap.EXAMPLE})"])
    raise CorpusError(
        f"cannot recognise the corpus{where}: no naming convention matches half of its "
        f"{len(files)} audio files (best: {best}, {matched[best]}); tried {tried}; "
        f"example file found: {_show(example, root)}"
    )


CORPUS_NAMES: tuple[str, ...] = ("auto", *CONVENTIONS, "iemocap")


def load_corpus(
    root: Path | str,
    *,
    corpus: str = "auto",
    emotions: Sequence[str] | str | None = None,
    improvised_only: bool = False,
) -> Corpus:
    """Scan `root` for audio files and label them by the named (or detected) corpus.

    An IEMOCAP release is recognised by its layout, the others by their file names. Files that
    cannot be labelled land in `Corpus.skipped`. `emotions` keeps only those classes (see
    parse_emotions; a named set may merge classes first). `improvised_only` keeps IEMOCAP's
    improvised dialogs. Raises ConfigError for a bad name or emotion, and CorpusError when the
    folder holds no usable files.
    """
    name = corpus.strip().lower()
    if name not in CORPUS_NAMES:
        raise ConfigError(f"unknown corpus {corpus!r}; choose one of {', '.join(CORPUS_NAMES)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CorpusError(f"corpus folder not found: {root}")
    if name == "iemocap" or (name == "auto" and iemocap.audio_folders(root)):
        found = _label_iemocap(root)
    else:
        found = _label_by_names(root, name)
    utterances = found.utterances
    if improvised_only:
        if found.name != "iemocap":
            raise ConfigError(f"improvised-only selects IEMOCAP's improvised dialogs; the "
                              f"corpus under {root} is {found.name}")
        utterances = tuple(u for u in utterances if u.recording == "improvised")
        if not utterances:
            raise CorpusError(f"no improvised IEMOCAP utterance under {root}")
    return _select(replace(found, utterances=utterances), emotions)


def _label_by_names(root: Path, name: str) -> Corpus:
    """Every audio file under `root` labelled by the `name` file-name convention (or the
    detected one); files that do not follow it are skipped."""
    files = find_audio_files(root)
    if name == "auto":
        name = detect_convention(files, root=root)
    elif not files:
        raise CorpusError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {root}")
    convention = CONVENTIONS[name]
    utterances: list[Utterance] = []
    skipped: list[Path] = []
    for path in files:
        parsed = convention.parse(path)
        if parsed is None:
            skipped.append(path)
        else:
            utterances.append(
                Utterance(path=path, speaker=parsed[0], emotion=parsed[1], corpus=name)
            )
    if not utterances:
        raise CorpusError(
            f"no file under {root} follows the {name} naming ({convention.example}); "
            f"example file found: {_show(files[0], root)}"
        )
    return Corpus(name=name, root=root, utterances=tuple(utterances),
                  classes=convention.classes, skipped=tuple(skipped))


def _label_iemocap(root: Path) -> Corpus:
    """The utterances of an IEMOCAP release, labelled from its EmoEvaluation files."""
    folders = iemocap.audio_folders(root)
    if not folders:
        raise CorpusError(f"no IEMOCAP session folders under {root} (expected "
                          f"{iemocap.EXAMPLE})")
    files = [f for folder in folders for f in find_audio_files(folder)]
    if not files:
        raise CorpusError(f"no audio files under {root}/Session*/sentences/wav")
    release = iemocap.label_release(root, files)
    utterances = tuple(
        Utterance(path=u.path, speaker=u.speaker, emotion=u.emotion, corpus="iemocap",
                  session=u.session, recording=u.recording)
        for u in release.labelled)
    corpus = Corpus(name="iemocap", root=root, utterances=utterances, classes=iemocap.CLASSES,
                    skipped=tuple(p for p, _ in release.skipped),
                    skip_reasons=tuple(r for _, r in release.skipped), notes=release.notes)
    if not utterances:
        raise CorpusError(f"no labelled IEMOCAP utterance under {root}: "
                          f"{corpus.skipped_summary()}")
    return corpus


def _select(corpus: Corpus, emotions: Sequence[str] | str | None) -> Corpus:
    """`corpus` with the classes `emotions` names, after the merges it implies; its classes
    are those it holds, in the convention's order."""
    merges = emotion_merges(emotions)
    held = {u.emotion for u in corpus.utterances}
    merged = tuple((src, dst) for src, dst in merges.items() if src in held)
    utterances = [replace(u, emotion=merges[u.emotion]) if u.emotion in merges else u
                  for u in corpus.utterances]
    found = {u.emotion for u in utterances}
    classes = tuple(e for e in corpus.classes if e in found)
    selected = parse_emotions(emotions, classes=classes)
    if selected is not None:
        missing = [e for e in selected if e not in found]
        if missing:
            raise ConfigError(
                f"the {corpus.name} corpus under {corpus.root} has no {', '.join(missing)}; "
                f"its classes: {', '.join(classes)}"
            )
        utterances = [u for u in utterances if u.emotion in selected]
        classes = selected
    return replace(corpus, utterances=tuple(utterances), classes=classes,
                   merged=tuple((s, d) for s, d in merged if d in classes))


def normalize_speaker_ids(ids: str | Iterable[str], corpus: Corpus) -> tuple[str, ...]:
    """The corpus's own spelling of user-given speaker ids ('1' -> '01', 'oaf' -> 'OAF').

    `ids` is a comma-separated string or a sequence; order is kept and repeats dropped. Where
    the corpus has sessions, a session name stands for its speakers ('Ses05' -> Ses05F, Ses05M).
    Raises ConfigError for an id the corpus lacks or one that matches several speakers.
    """
    items = ids.split(",") if isinstance(ids, str) else list(ids)
    known = corpus.speakers
    sessions = {s.lower(): spk for s, spk in corpus.sessions.items()}
    out: list[str] = []
    for raw in (str(item).strip() for item in items):
        if not raw:
            continue
        if raw in known:
            hits = [raw]
        else:
            hits = [s for s in known if s.lower() == raw.lower()]
            if not hits and raw.isdigit():
                hits = [s for s in known if s.isdigit() and int(s) == int(raw)]
            if not hits and raw.lower() in sessions:
                out.extend(s for s in sessions[raw.lower()] if s not in out)
                continue
        if len(hits) != 1:
            problem = "matches several" if hits else "not among the"
            also = f" (or sessions: {', '.join(corpus.sessions)})" if sessions else ""
            raise ConfigError(
                f"speaker {raw!r} {problem} {corpus.name} speakers: {', '.join(known)}{also}"
            )
        if hits[0] not in out:
            out.append(hits[0])
    return tuple(out)


def _speaker_key(speaker: str) -> tuple[int, int, str]:
    return (0, int(speaker), speaker) if speaker.isdigit() else (1, 0, speaker)


def _show(path: Path, root: Path | None) -> str:
    """A file name with enough context to recognise it: relative to root, else parent/name."""
    if root is not None and path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return f"{path.parent.name}/{path.name}"
