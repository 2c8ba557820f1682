"""How much do Byzantine peers hurt gossip, and how much do robust merges give back?

For every merge rule (plain averaging first) it runs the simulator once with nobody attacking
and once per attack, with the same Byzantine peers (drawn from the seed), and prints the
honest peers' mean and minimum UA: what an attack costs without a defence, what each robust
merge recovers, and what a robust merge costs when nobody attacks. OUT/bench_robust.json
holds every run.

Run: .venv/bin/python scripts/bench_robust.py --out runs/robust [--data DIR]
     [--test-speakers LIST] [--byzantine 2] [--attacks signflip,scale:-10]
     [--rules none,trimmed-mean:2,median,krum:2,clip:auto] [--seeds 0] [gossip/train flags]
(the default algorithm, gradient tracking, unless --algorithm dpsgd or gossip-learning)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from bench_learning import script_main, script_parser  # scripts/ is on sys.path
from rich import box
from rich.table import Table

from gossipser.cli.commands import load_data, resolve_test_speakers
from gossipser.cli.options import gossip_config, run_configs
from gossipser.config import read_toml
from gossipser.gossip.plan import setup_run
from gossipser.learn.pool import make_pool
from gossipser.sim.simulator import Simulator


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = script_parser(__doc__)
    p.add_argument("--test-speakers", metavar="LIST")
    p.add_argument("--seeds", default="0", metavar="LIST")
    p.add_argument("--byzantine", default="2", help="attackers: a count or ids (default 2)")
    p.add_argument("--attacks", default="signflip,scale:-10", metavar="LIST")
    p.add_argument("--rules", default="none,trimmed-mean:2,median,krum:2,clip:auto",
                   metavar="LIST", help="merge rules; none is plain averaging")
    p.add_argument("--topology", default="regular:4")
    for flag, kind in (("--algorithm", str), ("--rounds", int), ("--local-epochs", float),
                       ("--model", str), ("--width", int), ("--epochs", int),
                       ("--batch-size", int), ("--lr", float), ("--workers", int),
                       ("--patience", int)):
        p.add_argument(flag, type=kind, help="as for gossipser simulate")
    args = p.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",")]
    return args


def one_run(ds, test, seed, *, model, train, gossip) -> dict:
    setup = setup_run(ds, cfg=gossip, model=model, train=train, test_speakers=test, seed=seed)
    t0 = time.perf_counter()
    with make_pool(setup.pool_spec(), [setup.shard(i) for i in range(setup.n_peers)],
                   workers=gossip.workers) as pool:
        summary = Simulator(setup, pool).run()
    f = summary["final"]
    return {"robust": gossip.robust, "attack": gossip.attack if gossip.byzantine else "none",
            "seed": seed, "byzantine": summary.get("byzantine", []),
            "ua_mean": f["ua_mean"], "ua_min": f["ua_min"], "ua_avg_model": f["ua_avg_model"],
            "stopped_round": summary["stopped"]["round"],
            "wall_s": round(time.perf_counter() - t0, 1)}


def run(args: argparse.Namespace, console) -> int:
    doc = read_toml(args.config)
    features, model, train = run_configs(args, doc)
    base = gossip_config(args, doc)
    ds = load_data(args, doc, features, console)
    test = resolve_test_speakers(args.test_speakers, doc, ds)
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    console.print(f"{base.algorithm} on {base.topology}, {len(rules)} merge rules x (clean + "
                  f"{len(attacks)} attacks by {args.byzantine} Byzantine peers), seeds "
                  f"{args.seeds}")
    runs = []
    for seed in args.seed_list:
        for rule in rules:
            for attack in ["none", *attacks]:
                gossip = dataclasses.replace(
                    base, robust=rule, byzantine="" if attack == "none" else args.byzantine,
                    attack="signflip" if attack == "none" else attack)
                r = one_run(ds, test, seed, model=model, train=train, gossip=gossip)
                runs.append(r)
                console.print(f"seed {seed} {rule:>15} {attack:>11}: honest UA mean "
                              f"{100 * r['ua_mean']:.1f} min {100 * r['ua_min']:.1f} "
                              f"(Byzantine {r['byzantine']}; {r['wall_s']:.0f} s)")

    def mean(rule: str, attack: str, key: str = "ua_mean") -> float:
        return 100 * float(np.mean([r[key] for r in runs
                                    if r["robust"] == rule and r["attack"] == attack]))

    clean = mean(rules[0], "none")
    table = Table(title=f"{ds.corpus.name}: honest peers' UA (%), mean over seeds "
                  f"{args.seeds}; {args.byzantine} Byzantine peers", box=box.SIMPLE_HEAD,
                  title_justify="left")
    table.add_column("merge")
    for attack in ["none", *attacks]:
        table.add_column(f"{attack} mean/min", justify="right")
        table.add_column("vs clean", justify="right")
    for rule in rules:
        cells = []
        for attack in ["none", *attacks]:
            m = mean(rule, attack)
            cells += [f"{m:.1f} / {mean(rule, attack, 'ua_min'):.1f}", f"{m - clean:+.1f}"]
        table.add_row(rule, *cells)
    console.print(table)
    console.print(f"clean = {rules[0]} with nobody attacking ({clean:.1f})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_robust.json").write_text(json.dumps({
        "corpus": ds.corpus.name, "data": str(ds.corpus.root), "test_speakers": list(test),
        "gossip": dataclasses.asdict(base), "model": model.to_dict(), "train": train.to_dict(),
        "rules": rules, "attacks": attacks, "byzantine": args.byzantine, "runs": runs,
    }, indent=1) + "\n")
    console.print(f"wrote {out / 'bench_robust.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
