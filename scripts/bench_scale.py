"""Many peers on one machine: does the simulator grow linearly with peers x steps?

For each peer count the script runs D-PSGD on regular:4 (synthetic corpus, iid partition,
`--per-peer` training utterances each, a batch as large as a shard, `--local-steps` optimiser
steps a round: 1 by default, the worst case for the engine's share; `auto`: what a default
run (its 300 rounds and default training budget) gives each peer of this corpus, evaluation
only in the last round, on 64 test utterances) with the process pool, and prints per steady
round (round 1 warms up; the last round evaluates, and averages every peer's model for it, so
it is left out whole):

- s/round and peer-steps/s, and both against the smallest peer count (linear: ratio ~1);
- where a round's wall time goes: optimiser steps in the busiest worker, the rest of the pool
  (unparking and parking trainers, parameters into and out of the shared rows, or pickled
  through pipes with --pickle, waiting on the other worker), and the engine (the simulator:
  messages, mixing, consensus distance, metrics);
- memory (this process plus the workers, proportional set size: shared pages counted once),
  per peer, and the marginal memory of one more peer between successive counts.

A process holding more than `PARK_ABOVE` peers keeps no torch module per peer: each peer's
trainer (its shard, Adam state and RNG streams) trains the one module the process shares
(`gossipser.learn.trainers._Trainers`).

Run: .venv/bin/python scripts/bench_scale.py --peers 100,1000,5000 --model dnn|cnn
     [--rounds 4] [--per-peer 6] [--local-steps 1|N|auto] [--workers 2] [--pickle]
     [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import torch
from bench_simulator import SPEAKERS, TimedPool, corpus  # scripts/ is on sys.path

from gossipser.data.dataset import Dataset, load_dataset
from gossipser.data.features import default_cache_dir
from gossipser.gossip.events import RoundFinished, RunStarted
from gossipser.gossip.plan import RunSetup, setup_run
from gossipser.gossip.settings import GossipConfig
from gossipser.learn.pool import ProcessPool
from gossipser.learn.settings import ModelConfig, TrainConfig
from gossipser.learn.trainers import PARK_ABOVE
from gossipser.sim.simulator import Simulator


def memory_mb(pid: int) -> float:
    """Memory of process `pid` in MB: its proportional share of resident pages (a page that
    n processes map counts 1/n in each, so the parameter slots the pool shares with its
    workers count once in a sum), or its resident set where the kernel has no smaps_rollup."""
    for name, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            lines = Path(name).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


class RoundClock:
    """Listener: wall time when the run starts and each round ends; total memory (proportional
    set sizes) at the start and after the last round only (reading it takes tens of ms at
    1,000 peers, which would count as engine time)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def __call__(self, event) -> None:
        if isinstance(event, RunStarted | RoundFinished):
            now, memory = time.perf_counter(), 0.0
            if isinstance(event, RunStarted) or event.round == event.rounds:
                pids = [os.getpid(), *(p.pid for p in mp.active_children())]
                memory = sum(memory_mb(p) for p in pids)
            self.marks.append((now, memory))


def default_steps(setup: RunSetup) -> int:
    """Local steps a round that a default run (its rounds and training budget) gives each
    peer of `setup`'s equal shards: its automatic budget."""
    default = dataclasses.replace(setup, train=TrainConfig(),
                                  cfg=dataclasses.replace(setup.cfg, rounds=GossipConfig().rounds))
    return default.auto_local_steps


