"""The same FedAvg work in Flower's simulation engine and in gossipser, timed side by side.

Both sides run FedAvg over the default synthetic corpus (one client per training speaker),
the default CNN, from the same initial model (the run seed's), every client every round,
with gossipser's `LocalTrainer` (Adam, the same shard, the same seed, one local epoch a
round), the average weighted by sample count, and one evaluation of the final global model
on the held-out speakers. Each side runs as a whole process, started from this script:

- gossipser: `gossipser simulate --algorithm fedavg --local-epochs 1 --eval-every R`;
- Flower 1.42: a `ServerApp` whose main loop sends the global model to every node with
  `grid.send_and_receive` and averages the replies, and a `ClientApp` that trains with the
  same trainer, in `flwr.simulation.run_simulation` (Ray backend, one CPU per client actor).

It prints, per round count, both whole-process times, the steady round time (median of
rounds 2..R) and both final UAs, which must agree (each Flower client keeps its optimiser
state in its node's context between rounds, as gossipser's trainers keep theirs),
then where gossipser's steady round goes (the same run again in this process, its pool timed:
the busiest worker's optimiser steps, which bound any framework's round from below, since
both run the same trainer on the same shards), and as its last line `ratio X`: Flower's
whole-process time over gossipser's, summed over the round counts of this run.

Run: pip install torch==2.13.0 && pip install -e '.[compare]'
     python scripts/bench_vs_flower.py [--rounds 5,20] [--out runs/vs-flower]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 0
TOLERANCE = 0.05  # UA points (as a fraction) the two final models may differ by


# Flower child: one whole Flower run ----------------------------------------------------------
def _process_cache() -> dict:
    """A dict that lives as long as this process (a Ray actor keeps its trainers in it)."""
    return sys.__dict__.setdefault("_gossipser_vs_flower", {})


def flower_run(rounds: int, data: Path, result: Path) -> None:
    from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from gossipser.gossip.mixing import combine

    with data.open("rb") as fh:
        bundle = pickle.load(fh)
    names, n_clients = bundle["names"], len(bundle["shards"])
    data_path = str(data)

    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        import torch

        from gossipser.learn.models import build_model, get_state, set_state
        from gossipser.learn.train import LocalTrainer

        torch.set_num_threads(1)
        cache = _process_cache()
        if "bundle" not in cache:
            with open(data_path, "rb") as fh:
                cache["bundle"] = pickle.load(fh)
        spec = cache["bundle"]["spec"]
        pid = int(context.node_config["partition-id"])
        s = cache["bundle"]["shards"][pid]
        if "model" not in cache:
            cache["model"] = build_model(spec.model, n_features=spec.n_inputs,
                                         n_classes=spec.n_classes)
        # a client's optimiser state lives in its node's context, as Flower keeps client
        # state across rounds whichever actor runs the client this time
        trainer = LocalTrainer(model=cache["model"], x=s.x, y=s.y, n_classes=spec.n_classes,
                               cfg=spec.train, seed=s.seed, planned_steps=s.planned_steps)
        if "trainer" in context.state:
            trainer.load_state({k: a.numpy() for k, a in context.state["trainer"].items()})
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        set_state(trainer.model, dict(zip(cache["bundle"]["names"], arrays, strict=True)))
        loss = trainer.train_steps(int(msg.content["config"]["steps"][pid]))
        saved = ArrayRecord()
        for k, v in trainer.state().items():
            saved[k] = Array.from_numpy_ndarray(np.asarray(v))
        context.state["trainer"] = saved
        state = get_state(trainer.model)
        reply = RecordDict({
            "arrays": ArrayRecord.from_numpy_ndarrays([state[k] for k in cache["bundle"]["names"]]),
            "metrics": MetricRecord({"num-examples": len(trainer.y), "loss": float(loss)})})
        return Message(content=reply, reply_to=msg)

    server = ServerApp()
    times: list[float] = []
    final: dict[str, np.ndarray] = {}

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        from flwr.app import ConfigRecord

        nodes: list[int] = []
        while len(nodes) < n_clients:  # the simulated nodes register after start-up
            nodes = sorted(grid.get_node_ids())
            time.sleep(0.05 if len(nodes) < n_clients else 0)
        model = dict(bundle["init"])
        steps = ConfigRecord({"steps": [int(s) for s in bundle["steps"]]})
        for _ in range(rounds):
            t0 = time.perf_counter()
            content = RecordDict({"arrays": ArrayRecord.from_numpy_ndarrays(
                                      [model[k] for k in names]),
                                  "config": steps})
            replies = list(grid.send_and_receive(
                [Message(content=content, message_type="train", dst_node_id=n) for n in nodes]))
            ok = [r for r in replies if r.has_content()]
            if len(ok) != len(nodes):
                errors = [r.error for r in replies if not r.has_content()]
                raise RuntimeError(f"Flower: {len(nodes) - len(ok)} client(s) failed: {errors}")
            # the sample-weighted average, by the same function as gossipser's FedAvg server
            model = combine([dict(zip(names, r.content["arrays"].to_numpy_ndarrays(),
                                      strict=True)) for r in ok],
                            [r.content["metrics"]["num-examples"] for r in ok])
            times.append(time.perf_counter() - t0)
        final.update(model)

    run_simulation(server_app=server, client_app=client, num_supernodes=n_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    from gossipser.learn.pool import SerialPool

    score = SerialPool(bundle["spec"], []).evaluate([final])[0]
    result.write_text(json.dumps({"round_s": times, "ua": score.ua}))


# the parent: data, both runs, the table -------------------------------------------------------
def gossipser_setup(rounds: int, out: Path):
    """The run gossipser's `simulate` would make (default corpus, config and seed)."""
    from gossipser.cli.commands import load_data, resolve_test_speakers
    from gossipser.cli.main import build_parser
    from gossipser.cli.options import gossip_config, run_configs
    from gossipser.gossip.plan import setup_run
    from gossipser.ui.report import make_console

    args = build_parser().parse_args(gossipser_args(rounds, out / "unused"))
    features, model_cfg, train_cfg = run_configs(args, {})
    cfg = gossip_config(args, {})
    console = make_console()
    ds = load_data(args, {}, features, console)
    test = resolve_test_speakers(None, {}, ds)
    return setup_run(ds, cfg=cfg, model=model_cfg, train=train_cfg, test_speakers=test,
                     seed=SEED)


