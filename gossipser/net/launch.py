"""Local processes of a networked run: one `gossipser peer` (and `gossipser server`) per
process on this machine, their run config, logs and progress, and stopping them all.
scripts/launch_local.py is the command around this.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gossipser.errors import ConfigError

SECRET_VAR = "GOSSIPSER_SECRET"  # children read the run secret from this variable
_SERVER_LINE = re.compile(r"server: round (\d+)(?:\s+UA ([\d.]+))?.*?sent ([\d.]+) MB")


@dataclass
class Proc:
    """One process the launcher started: its command, output folder and log."""

    name: str  # peer-0, ..., server
    cmd: list[str]
    out: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None


def free_port_block(n: int, host: str = "127.0.0.1") -> int:
    """First of `n` consecutive ports nobody listens on right now."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000 - n)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise ConfigError(f"no block of {n} free ports found on {host}")


def to_toml(doc: dict[str, dict]) -> str:
    """A flat TOML document (sections of scalars and lists), as run configs are."""
    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a TOML basic string uses the same escapes
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise ConfigError(f"launch_local: cannot write {v!r} to a run config")

    lines = []
    for section, table in doc.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
        lines.append("")
    return "\n".join(lines)


# processes -------------------------------------------------------------------------------
def plan_processes(config: Path, out: Path, *, peers: int, fedavg: bool) -> list[Proc]:
    gossipser = [sys.executable, "-m", "gossipser"]
    procs = [Proc(f"peer-{i}", [*gossipser, "peer", "--id", str(i), "--config", str(config),
                                "--out", str(out / f"peer-{i}"),
                                *(["--mode", "fedavg"] if fedavg else [])],
                  out / f"peer-{i}", out / f"peer-{i}.log") for i in range(peers)]
    if fedavg:
        procs.append(Proc("server", [*gossipser, "server", "--config", str(config),
                                     "--out", str(out / "server")],
                          out / "server", out / "server.log"))
    return procs


def child_env(secret: str) -> dict[str, str]:
    # unbuffered: the logs are read while the run goes on
    return {**os.environ, SECRET_VAR: secret, "PYTHONUNBUFFERED": "1"}


def start(proc: Proc, env: dict[str, str], *, append: bool = False) -> None:
    """Start `proc` in its own session: Ctrl-C reaches the launcher, which stops it."""
    with proc.log.open("ab" if append else "wb") as log:
        proc.popen = subprocess.Popen(proc.cmd, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_all(procs: Sequence[Proc], timeout: float = 5.0) -> None:
    """SIGTERM every running process, SIGKILL what is left after `timeout`; reap them all."""
    running = [p.popen for p in procs if p.popen is not None]
    for popen in running:
        if popen.poll() is None:
            popen.terminate()
    give_up = time.monotonic() + timeout
    for popen in running:
        try:
            popen.wait(max(0.0, give_up - time.monotonic()))
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def log_tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


# progress --------------------------------------------------------------------------------
def progress_of(proc: Proc, run: str) -> dict:
    """Latest round of a process: a peer's checkpoint header, the server's log lines."""
    if proc.name == "server":
        found = _SERVER_LINE.findall(log_tail(proc.log, 40))
        if not found:
            return {}
        r, ua, mb = found[-1]
        return {"round": int(r), "ua": float(ua) if ua else None, "bytes": float(mb) * 1e6}
    try:
        with (open(proc.out / "checkpoint.npz", "rb") as fh,
              np.load(fh, allow_pickle=False) as z):
            header = json.loads(bytes(z["_header"]).decode())
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return {}
    rows = header.get("rows") or []
    if header.get("run") != run or not rows:
        return {}
    row = rows[-1]
    return {"round": row["round"], "ua": row["ua"] if row["ua"] != "" else None,
            "bytes": row["bytes_sent"], "rejected": row["rejected"]}
