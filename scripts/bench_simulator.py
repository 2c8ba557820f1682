"""Simulator throughput: peer-steps/s with a 2-process pool against a bare one-core loop.

One peer-step is one optimizer step of one peer's local training (CNN of the default width,
batch 32). For each peer count the script runs D-PSGD on a ring (synthetic corpus, iid
partition, ProcessPool with 2 workers, one local epoch a round, evaluation only in the last
round) and then steps the same LocalTrainers in a plain loop in this process on one torch
thread. Round 1 warms up both and is left out of the rates; pool start-up is reported apart.

Run: .venv/bin/python scripts/bench_simulator.py [--peers 16,64] [--rounds 4] [--quick]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gossipser.data.dataset import Dataset, load_dataset
from gossipser.data.features import default_cache_dir
from gossipser.data.synth import SynthConfig
from gossipser.data.synth_corpus import write_corpus
from gossipser.gossip.events import RoundFinished, RunStarted
from gossipser.gossip.mixing import copy_params
from gossipser.gossip.plan import RunSetup, setup_run
from gossipser.gossip.settings import GossipConfig
from gossipser.learn.jobs import TrainJob, TrainResult
from gossipser.learn.models import build_model
from gossipser.learn.pool import ProcessPool
from gossipser.learn.settings import ModelConfig, TrainConfig
from gossipser.learn.train import LocalTrainer
from gossipser.sim.simulator import Simulator

SPEAKERS = 8  # spk08 is the test speaker
PER_PEER = 34  # training utterances per peer: at least one full batch of 32
WORKERS = 2


@dataclass
class TimedPool:
    """Wraps a pool; per train/evaluate call: kind, start, wall time, count (peer-steps or
    models) and, for training, the busiest worker's optimiser seconds."""

    pool: ProcessPool
    calls: list[dict] = field(default_factory=list)

    @property
    def workers(self) -> int:
        return self.pool.workers

    def steps_per_epoch(self) -> dict[int, int]:
        return self.pool.steps_per_epoch()

    def train(self, jobs: list[TrainJob]) -> list[TrainResult]:
        t0 = time.perf_counter()
        out = self.pool.train(jobs)
        per_worker: dict[int, float] = {}
        for r in out:
            w = self.pool._owner[r.peer]
            per_worker[w] = per_worker.get(w, 0.0) + r.seconds
        self.calls.append({"kind": "train", "start": t0, "wall": time.perf_counter() - t0,
                           "count": sum(j.steps for j in jobs),
                           "busiest": max(per_worker.values(), default=0.0)})
        return out

    def evaluate(self, states):
        t0 = time.perf_counter()
        out = self.pool.evaluate(states)
        self.calls.append({"kind": "evaluate", "start": t0, "wall": time.perf_counter() - t0,
                           "count": len(states)})
        return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RoundClock:
    """Listener: wall time, this process's CPU time and each worker's CPU time when each
    round ended (index 0: the run start)."""

    def __init__(self, workers: list[int]) -> None:
        self.workers = workers
        self.marks: list[tuple[float, float, list[float]]] = []

    def __call__(self, event) -> None:
        if isinstance(event, RunStarted | RoundFinished):
            self.marks.append((time.perf_counter(), time.process_time(),
                               [cpu_seconds(pid) for pid in self.workers]))


def corpus(n_utterances: int, cache: Path) -> Path:
    """A synthetic corpus with at least `n_utterances` training utterances (bench_scale too).

    Utterances last 1 s: the CNN reads a fixed 150 frames (3 s, zero padded), so a shorter
    file costs the same per step and a third of the synthesis and MFCC time.
    """
    per_emotion = math.ceil(n_utterances / ((SPEAKERS - 1) * 8))
    cfg = SynthConfig(speakers=SPEAKERS, per_emotion=per_emotion, duration_s=1.0)
    root = cache / f"bench-synth-s{SPEAKERS}-p{per_emotion}-d1"
    if not (root / ".complete").exists():
        t0 = time.perf_counter()
        n = write_corpus(root, cfg)
        (root / ".complete").write_text("ok\n")
        print(f"  wrote {n} synthetic files in {time.perf_counter() - t0:.1f} s (once)")
    return root


