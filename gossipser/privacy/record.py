"""The messages peers send in the first rounds of a run, as an adversary would keep them.

Only model entries are kept (private layers never leave a peer, so they are never here),
one copy per sender and round (the first it sends: for broadcast algorithms every neighbour
and every eavesdropper on a link gets the same frame), with the nodes that received it.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from gossipser.errors import ConfigError
from gossipser.gossip.message import Message

Params = dict[str, np.ndarray]
FILE = "messages.npz"


class MessageLog:
    """A simulator tap: what every peer sent in rounds 1..`rounds`."""

    def __init__(self, rounds: int, names: Iterable[str]) -> None:
        if rounds < 1:
            raise ConfigError("--record-messages needs at least 1 round")
        self.rounds = rounds
        self.names = frozenset(names)
        self.sent: dict[tuple[int, int], Params] = {}
        self.receivers: dict[tuple[int, int], list[int]] = {}

    def __call__(self, round_: int, sender: int, dest: int, msg: Message) -> None:
        if not 1 <= round_ <= self.rounds or not self.names & msg.params.keys():
            return  # outside the recorded rounds, or no model in it (hello, acks)
        key = (round_, sender)
        if key not in self.sent:
            self.sent[key] = {k: np.array(v, dtype=np.float32) for k, v in msg.params.items()
                              if k in self.names}
        if dest not in self.receivers.setdefault(key, []):
            self.receivers[key].append(dest)

    def senders(self) -> list[int]:
        return sorted({s for _, s in self.sent})

    def save(self, path: Path) -> Path:
        arrays = {f"r{r}.p{s}.{k}": v for (r, s), params in self.sent.items()
                  for k, v in params.items()}
        meta = {"rounds": self.rounds, "names": sorted(self.names),
                "receivers": [[r, s, d] for (r, s), d in sorted(self.receivers.items())]}
        arrays["_meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(path, **arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> MessageLog:
        """A saved log; ConfigError (one line) when the file is missing or not one."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no recorded messages; run `gossipser simulate` with "
                              "--record-messages 3 first")
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(bytes(f["_meta"]).decode())
                log = cls(int(meta["rounds"]), meta["names"])
                for key in f.files:
                    if key == "_meta":
                        continue
                    r, s, name = key.split(".", 2)
                    log.sent.setdefault((int(r[1:]), int(s[1:])), {})[name] = f[key]
            for r, s, dests in meta["receivers"]:
                log.receivers[(int(r), int(s))] = [int(d) for d in dests]
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise ConfigError(f"{path}: not a message log ({type(exc).__name__}: {exc})") from None
        return log