def prepare(out: Path, rounds: int) -> Path:
    """gossipser's run as what the Flower clients need: shards, steps per round, initial
    model, evaluation spec."""
    from gossipser.learn.settings import steps_per_epoch

    setup = gossipser_setup(rounds, out)
    train_cfg = setup.train
    shards = [setup.shard(i) for i in range(setup.n_peers)]
    spec = setup.pool_spec()
    steps = [setup.local_steps(i, steps_per_epoch(len(s.y), train_cfg.batch_size))
             for i, s in enumerate(shards)]
    path = out / f"flower-data-{rounds}.pkl"
    with path.open("wb") as fh:
        pickle.dump({"shards": shards, "spec": spec, "init": setup.init,
                     "names": list(setup.init), "steps": steps}, fh)
    return path


def busiest_steps(rounds: int, out: Path) -> float:
    """The same gossipser run in this process, its pool timed (`bench_simulator.TimedPool`):
    the median over rounds 2..R of the seconds the busiest worker spends in optimiser steps.
    Flower runs the same trainer on the same shards, so no framework's steady round can be
    shorter than this."""
    from bench_simulator import TimedPool  # scripts/ is on sys.path

    from gossipser.learn.pool import ProcessPool
    from gossipser.sim.simulator import Simulator

    setup = gossipser_setup(rounds, out)
    pool = ProcessPool(setup.pool_spec(), [setup.shard(i) for i in range(setup.n_peers)],
                       workers=setup.cfg.workers)
    timed = TimedPool(pool)
    try:
        Simulator(setup, timed).run()
    finally:
        pool.close()
    return statistics.median([c["busiest"] for c in timed.calls if c["kind"] == "train"][1:])