def make_setup(ds: Dataset, peers: int, rounds: int) -> RunSetup:
    cfg = GossipConfig(algorithm="dpsgd", topology="ring", peers=peers, partition="iid",
                       rounds=rounds, local_epochs=1.0, eval_every=rounds, workers=WORKERS)
    return setup_run(ds, cfg=cfg, model=ModelConfig(kind="cnn"), train=TrainConfig(),
                     test_speakers=(f"spk{SPEAKERS:02d}",), seed=0)


def bench_simulator(setup: RunSetup) -> dict:
    shards = [setup.shard(i) for i in range(setup.n_peers)]
    t0 = time.perf_counter()
    pool = ProcessPool(setup.pool_spec(), shards, workers=WORKERS)
    startup = time.perf_counter() - t0
    timed, clock = TimedPool(pool), RoundClock([p.pid for p in mp.active_children()])
    try:
        sim = Simulator(setup, timed, listeners=[clock])
        sim.run()
    finally:
        pool.close()
    rounds = []
    for r in range(1, len(clock.marks)):
        (start, cpu0, w0), (end, cpu1, w1) = clock.marks[r - 1], clock.marks[r]
        mine = [c for c in timed.calls if start <= c["start"] < end]
        rounds.append({
            "wall": end - start, "main_cpu": cpu1 - cpu0,
            "worker_cpu": [b - a for a, b in zip(w0, w1, strict=True)],
            "train": sum(c["wall"] for c in mine if c["kind"] == "train"),
            "evaluate": sum(c["wall"] for c in mine if c["kind"] == "evaluate"),
            "steps": sum(c["count"] for c in mine if c["kind"] == "train"),
            "models": sum(c["count"] for c in mine if c["kind"] == "evaluate"),
        })
    return {"startup": startup, "rounds": rounds}


