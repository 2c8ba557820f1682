"""Corpus loaders: find audio files under a folder and read speaker and emotion from their names.

Each corpus is recognised by its file-name convention, never by folder names (the `generic`
convention alone reads the emotion from the parent folder). No audio file is opened here.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from gossipser.errors import ConfigError, CorpusError

CANONICAL_EMOTIONS: tuple[str, ...] = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "boredom",
)  # fmt: skip
# Order is the preference when one folder holds the same stem with several extensions.
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")

_SYNONYMS: Mapping[str, str] = MappingProxyType(
    {e: e for e in CANONICAL_EMOTIONS}
    | {
        "anger": "angry",
        "fear": "fearful",
        "happiness": "happy",
        "sadness": "sad",
        "surprise": "surprised",
        "disgusted": "disgust",
        "bored": "boredom",
    }
)

NAMED_EMOTION_SETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "shared4": ("neutral", "happy", "sad", "angry"),
        "five": ("neutral", "happy", "sad", "angry", "fearful"),
    }
)


@dataclass(frozen=True, kw_only=True)
class Utterance:
    """One audio file with the speaker and canonical emotion its name encodes."""

    path: Path
    speaker: str
    emotion: str
    corpus: str


@dataclass(frozen=True, kw_only=True)
class Corpus:
    """The utterances of one corpus folder; `classes` is in canonical order."""

    name: str
    root: Path
    utterances: tuple[Utterance, ...]
    classes: tuple[str, ...]
    skipped: tuple[Path, ...] = ()  # audio files whose names do not follow the convention

    def __post_init__(self) -> None:
        stray = {u.emotion for u in self.utterances} - set(self.classes)
        if stray or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes {self.classes} do not cover emotions {sorted(stray)}")

    @property
    def speakers(self) -> tuple[str, ...]:
        """Speaker ids, sorted numerically where they are numbers."""
        return tuple(sorted({u.speaker for u in self.utterances}, key=_speaker_key))

    def counts(self) -> dict[str, int]:
        """Number of utterances per class, in class order."""
        n = Counter(u.emotion for u in self.utterances)
        return {e: n[e] for e in self.classes}

    def skipped_summary(self, limit: int = 3) -> str:
        """'' when nothing was skipped, else 'skipped N files (first: a, b, c)'."""
        if not self.skipped:
            return ""
        first = ", ".join(_show(p, self.root) for p in self.skipped[:limit])
        noun = "file" if len(self.skipped) == 1 else "files"
        return f"skipped {len(self.skipped)} {noun} (first: {first})"


@dataclass(frozen=True, kw_only=True)
class Convention:
    """A file-name convention: `parse(path)` gives (speaker, emotion) or None."""

    name: str
    example: str
    classes: tuple[str, ...]
    parse: Callable[[Path], tuple[str, str] | None]


def _canonical(*names: str) -> tuple[str, ...]:
    return tuple(e for e in CANONICAL_EMOTIONS if e in names)


# 03-01-EE-II-SS-RR-AA: modality 01 (audio+video) or 03 (audio); 02 is video-only, so no audio.
_RAVDESS = re.compile(r"(0[13])-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(0[1-9]|1\d|2[0-4])")
_RAVDESS_EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


def _parse_ravdess(path: Path) -> tuple[str, str] | None:
    m = _RAVDESS.fullmatch(path.stem)
    if m is None:
        return None
    return m.group(7), _RAVDESS_EMOTIONS[int(m.group(3)) - 1]


_CREMAD = re.compile(
    r"(100[1-9]|10[1-8]\d|109[01])_(IEO|TIE|IOM|IWW|TAI|MTI|IWL|ITH|DFA|ITS|TSI|WSI)"
    r"_(ANG|DIS|FEA|HAP|NEU|SAD)_(LO|MD|HI|XX|X)"
)
_CREMAD_EMOTIONS = {
    "ANG": "angry", "DIS": "disgust", "FEA": "fearful",
    "HAP": "happy", "NEU": "neutral", "SAD": "sad",
}  # fmt: skip


def _parse_cremad(path: Path) -> tuple[str, str] | None:
    m = _CREMAD.fullmatch(path.stem)
    if m is None:
        return None
    return m.group(1), _CREMAD_EMOTIONS[m.group(3)]


# TESS copies differ in case ('Fear') and spell pleasant surprise three ways.
_TESS = re.compile(
    r"(OAF|YAF)_([a-z]+)_(angry|disgust|fear|happy|neutral|sad|ps|pleasant_surprised?)",
    re.IGNORECASE,
)
_TESS_EMOTIONS = {
    "angry": "angry", "disgust": "disgust", "fear": "fearful", "happy": "happy",
    "neutral": "neutral", "sad": "sad", "ps": "surprised",
    "pleasant_surprise": "surprised", "pleasant_surprised": "surprised",
}  # fmt: skip


def _parse_tess(path: Path) -> tuple[str, str] | None:
    m = _TESS.fullmatch(path.stem)
    if m is None:
        return None
    return m.group(1).upper(), _TESS_EMOTIONS[m.group(3).lower()]


# Speaker, text a01..b10, emotion letter (German initial), optional version letter.
_EMODB = re.compile(r"(03|08|09|1[0-6])([ab](?:0[1-9]|10))([WLEAFTN])([a-z]?)")
_EMODB_EMOTIONS = {
    "W": "angry", "L": "boredom", "E": "disgust", "A": "fearful",
    "F": "happy", "T": "sad", "N": "neutral",
}  # fmt: skip


def _parse_emodb(path: Path) -> tuple[str, str] | None:
    m = _EMODB.fullmatch(path.stem)
    if m is None:
        return None
    return m.group(1), _EMODB_EMOTIONS[m.group(3)]


_GENERIC = re.compile(r"([^_\s]+)_.+")


def _parse_generic(path: Path) -> tuple[str, str] | None:
    emotion = _SYNONYMS.get(path.parent.name.lower())
    m = _GENERIC.fullmatch(path.stem)
    if emotion is None or m is None:
        return None
    return m.group(1), emotion


# Insertion order is the priority when auto-detection ties: generic comes last.
CONVENTIONS: Mapping[str, Convention] = MappingProxyType(
    {
        "ravdess": Convention(
            name="ravdess",
            example="03-01-05-01-02-01-12.wav",
            classes=_RAVDESS_EMOTIONS,
            parse=_parse_ravdess,
        ),
        "cremad": Convention(
            name="cremad",
            example="1001_DFA_ANG_XX.wav",
            classes=_canonical(*_CREMAD_EMOTIONS.values()),
            parse=_parse_cremad,
        ),
        "tess": Convention(
            name="tess",
            example="OAF_back_angry.wav",
            classes=_canonical(*_TESS_EMOTIONS.values()),
            parse=_parse_tess,
        ),
        "emodb": Convention(
            name="emodb",
            example="03a01Fa.wav",
            classes=_canonical(*_EMODB_EMOTIONS.values()),
            parse=_parse_emodb,
        ),
        "generic": Convention(
            name="generic",
            example="angry/spk1_001.wav",
            classes=CANONICAL_EMOTIONS,
            parse=_parse_generic,
        ),
    }
)


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
    tried = ", ".join(f"{c.name} ({c.example})" for c in convs)
    raise CorpusError(
        f"cannot recognise the corpus{where}: no naming convention matches half of its "
        f"{len(files)} audio files (best: {best}, {matched[best]}); tried {tried}; "
        f"example file found: {_show(example, root)}"
    )


def load_corpus(
    root: Path | str,
    *,
    corpus: str = "auto",
    emotions: Sequence[str] | str | None = None,
) -> Corpus:
    """Scan `root` for audio files and parse them with the named (or detected) convention.

    Files that do not follow the convention land in `Corpus.skipped`. `emotions` keeps only
    those classes (see parse_emotions). Raises ConfigError for a bad name or emotion, and
    CorpusError when the folder holds no usable files.
    """
    name = corpus.strip().lower()
    if name != "auto" and name not in CONVENTIONS:
        valid = ", ".join(("auto", *CONVENTIONS))
        raise ConfigError(f"unknown corpus {corpus!r}; choose one of {valid}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CorpusError(f"corpus folder not found: {root}")
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

    found = {u.emotion for u in utterances}
    classes = tuple(e for e in convention.classes if e in found)
    selected = parse_emotions(emotions, classes=classes)
    if selected is not None:
        missing = [e for e in selected if e not in found]
        if missing:
            raise ConfigError(
                f"the {name} corpus under {root} has no {', '.join(missing)}; "
                f"its classes: {', '.join(classes)}"
            )
        utterances = [u for u in utterances if u.emotion in selected]
        classes = selected
    return Corpus(
        name=name,
        root=root,
        utterances=tuple(utterances),
        classes=classes,
        skipped=tuple(skipped),
    )


def parse_emotions(
    spec: str | Sequence[str] | None, *, classes: Sequence[str] | None = None
) -> tuple[str, ...] | None:
    """Canonical emotions named by `spec` ('neutral,happy', ['fear'], 'shared4', 'five').

    Returns them in canonical order, or None (no filter) for None or 'all'. Unknown names raise
    ConfigError listing `classes` (the corpus's classes; all canonical names when not given).
    """
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    if not names:
        raise ConfigError("no emotions given; name some (e.g. 'neutral,happy') or 'all'")
    if "all" in names:
        return None
    chosen: set[str] = set()
    for item in names:
        if item in NAMED_EMOTION_SETS:
            chosen.update(NAMED_EMOTION_SETS[item])
        elif item in _SYNONYMS:
            chosen.add(_SYNONYMS[item])
        else:
            known = ", ".join(classes if classes is not None else CANONICAL_EMOTIONS)
            sets = ", ".join(NAMED_EMOTION_SETS)
            raise ConfigError(f"unknown emotion {item!r}; choose from {known} or a set ({sets})")
    return tuple(e for e in CANONICAL_EMOTIONS if e in chosen)


def normalize_speaker_ids(ids: str | Iterable[str], corpus: Corpus) -> tuple[str, ...]:
    """The corpus's own spelling of user-given speaker ids ('1' -> '01', 'oaf' -> 'OAF').

    `ids` is a comma-separated string or a sequence; order is kept and repeats dropped.
    Raises ConfigError for an id the corpus lacks or one that matches several speakers.
    """
    items = ids.split(",") if isinstance(ids, str) else list(ids)
    known = corpus.speakers
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
        if len(hits) != 1:
            problem = "matches several" if hits else "not among the"
            raise ConfigError(
                f"speaker {raw!r} {problem} {corpus.name} speakers: {', '.join(known)}"
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