def gossipser_args(rounds: int, out: Path) -> list[str]:
    return ["simulate", "--algorithm", "fedavg", "--rounds", str(rounds), "--local-epochs",
            "1", "--eval-every", str(rounds), "--patience", "0", "--display", "none",
            "--seed", str(SEED), "--out", str(out)]


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"error: {' '.join(cmd[:3])} failed: {' / '.join(tail)}")
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", default="5,20", help="comma-separated round counts")
    p.add_argument("--out", type=Path, help="where both runs write (default: a temp folder)")
    p.add_argument("--flower-child", nargs=3, metavar=("ROUNDS", "DATA", "RESULT"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.flower_child:
        rounds, data, result = args.flower_child
        flower_run(int(rounds), Path(data), Path(result))
        return 0
    try:
        import flwr
    except ImportError:
        print("error: Flower is not installed: pip install -e '.[compare]' (after "
              "torch==2.13.0)", file=sys.stderr)
        return 2
    counts = [int(r) for r in args.rounds.split(",")]
    out = args.out or Path(tempfile.mkdtemp(prefix="vs-flower-"))
    out.mkdir(parents=True, exist_ok=True)
    gossipser = [sys.executable, "-m", "gossipser"]
    print(f"bench_vs_flower: Flower {flwr.__version__}, {len(os.sched_getaffinity(0))} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; FedAvg, default "
          "synthetic corpus and CNN, one local epoch a round, evaluation at the end")
    totals = {"flower": 0.0, "gossipser": 0.0}
    steady: dict[int, tuple[float, float]] = {}  # rounds -> (Flower, gossipser) steady round
    agree = True
    for r in counts:
        data = prepare(out, r)
        g_out = out / f"gossipser-{r}"
        g_wall = timed([*gossipser, *gossipser_args(r, g_out)])
        summary = json.loads((g_out / "summary.json").read_text())
        with (g_out / "metrics.csv").open() as fh:
            marks = [float(row["wall_s"]) for row in csv.DictReader(fh)]
        g_round = statistics.median(np.diff(marks)[:-1]) if r >= 3 else marks[0]
        f_json = out / f"flower-{r}.json"
        f_wall = timed([sys.executable, __file__, "--flower-child", str(r), str(data),
                        str(f_json)])
        flower = json.loads(f_json.read_text())
        f_round = statistics.median(flower["round_s"][1:]) if r >= 2 else flower["round_s"][0]
        steady[r] = (f_round, g_round)
        g_ua, f_ua = summary["final"]["ua_avg_model"], flower["ua"]
        same = abs(g_ua - f_ua) <= TOLERANCE
        agree &= same
        totals["flower"] += f_wall
        totals["gossipser"] += g_wall
        print(f"\n{r} rounds, {len(summary['final']['ua_per_peer'])} clients:")
        print(f"  whole process   Flower {f_wall:6.1f} s   gossipser {g_wall:6.1f} s   "
              f"ratio {f_wall / g_wall:.2f}")
        print(f"  steady round    Flower {f_round:6.2f} s   gossipser {g_round:6.2f} s   "
              f"ratio {f_round / g_round:.2f}")
        print(f"  final UA        Flower {f_ua:6.3f}     gossipser {g_ua:6.3f}     "
              f"{'agree' if same else 'DIFFER'} (within {TOLERANCE:.2f})")
    if max(counts) >= 3:  # the longest run's steady round, whatever order --rounds gave
        f_round, g_round = steady[max(counts)]
        busy = busiest_steps(max(counts), out / "breakdown")
        print(f"\nwhere gossipser's steady round goes ({max(counts)} rounds again, in this "
              f"process): the busiest worker's optimiser steps take {busy:.2f} s of "
              f"{g_round:.2f} s ({100 * busy / g_round:.0f} %); Flower spends "
              f"{f_round - busy:.2f} s a round beyond them, so a gossipser round of those "
              f"steps alone would give a steady ratio of at most {f_round / busy:.2f}")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not agree:
        print("error: the final UAs differ by more than the tolerance", file=sys.stderr)
    print(f"ratio {totals['flower'] / totals['gossipser']:.2f}")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
