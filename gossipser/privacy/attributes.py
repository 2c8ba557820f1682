"""The speaker attribute an attack infers (gender by default), per speaker and per peer.

Sources, first that applies: `--attribute-file` (CSV rows speaker,value; a header row is
allowed), RAVDESS's own rule (odd actors male, even female), or a `speakers.csv` in the corpus
folder (`gossipser synth` writes one). Exactly two values are needed.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from gossipser.data.dataset import Dataset
from gossipser.data.synth_corpus import SPEAKER_SHEET
from gossipser.errors import ConfigError


def read_attribute_file(path: Path | str) -> dict[str, str]:
    """speaker -> value from a CSV file; one ConfigError line for anything unreadable."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except OSError as exc:
        raise ConfigError(f"cannot read attribute file {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"attribute file {path}: not a CSV text file ({exc})") from None
    if rows and rows[0][0].strip().lower() in ("speaker", "speaker_id", "actor", "id"):
        rows = rows[1:]
    out: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise ConfigError(f"attribute file {path}: row {n} is not 'speaker,value': {row}")
        out[row[0].strip()] = row[1].strip().lower()
    if not out:
        raise ConfigError(f"attribute file {path}: no rows")
    return out


def default_attributes(ds: Dataset) -> tuple[dict[str, str], str]:
    """(speaker -> gender, where it came from) for corpora that say it themselves."""
    if ds.corpus.name == "ravdess":
        return ({s: "male" if int(s) % 2 else "female" for s in ds.speaker_ids()},
                "RAVDESS actor numbers (odd male, even female)")
    if ds.corpus.name == "iemocap":
        return ({s: "male" if s.endswith("M") else "female" for s in ds.speaker_ids()},
                "IEMOCAP speaker ids (Ses01F female, Ses01M male)")
    sheet = Path(ds.corpus.root) / SPEAKER_SHEET
    if sheet.is_file():
        return read_attribute_file(sheet), str(sheet)
    raise ConfigError(f"no speaker attribute known for corpus {ds.corpus.name}: give "
                      "--attribute-file speakers.csv (rows speaker,value)")


def peer_labels(ds: Dataset, parts: list[np.ndarray], values: dict[str, str],
                ) -> tuple[np.ndarray, tuple[str, str], list[str]]:
    """(label 0/1 per peer, -1 when unknown or tied; the two values; each peer's speakers).

    A peer's label is its speakers' majority value, counted by utterance."""
    speakers_of = [sorted(set(ds.speakers[p].tolist())) for p in parts]
    known = sorted({values[s] for spk in speakers_of for s in spk if s in values})
    if len(known) != 2:
        raise ConfigError(f"the attack needs exactly two attribute values among the run's "
                          f"speakers, found {known or 'none'}")
    labels = np.full(len(parts), -1, dtype=np.int64)
    for i, part in enumerate(parts):
        votes = Counter(values[s] for s in ds.speakers[part].tolist() if s in values)
        top = votes.most_common(2)
        if top and (len(top) == 1 or top[0][1] > top[1][1]):
            labels[i] = known.index(top[0][0])
    return labels, (known[0], known[1]), [",".join(s) for s in speakers_of]
