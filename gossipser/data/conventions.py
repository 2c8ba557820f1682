"""File-name conventions: how each corpus spells speaker and emotion in its file names.

A convention's `parse(path)` reads (speaker, canonical emotion) from a path, or says None. The
insertion order of CONVENTIONS is the priority when auto-detection ties (generic comes last).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from gossipser.data.emotions import CANONICAL_EMOTIONS, SYNONYMS


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
    emotion = SYNONYMS.get(path.parent.name.lower())
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
