"""Emotion names: the canonical vocabulary, the synonyms users type, and named class sets.

A named set may also merge classes: `iemocap4` folds IEMOCAP's `excited` into `happy`, the
four-class protocol most IEMOCAP figures use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from gossipser.errors import ConfigError

# New names go at the end: a corpus's class order (and so a saved model's outputs) follows
# this order, and must not change for the corpora that were already read.
CANONICAL_EMOTIONS: tuple[str, ...] = (
    "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "boredom",
    "excited", "frustrated",
)  # fmt: skip

SYNONYMS: Mapping[str, str] = MappingProxyType(
    {e: e for e in CANONICAL_EMOTIONS}
    | {
        "anger": "angry",
        "fear": "fearful",
        "happiness": "happy",
        "sadness": "sad",
        "surprise": "surprised",
        "disgusted": "disgust",
        "bored": "boredom",
        "excitement": "excited",
        "frustration": "frustrated",
    }
)

NAMED_EMOTION_SETS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "shared4": ("neutral", "happy", "sad", "angry"),
        "five": ("neutral", "happy", "sad", "angry", "fearful"),
        "iemocap4": ("neutral", "happy", "sad", "angry"),
    }
)

# Classes a named set folds into another before selecting: {set: ((from, into), ...)}.
EMOTION_MERGES: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {"iemocap4": (("excited", "happy"),)}
)


def _names(spec: str | Sequence[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [str(item).strip().lower() for item in items if str(item).strip()]


def parse_emotions(
    spec: str | Sequence[str] | None, *, classes: Sequence[str] | None = None
) -> tuple[str, ...] | None:
    """Canonical emotions named by `spec` ('neutral,happy', ['fear'], 'shared4', 'iemocap4').

    Returns them in canonical order, or None (no filter) for None or 'all'. Unknown names raise
    ConfigError listing `classes` (the corpus's classes; all canonical names when not given).
    """
    if spec is None:
        return None
    names = _names(spec)
    if not names:
        raise ConfigError("no emotions given; name some (e.g. 'neutral,happy') or 'all'")
    if "all" in names:
        return None
    chosen: set[str] = set()
    for item in names:
        if item in NAMED_EMOTION_SETS:
            chosen.update(NAMED_EMOTION_SETS[item])
        elif item in SYNONYMS:
            chosen.add(SYNONYMS[item])
        else:
            known = ", ".join(classes if classes is not None else CANONICAL_EMOTIONS)
            sets = ", ".join(NAMED_EMOTION_SETS)
            raise ConfigError(f"unknown emotion {item!r}; choose from {known} or a set ({sets})")
    merged = emotion_merges(spec)
    clash = sorted(chosen & set(merged))
    if clash:
        raise ConfigError(f"emotions {spec!r}: {', '.join(clash)} is merged into "
                          f"{merged[clash[0]]} by the named set; name one or the other")
    return tuple(e for e in CANONICAL_EMOTIONS if e in chosen)


def emotion_merges(spec: str | Sequence[str] | None) -> dict[str, str]:
    """{from: into} for the classes the named sets in `spec` merge ({} when none do)."""
    if spec is None:
        return {}
    return {src: dst for item in _names(spec) for src, dst in EMOTION_MERGES.get(item, ())}
