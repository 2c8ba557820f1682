"""What each defence costs in UA and buys against the attribute-inference attack.

Rows: undefended gossip; DP-SGD at several epsilons; the first layer (or the first block,
convolution and BatchNorm) kept on the device; private first layer and DP together. For
each row it runs `gossipser simulate` (one peer per training speaker, regular:4,
recording what the peers send in the first rounds) and `gossipser attack` on that run, then
prints one table (per-peer UA mean and minimum, epsilon spent by the worst peer, attack AUC
with its 95 % interval, the shuffled-attribute control) and writes OUT/privacy_utility.json
and OUT/privacy_utility.png.

Run: .venv/bin/python scripts/privacy_utility.py --out runs/privacy [--data DIR]
     [--rows undefended,eps8,private] [--record 3] [-- extra simulate flags]
Every row gets the same extra flags (e.g. --epochs 10 --rounds 30 for a quicker, weaker run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from gossipser.ui.report import make_console

ROWS = {
    "undefended": [],
    "eps32": ["--dp-epsilon", "32"],
    "eps8": ["--dp-epsilon", "8"],
    "eps2": ["--dp-epsilon", "2"],
    "private": ["--private-layers", "first"],
    # the first convolution and its BatchNorm, whose running statistics are the speaker's
    # feature statistics seen through the first layer (the CNN's module names)
    "private-block": ["--private-layers", "features.0"],
    "private+eps8": ["--private-layers", "first", "--dp-epsilon", "8"],
    # every BatchNorm's running statistics: unused at inference under bn_stats = speaker
    "private-bn-stats": ["--private-layers", "bn-stats"],
    "private-bn-stats+block": ["--private-layers", "bn-stats,features.0"],
    # every peer starts from a model of its own: no neighbour knows what its first update
    # started from, and later updates carry the mixing of models that still disagree
    "independent-init": ["--init", "independent"],
    "independent-init+bn-stats": ["--init", "independent", "--private-layers", "bn-stats"],
    "perturbed-init+bn-stats": ["--init", "perturbed", "--private-layers", "bn-stats"],
    # the BatchNorm layers kept home whole (FedBN), scale and shift too
    "perturbed-init+bn": ["--init", "perturbed", "--private-layers", "bn"],
}
RAVDESS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--data", metavar="DIR", help=f"corpus (default {RAVDESS} if present)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"subset of {', '.join(ROWS)}")
    p.add_argument("--record", type=int, default=3, help="rounds the attacker sees (default 3)")
    p.add_argument("--shadow-runs", type=int, default=4)
    p.add_argument("--topology", default="regular:4")
    p.add_argument("--seed", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    unknown = [r for r in args.rows.split(",") if r not in ROWS]
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    return args, extra


def _gossipser(*argv: str) -> None:
    done = subprocess.run([sys.executable, "-m", "gossipser", *argv], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"gossipser {' '.join(argv[:1])} failed: "
                         f"{(done.stderr or done.stdout).strip().splitlines()[-1]}")


def run_row(name: str, args: argparse.Namespace, extra: list[str], data: str | None) -> dict:
    out = Path(args.out) / name
    data_flags = ["--data", data] if data else []
    _gossipser("simulate", *data_flags, "--topology", args.topology, "--seed", str(args.seed),
               "--record-messages", str(args.record), "--display", "none", "--out", str(out),
               *ROWS[name], *extra)
    _gossipser("attack", "--run", str(out), "--shadow-runs", str(args.shadow_runs),
               "--seed", str(args.seed))
    summary = json.loads((out / "summary.json").read_text())
    attack = json.loads((out / "attack.json").read_text())
    return {"row": name, "flags": ROWS[name] + extra, "ua_mean": summary["final"]["ua_mean"],
            "ua_min": summary["final"]["ua_min"], "epsilon": summary.get("epsilon_max"),
            "rounds_run": summary["stopped"]["round"], "auc": attack["auc"],
            "ci": attack["ci"], "control": attack["control_auc"],
            "chosen_layers": attack["chosen_layers"], "auc_by_round": attack["auc_by_round"],
            "first_layer_auc": next(iter(attack["per_layer"].values()))["auc"]}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in rows:
        lo, hi = r["ci"]
        ax.errorbar(r["ua_mean"], r["auc"], yerr=[[r["auc"] - lo], [hi - r["auc"]]],
                    fmt="o", capsize=3)
        ax.annotate(r["row"], (r["ua_mean"], r["auc"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
    ax.axhline(0.6, color="red", lw=0.8, ls=":", label="target: AUC <= 0.60")
    ax.set_xlabel("per-peer mean UA (emotion)")
    ax.set_ylabel("attack AUC (gender), 95 % CI")
    ax.set_ylim(0.0, 1.05)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("privacy / utility of the defences")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args, extra = parse_args(argv)
    console = make_console()
    data = args.data or (str(RAVDESS) if RAVDESS.is_dir() else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "privacy_utility.json"
    # rows of an earlier call into the same OUT are kept: rows can be (re)run one at a time
    done = {r["row"]: r for r in json.loads(saved.read_text())} if saved.exists() else {}
    for name in args.rows.split(","):
        console.print(f"{name}: simulate and attack ({' '.join(ROWS[name] + extra) or 'defaults'})")
        done[name] = run_row(name, args, extra, data)
        rows = [done[n] for n in ROWS if n in done]
        saved.write_text(json.dumps(rows, indent=2) + "\n")
    table = Table(title=f"privacy / utility on {data or 'the synthetic corpus'}",
                  title_justify="left")
    for col in ("row", "UA mean", "UA min", "epsilon", "attack AUC", "95 % CI", "control"):
        table.add_column(col, justify="left" if col == "row" else "right")
    base = rows[0]["ua_mean"]
    for r in rows:
        c = r["control"]
        table.add_row(r["row"], f"{r['ua_mean']:.3f} ({100 * (r['ua_mean'] - base):+.1f})",
                      f"{r['ua_min']:.3f}", f"{r['epsilon']:.2f}" if r["epsilon"] else "-",
                      f"{r['auc']:.3f}", f"[{r['ci'][0]:.2f}, {r['ci'][1]:.2f}]",
                      f"{c['mean']:.2f} ± {c['std']:.2f}" if c else "-")
    console.print(table)
    plot(rows, out / "privacy_utility.png")
    console.print(f"wrote {out / 'privacy_utility.json'} and {out / 'privacy_utility.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