def bench_bare(setup: RunSetup, rounds: int) -> dict:
    """The same trainers and steps, no pool, no gossip, no evaluation, one thread."""
    spec = setup.pool_spec()
    trainers = []
    for i in range(setup.n_peers):
        s = setup.shard(i)
        model = build_model(spec.model, n_features=spec.n_inputs, n_classes=spec.n_classes,
                            seed=s.seed)
        trainers.append(LocalTrainer(model=model, x=s.x, y=s.y, n_classes=spec.n_classes,
                                     cfg=spec.train, seed=s.seed))
    times, cpu, steps = [], [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        n = 0
        for t in trainers:
            k = t.steps_per_epoch()
            t.train_steps(k)
            n += k
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        steps.append(n)
    return {"times": times, "cpu": cpu, "steps": steps}


def ipc_cost(setup: RunSetup) -> tuple[float, float]:
    """(MB, seconds) to pickle and unpickle one round of jobs and results, both directions."""
    jobs = [TrainJob(peer=i, params=copy_params(setup.init), steps=1)
            for i in range(setup.n_peers)]
    t0 = time.perf_counter()
    blob = pickle.dumps(jobs, protocol=pickle.HIGHEST_PROTOCOL)
    pickle.loads(blob)
    return 2 * len(blob) / 1e6, 2 * (time.perf_counter() - t0)


def report(setup: RunSetup, sim: dict, bare: dict, rounds: int) -> None:
    sizes = [len(p) for p in setup.parts]
    params = sum(a.size for a in setup.init.values())
    steady = sim["rounds"][1:]  # round 1 warms up
    last = steady[-1]
    # training throughput: rounds 2..R, the last round's evaluation taken out
    sim_steps = sum(r["steps"] for r in steady)
    sim_wall = sum(r["wall"] for r in steady) - last["evaluate"]
    sim_rate = sim_steps / sim_wall
    bare_steps, bare_wall, bare_cpu = (sum(bare[k][1:]) for k in ("steps", "times", "cpu"))
    bare_rate = bare_steps / bare_wall
    wall = sum(r["wall"] for r in steady)
    inside = sum(r["train"] + r["evaluate"] for r in steady)
    # CPU accounting over the training rounds 2..R-1 (no evaluation in them)
    train_rounds = steady[:-1] or steady
    worker_cpu = [sum(ws) for ws in zip(*(r["worker_cpu"] for r in train_rounds), strict=True)]
    main_cpu = sum(r["main_cpu"] for r in train_rounds)
    tr_wall = sum(r["wall"] for r in train_rounds)
    tr_steps = sum(r["steps"] for r in train_rounds)
    worker_ms = 1e3 * sum(worker_cpu) / tr_steps
    bare_ms = 1e3 * bare_cpu / bare_steps
    # an idle machine: the slowest worker's CPU plus the engine's serial CPU per round
    idle_ratio = (bare_cpu / bare_steps) * tr_steps / (max(worker_cpu) + main_cpu)
    mb, ipc_s = ipc_cost(setup)
    print(f"\n{setup.n_peers} peers (dpsgd, ring, {min(sizes)}-{max(sizes)} utterances each, "
          f"{steady[0]['steps']} peer-steps a round, {params:,} parameters, {rounds} rounds):")
    print(f"  pool start-up ({WORKERS} processes):    {sim['startup']:8.2f} s")
    print(f"  simulator, {WORKERS} workers:            {sim_rate:8.1f} peer-steps/s ({sim_steps} "
          f"steps in {sim_wall:.2f} s, rounds 2-{rounds}, evaluation left out)")
    print(f"  bare loop, 1 thread:            {bare_rate:8.1f} peer-steps/s ({bare_steps} steps "
          f"in {bare_wall:.2f} s)")
    print(f"  ratio simulator / bare:         {sim_rate / bare_rate:8.2f} x (target >= 1.6 x)")
    print(f"  CPU per peer-step:              {worker_ms:8.1f} ms in the workers, "
          f"{bare_ms:.1f} ms bare")
    print(f"  cores obtained:                 {(sum(worker_cpu) + main_cpu) / tr_wall:8.2f} "
          f"simulator (workers + engine), {bare_cpu / bare_wall:.2f} bare")
    print(f"  ratio on an idle machine (CPU): {idle_ratio:8.2f} x (bare CPU per step x steps / "
          "(busiest worker's CPU + engine CPU))")
    print(f"  engine overhead (outside pool): {100 * (wall - inside) / wall:8.1f} % of round "
          f"time ({wall - inside:.3f} s of {wall:.2f} s; engine CPU "
          f"{1e3 * main_cpu / len(train_rounds):.0f} ms/round)")
    print(f"  evaluation (round {rounds}):          {last['evaluate']:8.2f} s for "
          f"{last['models']} models on {len(setup.test_idx)} utterances "
          f"(= {last['evaluate'] * sim_rate:.0f} peer-steps of time)")
    print(f"  params through pipes per round: {mb:8.1f} MB, pickle+unpickle "
          f"{1e3 * ipc_s:.1f} ms in-process")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="16,64", help="comma-separated peer counts")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds per run (>= 3: round 1 warms up, the last evaluates)")
    parser.add_argument("--quick", action="store_true", help="16 peers, 3 rounds")
    parser.add_argument("--cache-dir", type=Path, help="corpus and feature cache")
    args = parser.parse_args()
    peer_counts = [16] if args.quick else [int(p) for p in args.peers.split(",")]
    rounds = 3 if args.quick else args.rounds
    if rounds < 3:
        parser.error("--rounds must be at least 3")
    torch.set_num_threads(1)  # the bare loop: one core; the main process does no training
    cache = args.cache_dir or default_cache_dir()

    cores = len(os.sched_getaffinity(0))
    print(f"bench_simulator: {cores} cores, torch {torch.__version__}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min)")
    t0 = time.perf_counter()
    ds = load_dataset(corpus(max(peer_counts) * PER_PEER, cache), cache_dir=cache)
    print(f"  corpus: {len(ds)} utterances ({'features from cache' if ds.from_cache else 'MFCC'}"
          f" in {time.perf_counter() - t0:.1f} s)")

    for peers in peer_counts:
        setup = make_setup(ds, peers, rounds)
        sim = bench_simulator(setup)
        bare = bench_bare(setup, rounds - 1)
        report(setup, sim, bare, rounds)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