def make_setup(ds: Dataset, peers: int, steps: int | None, args) -> RunSetup:
    """The benchmark's run at `peers` peers, `steps` local steps a round (None: a default
    run's, `default_steps`)."""
    cfg = GossipConfig(algorithm="dpsgd", topology="regular:4", peers=peers, partition="iid",
                       rounds=args.rounds, local_epochs=1.0, eval_every=args.rounds,
                       workers=args.workers, patience=0)
    train = TrainConfig(batch_size=max(2, args.per_peer))
    setup = setup_run(ds, cfg=cfg, model=ModelConfig(kind=args.model), train=train,
                      test_speakers=(f"spk{SPEAKERS:02d}",), seed=0)
    parts = [p[: args.per_peer] for p in setup.parts]  # the same shard size at every count
    # evaluation is not what this measures: 64 test utterances keep the last round short
    setup = dataclasses.replace(setup, parts=parts, train_idx=np.concatenate(parts),
                                test_idx=setup.test_idx[:: max(1, len(setup.test_idx) // 64)],
                                n_train=sum(map(len, parts)),
                                peer_sizes=tuple(map(len, parts)))
    # a batch as large as a shard: `steps` local epochs are `steps` optimiser steps
    steps = default_steps(setup) if steps is None else steps
    return dataclasses.replace(setup, cfg=dataclasses.replace(cfg, local_epochs=float(steps)))


def run(setup: RunSetup, workers: int, slots: bool = True) -> dict:
    t0 = time.perf_counter()
    shards = [setup.shard(i) for i in range(setup.n_peers)]
    pool = ProcessPool(setup.pool_spec(), shards, workers=workers, slots=slots)
    startup = time.perf_counter() - t0
    timed, clock = TimedPool(pool), RoundClock()
    try:
        sim = Simulator(setup, timed, listeners=[clock])
        sim.run()
    finally:
        pool.close()
    rounds = []
    for r in range(1, len(clock.marks)):
        start, end = clock.marks[r - 1][0], clock.marks[r][0]
        mine = [c for c in timed.calls if start <= c["start"] < end]
        train = [c for c in mine if c["kind"] == "train"]
        rounds.append({
            "wall": end - start, "pool": sum(c["wall"] for c in train),
            "busiest": sum(c["busiest"] for c in train),
            "steps": sum(c["count"] for c in train),
        })
    return {"startup": startup, "rounds": rounds[1:-1], "shared": pool.uses_slots,
            "memory": max(m[1] for m in clock.marks), "ua": sim.rows[-1]["ua_mean"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", default="100,1000", help="comma-separated peer counts")
    p.add_argument("--model", choices=("dnn", "cnn"), default="cnn")
    p.add_argument("--rounds", type=int, default=4,
                   help=">= 3: round 1 warms up, the last one evaluates")
    p.add_argument("--per-peer", type=int, default=6, help="training utterances per peer")
    p.add_argument("--local-steps", default="1", metavar="1|N|auto",
                   help="optimiser steps per peer and round (auto: a default run's budget)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--pickle", action="store_true",
                   help="send training jobs' parameters by pickle, not shared memory (A/B)")
    p.add_argument("--cache-dir", type=Path, help="corpus and feature cache")
    args = p.parse_args()
    counts = sorted(int(x) for x in args.peers.split(","))
    if args.rounds < 3 or args.per_peer < 2 or min(counts) < 5:
        p.error("need --rounds >= 3, --per-peer >= 2 and at least 5 peers (regular:4)")
    if args.local_steps != "auto" and not (args.local_steps.isdigit() and int(args.local_steps)):
        p.error(f"--local-steps: a positive integer or auto, not {args.local_steps!r}")
    torch.set_num_threads(1)
    cache = args.cache_dir or default_cache_dir()
    print(f"bench_scale: {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}, "
          f"{args.model}, {args.workers} workers, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    t0 = time.perf_counter()
    ds = load_dataset(corpus(max(counts) * args.per_peer, cache), cache_dir=cache)
    print(f"  corpus: {len(ds)} utterances ({'features from cache' if ds.from_cache else 'MFCC'}"
          f" in {time.perf_counter() - t0:.1f} s)")

    results = []
    for n in counts:
        setup = make_setup(ds, n, None if args.local_steps == "auto" else int(args.local_steps),
                           args)
        local = int(setup.cfg.local_epochs)
        t0 = time.perf_counter()
        res = run(setup, args.workers, slots=not args.pickle)
        res["total"] = time.perf_counter() - t0
        steady = res["rounds"]
        wall = sum(r["wall"] for r in steady)
        steps = sum(r["steps"] for r in steady)
        busiest = sum(r["busiest"] for r in steady)
        pool = sum(r["pool"] for r in steady)
        res.update(n=n, s_round=wall / len(steady), rate=steps / wall,
                   ms_step=1e3 * wall / steps, steps_round=steps / len(steady),
                   compute=busiest / wall, pool_rest=(pool - busiest) / wall,
                   engine=(wall - pool) / wall,
                   params=sum(a.size for a in setup.init.values()),
                   parked=n / args.workers > PARK_ABOVE)
        results.append(res)
        print(f"\n{n} peers ({res['params']:,} parameters each, "
              f"{'parked' if res['parked'] else 'live'} trainers, parameters by "
              f"{'shared memory' if res['shared'] else 'pickle'}, {local} local steps, "
              f"{res['steps_round']:.0f} peer-steps a round): run {res['total']:.1f} s, "
              f"pool start-up {res['startup']:.1f} s, final UA {res['ua']:.3f}")
        print(f"  {res['s_round']:8.2f} s/round   {res['rate']:8.1f} peer-steps/s   "
              f"{res['ms_step']:.2f} ms of wall time per peer-step (steady rounds "
              f"2-{args.rounds - 1}: not the warm-up, not the evaluation)")
        print(f"  round time: {100 * res['compute']:5.1f} % optimiser steps (busiest worker), "
              f"{100 * res['pool_rest']:4.1f} % rest of the pool, {100 * res['engine']:4.1f} % "
              f"engine; overhead {100 * (1 - res['compute']):.1f} %")
        print(f"  memory {res['memory']:,.0f} MB (this process + workers, shared pages once), "
              f"{res['memory'] / n:.2f} MB per peer")

    base = results[0]
    print("\ngrowth against the smallest count (linear in peers x steps: ratios ~1):")
    for prev, res in zip(results, results[1:], strict=False):
        marginal = (res["memory"] - prev["memory"]) / (res["n"] - prev["n"])
        print(f"  {res['n']:>6} peers: s/round x{res['s_round'] / base['s_round']:.1f} for "
              f"x{res['steps_round'] / base['steps_round']:.1f} peer-steps; wall time per "
              f"peer-step x{res['ms_step'] / base['ms_step']:.2f}; memory per extra peer "
              f"{marginal:.2f} MB")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
