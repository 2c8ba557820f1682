"""Run a networked gossip (or FedAvg) experiment as separate processes on this machine.

    .venv/bin/python scripts/launch_local.py --peers 4 --transport tcp --out runs/local
    .venv/bin/python scripts/launch_local.py --peers 4 --transport mqtt --algorithm fedavg \\
        --out runs/local-fl

Every peer is a real `gossipser peer --id I --config OUT/run.toml --out OUT/peer-I` process
(FedAvg adds `gossipser server`), logging to OUT/peer-I.log, with a fresh random run secret in
its environment. Without --config the run is a short one on a synthetic corpus written to
OUT/corpus. MQTT gets a private mosquitto on 127.0.0.1; TCP gets free loopback ports. The
launcher shows the peers' progress (from their checkpoints), writes OUT/summary.json with the
fields of `gossipser simulate`, exits non-zero when a process failed and stops every process
it started, also on Ctrl-C or SIGTERM.

With --secure the launcher makes a run CA and a key per node (OUT/keys, `gossipser keys`):
every frame is signed by its sender, TCP links use mutual TLS, and MQTT goes through a
mosquitto that takes TLS clients with a certificate of the run only, with an ACL that lets
each peer write to its neighbours' inboxes and read its own.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import signal
import sys
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from gossipser.errors import ConfigError, GossipserError
from gossipser.gossip.settings import GossipConfig
from gossipser.net.launch import (
    SECRET_VAR,
    Proc,
    child_env,
    free_port_block,
    log_tail,
    plan_processes,
    progress_of,
    start,
    stop_all,
    to_toml,
)
from gossipser.ui.report import error_line, make_console

EMOTIONS = ("neutral", "happy", "sad", "angry")
PER_EMOTION = 5


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="launch_local.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=4, help="number of peer processes (default 4)")
    p.add_argument("--transport", choices=("tcp", "mqtt"), required=True)
    p.add_argument("--algorithm", choices=("gradient-tracking", "dpsgd", "gossip-learning",
                                           "push-sum", "fedavg"),
                   help="default: the config's, else gradient-tracking")
    p.add_argument("--config", metavar="FILE.toml",
                   help="run config to start from ([network] is set by the launcher)")
    p.add_argument("--rounds", type=int, help="rounds (default: the config's, else 5)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="stop everything after this many seconds (default 3600)")
    p.add_argument("--secure", action="store_true",
                   help="per-peer keys, signed frames, TLS (and an MQTT ACL)")
    p.add_argument("--out", required=True, metavar="DIR")
    args = p.parse_args(argv)
    if args.peers < 2:
        p.error("--peers must be at least 2")
    return args


# run config ------------------------------------------------------------------------------
def read_config(path: Path | str) -> dict[str, dict]:
    """A run config as a dict; the peers check its contents (torch stays out of the launcher
    until the run is over, so that it does not slow the peers' start)."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: {exc}") from None


def synthetic_corpus(root: Path, speakers: int) -> Path:
    """A small synthetic corpus (`speakers` speakers, 4 emotions), written once per size."""
    from gossipser.data.synth import SynthConfig
    from gossipser.data.synth_corpus import write_corpus

    cfg = SynthConfig(speakers=speakers, per_emotion=PER_EMOTION, emotions=EMOTIONS)
    stamp = root / ".complete"
    want = json.dumps({"speakers": speakers, "per_emotion": PER_EMOTION, "emotions": EMOTIONS})
    if not (stamp.exists() and stamp.read_text() == want):
        if root.exists():  # another size: rewrite it rather than mix two corpora
            import shutil

            shutil.rmtree(root)
        write_corpus(root, cfg)
        stamp.write_text(want)
    return root


def default_doc(out: Path, peers: int) -> dict[str, dict]:
    """A short run on a synthetic corpus: one speaker per peer plus one test speaker."""
    corpus = synthetic_corpus(out / "corpus", peers + 1)
    return {
        "data": {"path": str(corpus), "test_speakers": [f"spk{peers + 1:02d}"], "seed": 0},
        "model": {"kind": "cnn", "width": 8},
        "gossip": {"topology": "ring"},
    }


def write_run_config(
    out: Path, *, peers: int, transport: str, algorithm: str | None, rounds: int | None,
    config: str | None, broker_port: int | None = None, network: dict | None = None,
) -> Path:
    """OUT/run.toml: the given (or default) config with the launcher's [network] section and a
    fresh run id, so that checkpoints of an earlier launch into OUT are not resumed."""
    doc = read_config(config) if config else default_doc(out, peers)
    data = dict(doc.get("data", {}))
    data.setdefault("cache_dir", str(out / "cache"))
    data["run"] = f"local-{secrets.token_hex(5)}"
    gossip = dict(doc.get("gossip", {}), peers=peers)
    if algorithm:
        gossip["algorithm"] = algorithm
    if rounds is not None:
        gossip["rounds"] = rounds
    gossip.setdefault("rounds", 5)
    base = free_port_block(peers + 1)
    net = dict(doc.get("network", {}))
    net.update(transport=transport, secret=f"env:{SECRET_VAR}", host="127.0.0.1",
               server_host="127.0.0.1", server_port=base, base_port=base + 1,
               broker_host="127.0.0.1", **(network or {}))
    if broker_port is not None:
        net["broker_port"] = broker_port
    doc = {**doc, "data": data, "gossip": gossip, "network": net}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.toml"
    path.write_text(to_toml(doc))
    return path


class ProgressView:
    """A live table on a terminal; otherwise one line whenever a process moves on."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.console = console
        self.rounds = rounds
        self.last: dict[str, tuple] = {}
        self.live: Live | None = None
        if console.is_terminal:
            self.live = Live(Table(), console=console, refresh_per_second=4)
            self.live.start()

    def update(self, states: dict[str, dict]) -> None:
        if self.live is not None:
            self.live.update(self._table(states))
            return
        for name, s in states.items():
            key = (s.get("round"), s["state"])
            if self.last.get(name) == key or (s.get("round") is None and s["state"] == "running"):
                continue
            self.last[name] = key
            self.console.print(f"{name}: {self._line(s)}")

    def _line(self, s: dict) -> str:
        parts = [s["state"]]
        if s.get("round") is not None:
            parts.append(f"round {s['round']}/{self.rounds}")
        if s.get("ua") is not None:
            parts.append(f"UA {s['ua']:.3f}")
        if s.get("bytes") is not None:
            parts.append(f"sent {s['bytes'] / 1e6:.2f} MB")
        if s.get("rejected"):
            parts.append(f"rejected {s['rejected']}")
        return "  ".join(parts)

    def _table(self, states: dict[str, dict]) -> Table:
        table = Table(title=f"gossipser local run ({self.rounds} rounds)", header_style="bold")
        for name in ("node", "round", "UA", "sent MB", "rejected", "state"):
            table.add_column(name, justify="left" if name in ("node", "state") else "right")
        for name, s in states.items():
            table.add_row(
                name, "" if s.get("round") is None else f"{s['round']}/{self.rounds}",
                "" if s.get("ua") is None else f"{s['ua']:.3f}",
                "" if s.get("bytes") is None else f"{s['bytes'] / 1e6:.2f}",
                str(s.get("rejected", "")), s["state"])
        return table

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def supervise(procs: Sequence[Proc], *, run: str, view: ProgressView, timeout: float) -> list[Proc]:
    """Wait until every process has exited or one failed; returns the failed ones."""
    give_up = time.monotonic() + timeout
    while True:
        states, failed = {}, []
        for p in procs:
            rc = p.popen.poll() if p.popen is not None else None
            state = "running" if rc is None else "done" if rc == 0 else f"failed ({rc})"
            states[p.name] = {**progress_of(p, run), "state": state}
            if rc not in (None, 0):
                failed.append(p)
        view.update(states)
        if failed or all(s["state"] == "done" for s in states.values()):
            return failed
        if time.monotonic() > give_up:
            raise GossipserError(f"the run did not finish within {timeout:g} s; stopped it")
        time.sleep(0.25)


# summary ---------------------------------------------------------------------------------
def collect(config: Path, out: Path, *, peers: int, fedavg: bool, transport: str,
            wall_s: float) -> dict:
    """OUT/summary.json from the processes' summaries and models, like `simulate` writes."""
    from gossipser.cli.deploy import network_setup
    from gossipser.gossip.message import SERVER_ID
    from gossipser.gossip.mixing import combine
    from gossipser.learn.pool import SerialPool
    from gossipser.sim.simulator import consensus_distance_of

    def npz(path: Path) -> dict[str, np.ndarray]:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    names = [f"peer-{i}" for i in range(peers)] + (["server"] if fedavg else [])
    summaries = {n: json.loads((out / n / "summary.json").read_text()) for n in names}
    setup, _ = network_setup(str(config), data=None, pid=SERVER_ID, fedavg=fedavg,
                             console=Console(file=io.StringIO()))
    states = [npz(out / f"peer-{i}" / "model.npz") for i in range(peers)]
    avg = npz(out / "server" / "global.npz") if fedavg else combine(states, [1.0] * peers)
    avg_score = SerialPool(setup.pool_spec(), []).evaluate([avg])[0]
    finals = [summaries[f"peer-{i}"]["final"] for i in range(peers)]
    sent = {n: int(s["bytes_sent"]) for n, s in summaries.items()}
    info = setup.describe()
    ua = [f["ua"] for f in finals]
    return {
        **{k: info[k] for k in ("algorithm", "topology", "peers", "rounds", "model", "corpus",
                                "classes", "seed", "run", "partition", "test_utterances")},
        "transport": transport, "wall_s": round(wall_s, 2),
        "bytes_sent_total": sum(sent.values()), "bytes_sent_max_peer": max(sent.values()),
        "bytes_sent_server": sent.get("server", 0), "bytes_sent": sent,
        "rejected": {n: s["rejected"] for n, s in summaries.items()},
        "final": {
            "ua_mean": float(np.mean(ua)), "ua_min": float(np.min(ua)),
            "ua_max": float(np.max(ua)), "wa_mean": float(np.mean([f["wa"] for f in finals])),
            "macro_f1_mean": float(np.mean([f["macro_f1"] for f in finals])),
            "ua_avg_model": avg_score.ua, "wa_avg_model": avg_score.wa,
            "macro_f1_avg_model": avg_score.macro_f1,
            "consensus_distance": consensus_distance_of(states)[0],
            "confusion_avg_model": avg_score.confusion.tolist(), "ua_per_peer": ua,
        },
    }


def start_broker(doc: dict, *, port: int, peers: int, secure: bool, fedavg: bool):
    """A private mosquitto for the run; with `secure`, TLS only and the run's ACL."""
    from gossipser.gossip.topology import build_topology
    from gossipser.net.broker import Mosquitto, acl_text

    if not secure:
        broker = Mosquitto(port=port)
    else:
        gossip, data = doc["gossip"], doc["data"]
        graph = build_topology(gossip.get("topology", "auto"), peers=peers,
                               seed=int(data.get("seed", 0)))
        acl = acl_text(graph, prefix="gossipser", run=data["run"], fedavg=fedavg)
        broker = Mosquitto(port=port, keys=doc["network"]["keys"], acl=acl)
    broker.start()
    return broker


# main ------------------------------------------------------------------------------------
def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop processes


def launch(args: argparse.Namespace, console: Console) -> int:
    out = Path(args.out)
    procs: list[Proc] = []
    broker = None
    try:
        network = None
        if args.secure:
            import shutil

            from gossipser.net.keys import make_keys

            keys = out / "keys"
            shutil.rmtree(keys, ignore_errors=True)  # a fresh CA for every launch
            make_keys(keys, args.peers)
            network = {"keys": str(keys.resolve())}
        broker_port = None
        if args.transport == "mqtt":
            from gossipser.net.broker import free_port

            broker_port = free_port()
        config = write_run_config(
            out, peers=args.peers, transport=args.transport, algorithm=args.algorithm,
            rounds=args.rounds, config=args.config, broker_port=broker_port, network=network)
        doc = read_config(config)
        algorithm = doc["gossip"].get("algorithm", GossipConfig().algorithm)
        rounds = doc["gossip"]["rounds"]
        fedavg = algorithm == "fedavg"
        if args.transport == "mqtt":
            broker = start_broker(doc, port=broker_port, peers=args.peers, secure=args.secure,
                                  fedavg=fedavg)
        procs = plan_processes(config, out, peers=args.peers, fedavg=fedavg)
        console.print(f"launch: {algorithm}, {args.peers} peers{' + server' if fedavg else ''}, "
                      f"{rounds} rounds over {args.transport}"
                      + (f" (mosquitto on 127.0.0.1:{broker.port})" if broker else "")
                      + (", signed frames and TLS (keys in OUT/keys)" if args.secure else
                         ", plaintext HMAC mode")
                      + f"; config {config}, logs {out}/*.log")
        env = child_env(secrets.token_hex(16))
        t0 = time.perf_counter()
        for p in procs:
            start(p, env)
        view = ProgressView(console, rounds)
        try:
            failed = supervise(procs, run=doc["data"]["run"], view=view, timeout=args.timeout)
        finally:
            view.close()
        wall_s = time.perf_counter() - t0
        if failed:
            for p in failed:
                error_line(f"{p.name} failed (exit {p.popen.returncode}); last lines of {p.log}:")
                print(log_tail(p.log), file=sys.stderr)
            return 1
    finally:
        stop_all(procs)
        if broker is not None:
            broker.close()
    summary = collect(config, out, peers=args.peers, fedavg=fedavg, transport=args.transport,
                      wall_s=wall_s)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    f = summary["final"]
    console.print(
        f"final: UA mean {f['ua_mean']:.3f} (min {f['ua_min']:.3f}, max {f['ua_max']:.3f}), "
        f"{'global' if fedavg else 'averaged'} model UA {f['ua_avg_model']:.3f}, consensus "
        f"distance {f['consensus_distance']:.3g}; {summary['bytes_sent_total'] / 1e6:.2f} MB "
        f"sent (busiest node {summary['bytes_sent_max_peer'] / 1e6:.2f} MB) in "
        f"{summary['wall_s']} s")
    console.print(f"wrote {out / 'summary.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_exit)
    console = make_console()
    try:
        return launch(args, console)
    except GossipserError as exc:
        error_line(str(exc))
        return 2
    except KeyboardInterrupt:
        error_line("interrupted; stopped every process")
        return 130


if __name__ == "__main__":
    sys.exit(main())
