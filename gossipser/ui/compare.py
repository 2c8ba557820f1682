"""The convergence comparison as data: the methods compared, one run's record, the summary
over seeds, and its tables (rich, Markdown, CSV). `compare_plots` draws the figures and
scripts/compare_convergence.py runs the methods.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich import box
from rich.table import Table

from gossipser.errors import ConfigError
from gossipser.gossip.settings import GossipConfig

COLUMNS = ("method", "seed", "round", "ua_mean", "ua_min", "ua_max", "wa_mean", "macro_f1_mean",
           "ua_avg_model", "wa_avg_model", "consensus_distance", "bytes_per_peer",
           "bytes_max_node", "bytes_total", "wall_s", "virtual_s")
FAULTS = {"drop": 0.2, "churn": 0.1}
QUICK = {"rounds": 12, "eval_every": 2}
TARGET = 0.95  # "converged": the deployed UA reaches this share of the centralized UA


@dataclass(frozen=True)
class Method:
    name: str
    algorithm: str  # "centralized" or a gossipser algorithm
    topology: str = "auto"
    faults: bool = False

    @property
    def is_gossip(self) -> bool:
        return self.algorithm in ("dpsgd", "gossip-learning", "gradient-tracking", "push-sum")

    @property
    def deployed(self) -> str:
        """The results column of the model a user would deploy."""
        return "ua_avg_model" if self.algorithm == "fedavg" else "ua_mean"

    @property
    def deployed_text(self) -> str:
        return {"centralized": "the one model", "fedavg": "server's global model"}.get(
            self.algorithm, "each peer's own model")


BASE = (
    # local and fedavg ignore the peer graph; "complete" only keeps them runnable for any N
    Method("centralized", "centralized"), Method("local", "local", "complete"),
    Method("fedavg", "fedavg", "complete"),
    Method("dpsgd-ring", "dpsgd", "ring"), Method("dpsgd-torus", "dpsgd", "torus"),
    Method("dpsgd-regular4", "dpsgd", "regular:4"),
    Method("dpsgd-complete", "dpsgd", "complete"),
    Method("gossip-learning", "gossip-learning", "regular:4"),
    Method("tracking-regular4", "gradient-tracking", "regular:4"),
)
# on request (--methods): push-sum, asynchronous under the virtual clock
EXTRA = (Method("push-sum", "push-sum", "regular:4"),)
CATALOG = {m.name: m for m in BASE + EXTRA + tuple(
    dataclasses.replace(m, name=f"{m.name}+faults", faults=True) for m in BASE + EXTRA
    if m.is_gossip)}


@dataclass
class Run:
    method: str
    seed: int
    rows: list[dict]  # results.csv rows, one per evaluated round
    final: dict  # deployed ua/wa/f1, ua_avg_model, bytes, ua_per_peer, confusion_avg_model
    wall_s: float


def select_methods(spec: str | None, faults: bool) -> list[Method]:
    names = spec.split(",") if spec else [m.name for m in BASE]
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; known: {', '.join(CATALOG)}")
    if faults:
        names += [f"{n}+faults" for n in names if CATALOG[n].is_gossip and not CATALOG[n].faults]
    return [CATALOG[n] for n in dict.fromkeys(names)]


# summarising ---------------------------------------------------------------------------------
def rounds_to_target(run: Run, deployed: str, target: float) -> int | None:
    return next((int(r["round"]) for r in run.rows if r[deployed] >= target), None)


def pm(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """'41.2 ± 1.3' (mean ± sample std over seeds); just the mean for one seed."""
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def summarize(methods: Sequence[Method], runs: dict[str, list[Run]]) -> list[dict]:
    """Per method: final scores over seeds, rounds to 95 % of centralized UA, bytes."""
    central = {r.seed: r.final["ua"] for r in runs.get("centralized", [])}
    fedavg = [r.final["ua"] for r in runs.get("fedavg", [])]
    c_mean = float(np.mean(list(central.values()))) if central else None
    out = []
    for m in methods:
        rs = runs.get(m.name)
        if not rs:
            continue
        ua = [r.final["ua"] for r in rs]
        hit = [rounds_to_target(r, m.deployed, TARGET * central[r.seed])
               for r in rs if r.seed in central] if m.algorithm != "centralized" else []
        reached = [h for h in hit if h is not None]
        out.append({
            "method": m, "ua": ua, "wa": [r.final["wa"] for r in rs],
            "macro_f1": [r.final["macro_f1"] for r in rs],
            "ua_avg_model": [r.final["ua_avg_model"] for r in rs],
            "gap_central": (100 * (np.mean(ua) - c_mean)
                            if c_mean is not None and m.name != "centralized" else None),
            "gap_fedavg": (100 * (np.mean(ua) - np.mean(fedavg))
                           if fedavg and m.name != "fedavg" else None),
            "rounds95": float(np.mean(reached)) if reached else None,
            "reached": (len(reached), len(hit)),
            "rounds95_text": ("reference" if m.algorithm == "centralized" else
                              "n/a" if not central else "—" if not reached else
                              f"{np.mean(reached):.1f}" + (
                                  f" ({len(reached)}/{len(hit)} seeds)"
                                  if len(reached) < len(hit) else "")),
            "mb_total": float(np.mean([r.final["bytes_total"] for r in rs])) / 1e6,
            "mb_max": float(np.mean([r.final["bytes_max_node"] for r in rs])) / 1e6,
        })
    return out


HEADER = ("method", "deployed model", "UA (%)", "WA (%)", "macro-F1 (%)",
          "UA averaged model (%)", "Δ UA vs centralized (pts)", "Δ UA vs FedAvg (pts)",
          f"rounds to {TARGET:.0%} of centralized UA", "total sent (MB)", "busiest node (MB)")


def mb(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}"


def table_rows(summary: list[dict]) -> list[list[str]]:
    def signed(v: float | None) -> str:
        return "—" if v is None else f"{v:+.1f}"

    return [[s["method"].name, s["method"].deployed_text, pm(s["ua"]), pm(s["wa"]),
             pm(s["macro_f1"]),
             pm(s["ua_avg_model"]) if s["method"].algorithm != "centralized" else "—",
             signed(s["gap_central"]), signed(s["gap_fedavg"]), s["rounds95_text"],
             mb(s["mb_total"]), mb(s["mb_max"])] for s in summary]


def findings(summary: list[dict], cfg: GossipConfig) -> str:
    """A short paragraph that states the main numbers."""
    by = {s["method"].name: s for s in summary}
    mean = {k: 100 * float(np.mean(s["ua"])) for k, s in by.items()}
    text = []
    if "centralized" in by:
        text.append(f"Centralized training reaches a UA of {mean['centralized']:.1f} %.")
    if "local" in by:
        text.append(f"Local-only training (no communication) reaches {mean['local']:.1f} %.")
    if "fedavg" in by:
        text.append(f"FedAvg's global model reaches {mean['fedavg']:.1f} % with a server that "
                    f"sends {mb(by['fedavg']['mb_max'])} MB.")
    gossip = [s for s in summary if s["method"].is_gossip and not s["method"].faults]
    if gossip:
        best = max(gossip, key=lambda s: np.mean(s["ua"]))
        name = best["method"].name
        gaps = [f"level with {what}" if abs(best[k]) < 0.05 else
                f"{abs(best[k]):.1f} points {'below' if best[k] < 0 else 'above'} {what}"
                for k, what in (("gap_central", "centralized"), ("gap_fedavg", "FedAvg"))
                if best[k] is not None]
        text.append(f"The best gossip method, {name}, reaches {mean[name]:.1f} % (mean of the "
                    f"peers' own models; averaged model {100 * np.mean(best['ua_avg_model']):.1f}"
                    f" %)" + (": " + " and ".join(gaps) if gaps else "") + ".")
        dpsgd = [s for s in gossip if s["method"].algorithm == "dpsgd"]
        fast = [s for s in dpsgd if s["rounds95"] is not None]
        if fast:
            f = min(fast, key=lambda s: s["rounds95"])
            text.append(f"The fastest topology is {f['method'].topology} ({f['method'].name}), "
                        f"at {TARGET:.0%} of the centralized UA after {f['rounds95']:.1f} rounds "
                        f"(mean over the {f['reached'][0]} of {f['reached'][1]} seeds that reach "
                        "it).")
        elif dpsgd and "centralized" in by:
            top = max(dpsgd, key=lambda s: np.mean(s["ua"]))
            text.append(f"No D-PSGD topology reaches {TARGET:.0%} of the centralized UA within "
                        f"{cfg.rounds} rounds; the best final UA among topologies is "
                        f"{top['method'].topology}'s ({mean[top['method'].name]:.1f} %).")
        low = min(gossip, key=lambda s: s["mb_max"])
        text.append(f"The most frugal gossip method, {low['method'].name}, has its busiest node "
                    f"send {mb(low['mb_max'])} MB"
                    + (f" against {mb(by['fedavg']['mb_max'])} MB for the FedAvg server"
                       if "fedavg" in by else "") + ".")
    pairs = [(s["method"].name, s["method"].name.removesuffix("+faults")) for s in summary
             if s["method"].faults]
    hurt = [(n, mean[n] - mean[b]) for n, b in pairs if b in mean]
    if hurt:
        text.append(f"With {FAULTS['drop']:.0%} message loss and {FAULTS['churn']:.0%} churn the "
                    "UA changes by " + ", ".join(f"{d:+.1f} points ({n})" for n, d in hurt) + ".")
    return " ".join(text)


# output --------------------------------------------------------------------------------------
def write_csv(path: Path, runs: dict[str, list[Run]]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
        w.writeheader()
        for rs in runs.values():
            for run in rs:
                for row in run.rows:
                    w.writerow({k: f"{v:.6g}" if isinstance(v, float) else v
                                for k, v in row.items() if k in COLUMNS})


def write_markdown(path: Path, *, summary: list[dict], context: dict, skipped: dict[str, str],
                   cfg: GossipConfig) -> None:
    rows = table_rows(summary)
    lines = [
        f"# Convergence: gossip learning against centralized, local-only and FedAvg "
        f"({context['corpus']})", "",
        f"{context['describe']}", "",
        "| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 9) + "|",
        *("| " + " | ".join(r) + " |" for r in rows), "",
        findings(summary, cfg), "",
        "Notes:", "",
        f"- Final values after round {cfg.rounds}; " + (
            f"mean ± sample standard deviation over seeds {context['seeds']}."
            if context["n_seeds"] > 1 else f"one seed ({context['seeds']}), so no spread."),
        "- UA of *each peer's own model*: the mean over peers of every peer's model on the "
        "held-out speakers (gossip and local-only). FedAvg's UA, WA and macro-F1 are those of "
        "the server's global model, the model it deploys. The *averaged model* is the plain "
        "mean of all peers' parameters (for FedAvg: the global model).",
        f"- Rounds to {TARGET:.0%}: the first evaluated round whose deployed UA reaches "
        f"{TARGET:.0%} of the same seed's centralized UA, averaged over the seeds that reach "
        "it; — if none does.",
        "- Bytes are encoded wire frames sent, cumulative; the busiest node may be the FedAvg "
        "server. Total is over all nodes.",
        f"- Centralized training sends no model, but it needs the raw audio on one machine: "
        f"uploading the {context['train_files']} training files would move "
        f"{context['raw_mb']:.1f} MB (their size on disk).",
        f"- Centralized training runs {context['central_epochs']} epochs: "
        + (f"the same number of passes over the training data as {cfg.rounds} rounds x "
           f"{cfg.local_epochs:g} local epochs on every peer." if cfg.local_epochs is not None
           else f"each peer takes as many optimiser steps over {cfg.rounds} rounds "
                f"({context.get('local_steps', '?')} a round) as it does."),
    ]
    if any(m.endswith("+faults") for m in context["methods"]):
        lines.append(f"- `+faults`: each message is lost with probability {FAULTS['drop']}, each "
                     f"peer is offline for a round with probability {FAULTS['churn']}.")
    lines += [f"- {name} was not run: {why}" for name, why in skipped.items()]
    lines += ["", "Figures: ua_vs_round.png, ua_vs_bytes.png, consensus_vs_round.png, "
              "ua_spread_final.png, confusion_best_gossip.png.", ""]
    path.write_text("\n".join(lines))


def print_table(console, summary: list[dict]) -> None:
    """The summary.md table for a 120-column log: UA with its spread, the rest as means."""
    short = ("method", "UA %", "WA %", "F1 %", "avg UA %", "Δ cent.", "Δ FedAvg",
             f"rnd→{TARGET:.0%}", "MB total", "MB max")
    table = Table(title="final results (UA: mean ± std over seeds; FedAvg: global model)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, h in enumerate(short):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=True)
    for r in table_rows(summary):
        table.add_row(r[0], r[2].replace(" ± ", "±"),
                      *(c.split(" ")[0] for c in r[3:6]), *r[6:8],
                      r[8].replace(" seeds)", ")"), *r[9:])
    console.print(table)


# figures -------------------------------------------------------------------------------------
