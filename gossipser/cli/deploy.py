"""`gossipser peer` and `gossipser server`: one run config, processes differ only by --id."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from gossipser.cli.commands import speaker_list
from gossipser.cli.options import NoFlags, data_config, run_configs
from gossipser.config import build, read_toml
from gossipser.data.corpora import load_corpus
from gossipser.data.dataset import load_dataset
from gossipser.errors import ConfigError
from gossipser.gossip.message import SERVER_ID
from gossipser.gossip.plan import RunSetup, plan_run, setup_from_plan
from gossipser.gossip.settings import GossipConfig
from gossipser.net.node import NetworkConfig
from gossipser.privacy.record import FILE as RECORD_FILE
from gossipser.ui.report import make_console


def network_setup(config: str, *, data: str | None, pid: int, fedavg: bool,
                  console) -> tuple[RunSetup, NetworkConfig]:
    """Read the run config, plan the run from file names, load only what `pid` needs."""
    doc = read_toml(config)
    features, model, train = run_configs(NoFlags(), doc)
    gossip = build(GossipConfig, doc.get("gossip", {}), {}, "gossip")
    if fedavg:
        gossip = dataclasses.replace(gossip, algorithm="fedavg")
    net = build(NetworkConfig, doc.get("network", {}), {}, "network")
    d = data_config(doc)
    root = data or d.path
    if not root:
        raise ConfigError(f"{config}: [data] path is missing (or pass --data)")
    test = d.test_speakers
    if not test:
        raise ConfigError(f"{config}: [data] test_speakers is missing (e.g. [\"21\", \"22\"])")
    test = speaker_list(test)
    seed = d.seed
    corpus = load_corpus(root, corpus=d.corpus, emotions=d.emotions,
                         improvised_only=d.iemocap_improvised_only)
    plan = plan_run(corpus, cfg=gossip, test_speakers=test, seed=seed, run_id=d.run)
    needed = plan.needed_by(pid)
    console.print(f"run {plan.run_id}: {gossip.algorithm}, {len(plan.peer_paths)} peers, "
                  f"{gossip.rounds} rounds, {net.transport}; loading "
                  f"{len(plan.needed_by(pid)) - len(plan.test_paths)} own and "
                  f"{len(plan.test_paths)} evaluation utterances")
    ds = load_dataset(root, corpus=corpus.name, emotions=d.emotions, features=features,
                      improvised_only=d.iemocap_improvised_only,
                      cache_dir=Path(d.cache_dir) if d.cache_dir else None,
                      keep=lambda u: str(u.path) in needed)
    if ds.failed_summary():
        console.print(f"[yellow]warning:[/] {ds.failed_summary()}")
    return setup_from_plan(ds, plan, model=model, train=train), net


def cmd_peer(args: Any) -> int:
    from gossipser.gossip.byzantine import parse_attack
    from gossipser.net.runtime import run_peer
    from gossipser.ui.display import PeerStatusView

    console = make_console()
    attack = parse_attack(args.byzantine)
    setup, net = network_setup(args.config, data=args.data, pid=args.id,
                               fedavg=args.mode == "fedavg", console=console)
    if attack is not None:
        console.print(f"peer {args.id}: [bold red]Byzantine[/], attack {attack} (for testing "
                      "robust merges)")
    out = Path(args.out or f"runs/{setup.run_id}/peer-{args.id}")
    view = PeerStatusView(console, f"peer {args.id}")
    try:
        summary = asyncio.run(run_peer(setup, args.id, net, out, status=view, attack=attack))
    finally:
        view.close()
    f = summary["final"]
    console.print(f"peer {args.id}: done, UA {f['ua']:.3f} WA {f['wa']:.3f} macro-F1 "
                  f"{f['macro_f1']:.3f}; sent {summary['bytes_sent'] / 1e6:.1f} MB; rejected "
                  f"{sum(summary['rejected'].values())} frames; wrote {out}")
    if net.record_messages:
        console.print(f"peer {args.id}: kept what its neighbours sent in rounds "
                      f"1-{net.record_messages} in {out / RECORD_FILE}")
    return 0


def cmd_server(args: Any) -> int:
    from gossipser.net.runtime import run_server
    from gossipser.ui.display import PeerStatusView

    console = make_console()
    setup, net = network_setup(args.config, data=args.data, pid=SERVER_ID, fedavg=True,
                               console=console)
    out = Path(args.out or f"runs/{setup.run_id}/server")
    view = PeerStatusView(console, "server")
    try:
        summary = asyncio.run(run_server(setup, net, out, status=view))
    finally:
        view.close()
    f = summary["final"]
    console.print(f"server: done, global model UA {f['ua']:.3f} WA {f['wa']:.3f}; sent "
                  f"{summary['bytes_sent'] / 1e6:.1f} MB; wrote {out}")
    return 0


def cmd_keys(args: Any) -> int:
    from gossipser.net.keys import make_keys

    console = make_console()
    out = Path(args.out)
    written = make_keys(out, args.peers, hosts=tuple(args.host))
    console.print(f"wrote a run CA and keys for {args.peers} peers, the server and the broker "
                  f"({len(written)} files) in {out}; give each machine ca.pem, every *.pem and "
                  "its own key, set \\[network] keys to that folder, and keep ca.key offline")
    return 0
