"""IEMOCAP as released: utterance audio in session folders, labels in EmoEvaluation files.

    SessionN/sentences/wav/<dialog>/<utterance>.wav
    SessionN/dialog/EmoEvaluation/<dialog>.txt
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]

The other lines of an EmoEvaluation file (the "%" header, blank lines, each annotator's
"C-E1:" / "A-F2:" lines) carry no agreed label and are ignored. No audio is opened here; the
corpus loader lists the files and builds the utterances from what this module labels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from gossipser.data.emotions import CANONICAL_EMOTIONS
from gossipser.errors import CorpusError

EXAMPLE = "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"

# The agreed label of an utterance; xxx (no majority) and oth (other) name no emotion.
LABELS: Mapping[str, str | None] = MappingProxyType({
    "neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
    "fru": "frustrated", "fea": "fearful", "sur": "surprised", "dis": "disgust",
    "xxx": None, "oth": None,
})  # fmt: skip
CLASSES: tuple[str, ...] = tuple(e for e in CANONICAL_EMOTIONS if e in LABELS.values())

_SESSION = re.compile(r"Session(\d+)")
# Ses01F_impro01_M012: session 01, the female actor wore the markers, dialog Ses01F_impro01,
# spoken by the session's male actor (the letter before the final number).
_UTTERANCE = re.compile(r"(Ses(\d{2})[FM]_(impro|script)[0-9A-Za-z_]*)_([FM])\d+")
_LABEL_LINE = re.compile(r"\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)")


@dataclass(frozen=True, kw_only=True)
class Labelled:
    """One utterance file with its agreed emotion (canonical name) and where it comes from."""

    path: Path
    speaker: str  # session + gender: "Ses01M"
    emotion: str
    session: str  # "Ses01"
    recording: str  # "improvised" or "scripted"


@dataclass(frozen=True, kw_only=True)
class Release:
    """What `label_release` made of the files: the labelled ones, the skipped ones with the
    reason each was skipped, and one-line notes about label files that could not be used."""

    labelled: tuple[Labelled, ...]
    skipped: tuple[tuple[Path, str], ...]
    notes: tuple[str, ...]


def audio_folders(root: Path) -> list[Path]:
    """The SessionN/sentences/wav folders under `root`, in session order ([] when none)."""
    found = []
    for entry in root.iterdir() if root.is_dir() else ():
        m = _SESSION.fullmatch(entry.name)
        if m and (entry / "sentences" / "wav").is_dir():
            found.append((int(m.group(1)), entry / "sentences" / "wav"))
    return [folder for _, folder in sorted(found)]


def parse_utterance(stem: str) -> tuple[str, str, str, str] | None:
    """(speaker, session, dialog, recording) of an utterance id, or None if it is not one."""
    m = _UTTERANCE.fullmatch(stem)
    if m is None:
        return None
    session = f"Ses{m.group(2)}"
    recording = "improvised" if m.group(3) == "impro" else "scripted"
    return f"{session}{m.group(4)}", session, m.group(1), recording


def parse_labels(text: str) -> dict[str, str]:
    """Utterance id -> agreed label (lower case) from an EmoEvaluation file's text."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _LABEL_LINE.match(line.strip())
        if m is not None:
            out.setdefault(m.group(1), m.group(2).lower())
    return out


def label_release(root: Path, files: Sequence[Path]) -> Release:
    """Label the utterance `files` of the release under `root` from its EmoEvaluation files.

    Raises CorpusError when the release has no EmoEvaluation file at all.
    """
    labels, readable, unreadable, notes = _read_label_files(root)
    if not readable and not unreadable:
        raise CorpusError(f"no EmoEvaluation label files under {root} (the iemocap loader "
                          "reads Session*/dialog/EmoEvaluation/*.txt)")
    labelled: list[Labelled] = []
    skipped: list[tuple[Path, str]] = []
    for path in files:
        parsed = parse_utterance(path.stem)
        if parsed is None:
            skipped.append((path, "not named like an IEMOCAP utterance"))
            continue
        speaker, session, dialog, recording = parsed
        raw = labels.get(path.stem)
        if raw is None:
            reason = ("with no label line" if dialog in readable else
                      "with an unreadable EmoEvaluation file" if dialog in unreadable else
                      "with no EmoEvaluation file")
            skipped.append((path, reason))
        elif raw not in LABELS:
            skipped.append((path, f"with unknown label {raw}"))
        elif LABELS[raw] is None:
            skipped.append((path, f"labelled {raw}"))
        else:
            labelled.append(Labelled(path=path, speaker=speaker, emotion=LABELS[raw],
                                     session=session, recording=recording))
    return Release(labelled=tuple(labelled), skipped=tuple(skipped), notes=tuple(notes))


def _read_label_files(root: Path) -> tuple[dict[str, str], set[str], set[str], list[str]]:
    """(labels of every utterance, dialogs with a readable file, dialogs whose file could
    not be read, notes)."""
    labels: dict[str, str] = {}
    readable: set[str] = set()
    unreadable: set[str] = set()
    notes: list[str] = []
    for session in sorted(p for p in root.iterdir() if _SESSION.fullmatch(p.name)):
        folder = session / "dialog" / "EmoEvaluation"
        if not folder.is_dir():
            notes.append(f"{session.name} has no dialog/EmoEvaluation folder")
            continue
        for path in sorted(folder.glob("*.txt")):
            if path.name.startswith(".") or not path.is_file():
                continue
            where = path.relative_to(root).as_posix()
            try:
                # the release is ASCII; a stray byte should cost one line, not the file
                text = path.read_bytes().decode("utf-8", errors="replace")
            except OSError as exc:
                unreadable.add(path.stem)
                notes.append(f"cannot read {where}: {exc.strerror or type(exc).__name__}")
                continue
            found = parse_labels(text)
            if not found:
                notes.append(f"{where} has no label lines")
            readable.add(path.stem)
            for utt, label in found.items():
                labels.setdefault(utt, label)
    return labels, readable, unreadable, notes
