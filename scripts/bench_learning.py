"""Does gossip learn as well as pooling the audio? Default `train` against default `simulate`.

For every split (K folds by speaker, or the given / default test speakers) and every seed it
trains the centralized model with the `train` defaults and runs the simulator with the
`simulate` defaults (one peer per training speaker, D-PSGD on regular:4 unless overridden),
on the same training and test speakers. It prints one table: centralized UA, the gossip
peers' mean and minimum UA, the UA of their averaged model, the gap (gossip mean minus
centralized) and the optimiser steps and samples each side spent; mean ± std over splits and
seeds. OUT/bench_learning.json holds the same fields per run and their means.

Run: .venv/bin/python scripts/bench_learning.py --out runs/bench [--data DIR] [--folds K |
     --test-speakers LIST] [--seeds 0,1,2] [--config FILE.toml] [gossip/model flags]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich import box
from rich.table import Table

from gossipser.cli.commands import load_data, resolve_test_speakers
from gossipser.cli.options import gossip_config, run_configs
from gossipser.config import read_toml
from gossipser.data.dataset import speaker_folds, split_by_speakers
from gossipser.errors import GossipserError
from gossipser.gossip.plan import setup_run
from gossipser.learn.centralized import train_centralized
from gossipser.learn.pool import make_pool
from gossipser.learn.workers import torch_threads
from gossipser.sim.simulator import Simulator
from gossipser.ui.compare import pm
from gossipser.ui.report import error_line, make_console

FIELDS = ("ua_central", "ua_gossip_mean", "ua_gossip_min", "ua_gossip_avg_model", "gap")


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark script's parser with the corpus, config and output flags (bench_learning,
    bench_robust)."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="corpus folder (default: synthetic corpus)")
    p.add_argument("--corpus", help="naming convention (default auto)")
    p.add_argument("--emotions", help="class subset")
    p.add_argument("--iemocap-improvised-only", action="store_true", default=None,
                   help="IEMOCAP: improvised dialogs only")
    p.add_argument("--cache-dir", metavar="DIR")
    p.add_argument("--config", metavar="FILE.toml", help="run config (flags override it)")
    p.add_argument("--out", required=True, metavar="DIR")
    return p


def script_main(args: argparse.Namespace, run: Callable[[argparse.Namespace, Any], int]) -> int:
    """Run a benchmark script: one torch thread, a console, a GossipserError as one line."""
    torch_threads()
    console = make_console()
    try:
        return run(args, console)
    except GossipserError as exc:
        error_line(str(exc))
        return 2


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = script_parser(__doc__)
    split = p.add_mutually_exclusive_group()
    split.add_argument("--folds", type=int, metavar="K",
                       help="K-fold by speaker (by session on IEMOCAP)")
    split.add_argument("--test-speakers", metavar="LIST")
    p.add_argument("--seeds", default="0,1,2", metavar="LIST")
    p.add_argument("--topology", default="regular:4", help="default regular:4")
    for flag, kind in (("--algorithm", str), ("--rounds", int), ("--local-epochs", float),
                       ("--step-share", str), ("--model", str),
                       ("--width", int), ("--norm", str), ("--bn-stats", str),
                       ("--cmvn-scope", str), ("--epochs", int),
                       ("--batch-size", int), ("--lr", float), ("--n-mfcc", int),
                       ("--deltas", int), ("--workers", int)):
        p.add_argument(flag, type=kind, help="as for gossipser train/simulate")
    args = p.parse_args(argv)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error("--seeds takes integers, e.g. 0,1,2")
    return args


def one_split(ds, test: tuple[str, ...], seed: int, *, features, model, train, gossip) -> dict:
    train_idx, test_idx = split_by_speakers(ds, test)
    t0 = time.perf_counter()
    central = train_centralized(ds, train_idx, test_idx, model_cfg=model, train_cfg=train,
                                seed=seed)
    t_central = time.perf_counter() - t0
    setup = setup_run(ds, cfg=gossip, model=model, train=train, test_speakers=test, seed=seed)
    t0 = time.perf_counter()
    with make_pool(setup.pool_spec(), [setup.shard(i) for i in range(setup.n_peers)],
                   workers=gossip.workers) as pool:
        summary = Simulator(setup, pool).run()
    f = summary["final"]
    return {
        "test_speakers": list(test), "seed": seed, "peers": setup.n_peers,
        "shard_sizes": [len(part) for part in setup.parts],
        "ua_central": central.scores.ua, "ua_gossip_mean": f["ua_mean"],
        "ua_gossip_min": f["ua_min"], "ua_gossip_avg_model": f["ua_avg_model"],
        "gap": f["ua_mean"] - central.scores.ua,
        "steps_central": central.steps, "samples_central": central.samples,
        "steps_gossip": summary["optimizer_steps"], "samples_gossip": summary["samples_processed"],
        "steps_gossip_per_peer": summary["optimizer_steps"] / setup.n_peers,
        "stopped": summary["stopped"],
        "wall_central_s": round(t_central, 1), "wall_gossip_s": round(time.perf_counter() - t0, 1),
    }


def run(args: argparse.Namespace, console) -> int:
    doc = read_toml(args.config)
    features, model, train = run_configs(args, doc)
    gossip = gossip_config(args, doc)
    ds = load_data(args, doc, features, console)
    splits = (speaker_folds(ds, args.folds) if args.folds
              else [resolve_test_speakers(args.test_speakers, doc, ds)])
    console.print(f"train: {model.kind} width {model.width}, {train.epochs} epochs, batch "
                  f"{train.batch_size}; simulate: {gossip.algorithm} on {gossip.topology}, "
                  f"{gossip.rounds} rounds at most x "
                  f"{'auto' if gossip.local_epochs is None else f'{gossip.local_epochs:g}'} "
                  f"local epochs; "
                  f"{len(splits)} split(s) x seeds {args.seeds}")
    runs = []
    for k, test in enumerate(splits):
        for seed in args.seed_list:
            r = one_split(ds, test, seed, features=features, model=model, train=train,
                          gossip=gossip)
            runs.append(r)
            console.print(
                f"split {k + 1}/{len(splits)} seed {seed}: central {100 * r['ua_central']:.1f}, "
                f"gossip mean {100 * r['ua_gossip_mean']:.1f} min {100 * r['ua_gossip_min']:.1f} "
                f"averaged {100 * r['ua_gossip_avg_model']:.1f} (gap {100 * r['gap']:+.1f}); "
                f"{r['wall_central_s']:.0f} s + {r['wall_gossip_s']:.0f} s; gossip stopped at "
                f"round {r['stopped']['round']}")
    mean = {k: float(np.mean([r[k] for r in runs])) for k in (
        *FIELDS, "steps_central", "samples_central", "steps_gossip", "samples_gossip",
        "steps_gossip_per_peer")}
    std = {k: float(np.std([r[k] for r in runs], ddof=1)) if len(runs) > 1 else 0.0
           for k in FIELDS}
    table = Table(title=f"{ds.corpus.name}: centralized vs gossip UA (%), mean ± std over "
                  f"{len(runs)} runs", box=box.SIMPLE_HEAD, title_justify="left")
    for col in ("central", "gossip mean", "gossip min", "averaged model", "gap",
                "steps central", "steps/peer gossip", "samples central", "samples gossip"):
        table.add_column(col, justify="right")
    table.add_row(*(pm([r[k] for r in runs]) for k in FIELDS),
                  f"{mean['steps_central']:,.0f}", f"{mean['steps_gossip_per_peer']:,.0f}",
                  f"{mean['samples_central']:,.0f}", f"{mean['samples_gossip']:,.0f}")
    console.print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_learning.json").write_text(json.dumps({
        "corpus": ds.corpus.name, "data": str(ds.corpus.root), **mean,
        "std": std, "model": model.to_dict(), "train": train.to_dict(),
        "gossip": dataclasses.asdict(gossip), "features": features.to_dict(), "runs": runs,
    }, indent=1) + "\n")
    console.print(f"wrote {out / 'bench_learning.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
