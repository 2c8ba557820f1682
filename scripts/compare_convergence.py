"""Convergence of gossip learning against centralized, local-only and FedAvg training.

On one corpus, feature set, model, partition (one peer per training speaker by default) and
held-out test speakers, for each seed it runs centralized training (upper reference, as many
passes over the training data as the peers make in total), local-only training (lower
reference), FedAvg with a server, D-PSGD on ring / torus / regular:4 / complete graphs and
gossip learning on regular:4; with --faults, the gossip runs again with 20 % message loss and
10 % churn. Every run goes through the library's `Simulator` and `train_centralized`.
A method whose topology cannot hold the peer count (a torus needs N = r x c with r, c >= 3)
is skipped, and summary.md says why.

Writes OUT/results.csv (one row per method, seed and evaluated round), OUT/summary.md,
OUT/runs.json (final per-peer scores and confusion matrices) and five PNG figures.

Run: .venv/bin/python scripts/compare_convergence.py --out runs/compare --quick
     .venv/bin/python scripts/compare_convergence.py --data DIR --out OUT --seeds 0,1,2 --faults
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np

from gossipser.cli.commands import load_data, resolve_test_speakers
from gossipser.cli.options import gossip_config, run_configs
from gossipser.config import read_toml
from gossipser.data.dataset import Dataset
from gossipser.errors import ConfigError, GossipserError, TopologyError
from gossipser.gossip.events import RoundFinished
from gossipser.gossip.plan import RunSetup, setup_run
from gossipser.gossip.settings import GossipConfig
from gossipser.learn.centralized import train_centralized
from gossipser.learn.models import build_model, count_parameters
from gossipser.learn.pool import make_pool
from gossipser.learn.settings import ModelConfig, TrainConfig, n_inputs
from gossipser.learn.workers import torch_threads
from gossipser.sim.virtual import make_simulator
from gossipser.ui.compare import (
    CATALOG,
    COLUMNS,
    FAULTS,
    QUICK,
    Method,
    Run,
    findings,
    print_table,
    select_methods,
    summarize,
    write_csv,
    write_markdown,
)
from gossipser.ui.compare_plots import FIGURES, STYLE, plot_ua_vs_time
from gossipser.ui.report import error_line, make_console


# running -------------------------------------------------------------------------------------
def run_simulation(ds: Dataset, method: Method, *, base: GossipConfig, model: ModelConfig,
                   train: TrainConfig, test: tuple[str, ...], seed: int) -> Run:
    """One simulated run; its evaluated rounds and final scores."""
    faults = FAULTS if method.faults else {"drop": 0.0, "churn": 0.0}
    cfg = dataclasses.replace(base, algorithm=method.algorithm, topology=method.topology,
                              **faults)
    t0 = time.perf_counter()
    setup = setup_run(ds, cfg=cfg, model=model, train=train, test_speakers=test, seed=seed)
    rows: list[dict] = []

    def collect(event) -> None:
        if isinstance(event, RoundFinished) and event.row["ua_mean"] != "":
            r = event.row
            rows.append({
                "method": method.name, "seed": seed,
                **{k: r[k] for k in COLUMNS if k in r},
                "bytes_per_peer": r["bytes_per_peer_mean"],
                "bytes_max_node": r["bytes_sent_max_node"], "bytes_total": r["bytes_sent_total"],
            })

    shards = [setup.shard(i) for i in range(setup.n_peers)]
    with make_pool(setup.pool_spec(), shards, workers=cfg.workers) as pool:
        summary = make_simulator(setup, pool, listeners=[collect]).run()
    f, last = summary["final"], rows[-1]
    global_model = method.algorithm == "fedavg"
    final = {
        "ua": f[method.deployed],
        "wa": f["wa_avg_model"] if global_model else f["wa_mean"],
        "macro_f1": f["macro_f1_avg_model"] if global_model else f["macro_f1_mean"],
        "ua_avg_model": f["ua_avg_model"], "ua_per_peer": f["ua_per_peer"],
        "confusion_avg_model": f["confusion_avg_model"],
        "bytes_total": last["bytes_total"], "bytes_max_node": last["bytes_max_node"],
        "peers": setup.n_peers,
    }
    return Run(method.name, seed, rows, final, time.perf_counter() - t0)


def run_centralized(ds: Dataset, *, train_idx: np.ndarray, test_idx: np.ndarray,
                    model: ModelConfig, train: TrainConfig, seed: int) -> Run:
    t0 = time.perf_counter()
    res = train_centralized(ds, train_idx, test_idx, model_cfg=model, train_cfg=train, seed=seed)
    s = res.scores
    wall = time.perf_counter() - t0
    row = {"method": "centralized", "seed": seed, "round": train.epochs, "ua_mean": s.ua,
           "ua_min": s.ua, "ua_max": s.ua, "wa_mean": s.wa, "macro_f1_mean": s.macro_f1,
           "ua_avg_model": s.ua, "wa_avg_model": s.wa, "consensus_distance": "",
           "bytes_per_peer": 0, "bytes_max_node": 0, "bytes_total": 0, "wall_s": round(wall, 3)}
    final = {"ua": s.ua, "wa": s.wa, "macro_f1": s.macro_f1, "ua_avg_model": s.ua,
             "ua_per_peer": [], "confusion_avg_model": s.confusion.tolist(),
             "bytes_total": 0, "bytes_max_node": 0}
    return Run("centralized", seed, [row], final, wall)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="corpus folder (default: synthetic corpus)")
    p.add_argument("--cache-dir", metavar="DIR", help="feature cache")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--config", metavar="FILE.toml", help="run config (flags override it)")
    p.add_argument("--seeds", metavar="LIST",
                   help="comma-separated seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK['rounds']} rounds, evaluated "
                   f"every {QUICK['eval_every']}, one seed (explicit flags win)")
    p.add_argument("--faults", action="store_true",
                   help="also run the gossip methods with 20%% message loss and 10%% churn")
    p.add_argument("--rounds", type=int, metavar="R", help="rounds (default 30)")
    p.add_argument("--local-epochs", type=float, metavar="E",
                   help="local epochs per round (default 1)")
    p.add_argument("--eval-every", type=int, metavar="K",
                   help="evaluate every K rounds (default 1)")
    p.add_argument("--model", choices=("dnn", "cnn", "lstm"), help="model family (default cnn)")
    p.add_argument("--test-speakers", metavar="LIST", help="held-out speakers")
    p.add_argument("--partition", metavar="SPEC",
                   help="speaker (default), iid, balanced, dirichlet:ALPHA")
    p.add_argument("--peers", type=int, metavar="N",
                   help="peers (default: one per training speaker)")
    p.add_argument("--workers", type=int, metavar="N", help="training processes (default 2)")
    p.add_argument("--methods", metavar="LIST", help=f"subset of: {', '.join(CATALOG)}")
    p.add_argument("--clock", choices=("rounds", "virtual"), help="virtual: events in virtual "
                   "seconds (devices at their own speed, links with latency and bandwidth) and "
                   "a figure of UA against virtual time, ua_vs_time.png")
    p.add_argument("--device-speed", metavar="SPEC", help="equal (default) or "
                   "lognormal:MU:SIGMA, optionally ,slow:FRACTION:FACTOR")
    p.add_argument("--step-time", type=float, metavar="S")
    p.add_argument("--latency", type=float, metavar="S")
    p.add_argument("--bandwidth", type=float, metavar="B/S")
    p.add_argument("--merge", metavar="DIR", nargs="+",
                   help="run nothing: merge the outputs of earlier runs (e.g. one per seed, "
                        "same settings) into --out, with tables and figures over all seeds")
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        args.seeds = args.seeds or "0"
    try:
        args.seed_list = [int(s) for s in (args.seeds or "0,1,2").split(",")]
    except ValueError:
        p.error("--seeds takes integers, e.g. 0,1,2")
    return args


def run_methods(ds: Dataset, methods: Sequence[Method], seeds: Sequence[int], *,
                base: GossipConfig, model: ModelConfig, train: TrainConfig,
                central_train: TrainConfig, test: tuple[str, ...], split: RunSetup, console,
                ) -> tuple[dict[str, list[Run]], dict[str, str]]:
    """Every method for every seed; a method whose topology cannot be built is skipped."""
    runs: dict[str, list[Run]] = {}
    skipped: dict[str, str] = {}
    total, done = len(methods) * len(seeds), 0
    for m in methods:
        for seed in seeds:
            done += 1
            try:
                if m.algorithm == "centralized":
                    run = run_centralized(ds, train_idx=split.train_idx, test_idx=split.test_idx,
                                          model=model, train=central_train, seed=seed)
                else:
                    run = run_simulation(ds, m, base=base, model=model, train=train, test=test,
                                         seed=seed)
            except (TopologyError, ConfigError) as exc:  # a torus of 7, fedavg on the clock
                skipped[m.name] = str(exc)
                console.print(f"[{done}/{total}] {m.name}: skipped ({exc})")
                done += len(seeds) - 1 - seeds.index(seed)
                break
            runs.setdefault(m.name, []).append(run)
            f = run.final
            spread = (f" (peers {100 * min(f['ua_per_peer']):.1f}-"
                      f"{100 * max(f['ua_per_peer']):.1f}, averaged "
                      f"{100 * f['ua_avg_model']:.1f})" if f["ua_per_peer"] else "")
            console.print(f"[{done}/{total}] {m.name:<22} seed {seed}: UA {100 * f['ua']:.1f} %"
                          f"{spread}, busiest node {f['bytes_max_node'] / 1e6:.2f} MB, "
                          f"{run.wall_s:.1f} s")
    return runs, skipped


def write_outputs(out: Path, *, methods, runs, skipped, context, base, console) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", runs)
    summary = summarize(methods, runs)
    write_markdown(out / "summary.md", summary=summary, context=context, skipped=skipped,
                   cfg=base)
    (out / "runs.json").write_text(json.dumps(
        {"context": {k: v for k, v in context.items() if k != "classes"},
         "classes": list(context["classes"]), "skipped": skipped,
         "runs": [{"method": r.method, "seed": r.seed, "wall_s": round(r.wall_s, 2),
                   **r.final} for rs in runs.values() for r in rs]}, indent=1) + "\n")
    with matplotlib.rc_context(STYLE):
        for name, plot in FIGURES.items():
            plot(out / name, methods, runs, context)
        if context.get("clock") == "virtual":
            plot_ua_vs_time(out / "ua_vs_time.png", methods, runs, context)
    print_table(console, summary)
    console.print(findings(summary, base), soft_wrap=True)


def merge_outputs(dirs: Sequence[str], out: Path, console) -> int:
    """Tables and figures over the seeds of several earlier runs with the same settings."""
    runs: dict[str, list[Run]] = {}
    context: dict | None = None
    skipped: dict[str, str] = {}
    for d in map(Path, dirs):
        try:
            saved = json.loads((d / "runs.json").read_text())
            with (d / "results.csv").open(newline="") as fh:
                table = list(csv.DictReader(fh))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot merge {d}: {exc}") from None
        ctx = saved["context"] | {"classes": saved["classes"]}
        if context is None:
            context = ctx
        elif (ctx["corpus"], ctx["rounds"], ctx["peers"]) != (
                context["corpus"], context["rounds"], context["peers"]):
            raise ConfigError(f"cannot merge {d}: other corpus, rounds or peers than {dirs[0]}")
        skipped |= saved["skipped"]
        for f in saved["runs"]:
            rows = [{k: _number(v) for k, v in r.items()} for r in table
                    if r["method"] == f["method"] and int(r["seed"]) == f["seed"]]
            final = {k: v for k, v in f.items() if k not in ("method", "seed", "wall_s")}
            runs.setdefault(f["method"], []).append(
                Run(f["method"], int(f["seed"]), rows, final, float(f["wall_s"])))
    assert context is not None
    seeds = sorted({r.seed for rs in runs.values() for r in rs})
    context.update(seeds=",".join(map(str, seeds)), n_seeds=len(seeds))
    context["describe"] = context["describe"].rsplit("seeds", 1)[0] + (
        f"seeds {', '.join(map(str, seeds))}.")
    methods = [CATALOG[m] for m in context["methods"] if m in runs]
    local = (context["local_epochs"] if "local_epochs" in context  # None: auto local steps
             else context["central_epochs"] / context["rounds"])
    base = GossipConfig(rounds=context["rounds"], local_epochs=local)
    write_outputs(out, methods=methods, runs=runs, skipped=skipped, context=context, base=base,
                  console=console)
    console.print(f"merged {len(dirs)} runs ({sum(map(len, runs.values()))} runs, seeds "
                  f"{context['seeds']}) into {out}")
    return 0


def _number(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def run_all(args: argparse.Namespace, console) -> int:
    if args.merge:
        return merge_outputs(args.merge, Path(args.out), console)
    doc = read_toml(args.config)
    features, model_cfg, train_cfg = run_configs(args, doc)
    # every method runs all its rounds, so that the curves line up
    base = dataclasses.replace(gossip_config(args, doc), patience=0)
    methods = select_methods(args.methods, args.faults)
    ds = load_data(args, doc, features, console)
    test = resolve_test_speakers(args.test_speakers, doc, ds)
    # the centralized model takes as many optimiser steps as each peer does in total (the
    # default local work is matched to train.epochs), or sees the training set as often
    central_epochs = (train_cfg.epochs if base.local_epochs is None
                      else max(1, round(base.rounds * base.local_epochs)))
    split = setup_run(ds, cfg=dataclasses.replace(base, algorithm="local", topology="complete"),
                      model=model_cfg, train=train_cfg, test_speakers=test,
                      seed=args.seed_list[0])
    n_params = count_parameters(build_model(model_cfg, n_features=n_inputs(features, model_cfg),
                                            n_classes=len(ds.classes)))
    raw_bytes = sum(os.path.getsize(ds.paths[i]) for i in split.train_idx)
    context = {
        "corpus": ds.corpus.name, "classes": ds.classes, "n_classes": len(ds.classes),
        "peers": split.n_peers, "rounds": base.rounds, "central_epochs": central_epochs,
        "seeds": ",".join(map(str, args.seed_list)), "n_seeds": len(args.seed_list),
        "train_files": len(split.train_idx), "raw_mb": raw_bytes / 1e6,
        "methods": [m.name for m in methods], "local_steps": split.auto_local_steps,
        "local_epochs": base.local_epochs, "clock": base.clock,
        **({"device_speed": base.device_speed, "step_time": base.step_time,
            "latency": base.latency, "bandwidth": base.bandwidth}
           if base.clock == "virtual" else {}),
        "describe": (
            f"{ds.corpus.name} at {ds.corpus.root}: {len(split.train_idx)} training utterances "
            f"on {split.n_peers} peers (partition {base.partition}), {len(split.test_idx)} test "
            f"utterances from speakers {', '.join(test)}; {len(ds.classes)} classes. Model "
            f"{model_cfg.kind} (width {model_cfg.width}, {n_params:,} parameters), "
            f"{base.rounds} rounds of "
            + (f"{base.local_epochs:g} local epoch(s)" if base.local_epochs is not None
               else f"{split.auto_local_steps} local steps (matched to {central_epochs} "
                    "centralized epochs)")
            + ", evaluated every "
            f"{base.eval_every} round(s), batch {train_cfg.batch_size}, lr {train_cfg.lr}; "
            f"seeds {', '.join(map(str, args.seed_list))}."),
    }
    console.print(context["describe"])
    console.print(f"centralizing the training audio would upload {raw_bytes / 1e6:.1f} MB of "
                  f"WAV files ({len(split.train_idx)} files)")
    t0 = time.perf_counter()
    runs, skipped = run_methods(
        ds, methods, args.seed_list, base=base, model=model_cfg, train=train_cfg,
        central_train=dataclasses.replace(train_cfg, epochs=central_epochs), test=test,
        split=split, console=console)
    out = Path(args.out)
    write_outputs(out, methods=methods, runs=runs, skipped=skipped, context=context, base=base,
                  console=console)
    console.print(f"wrote {out}/results.csv, summary.md, runs.json and {len(FIGURES)} figures; "
                  f"{time.perf_counter() - t0:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch_threads()  # as the CLI
    try:
        return run_all(args, make_console())
    except GossipserError as exc:
        error_line(str(exc))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
