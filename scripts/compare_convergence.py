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
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich import box
from rich.table import Table

from gossipser.cli.commands import gossip_config, load_data, resolve_test_speakers
from gossipser.cli.options import run_configs
from gossipser.config import read_toml
from gossipser.data.dataset import Dataset
from gossipser.errors import ConfigError, GossipserError, TopologyError
from gossipser.gossip.events import RoundFinished
from gossipser.gossip.plan import GossipConfig, RunSetup, setup_run
from gossipser.learn.centralized import train_centralized
from gossipser.learn.modelio import n_inputs
from gossipser.learn.models import ModelConfig, build_model, count_parameters
from gossipser.learn.pool import make_pool
from gossipser.learn.train import TrainConfig
from gossipser.sim.simulator import Simulator
from gossipser.ui.report import error_line, make_console

COLUMNS = ("method", "seed", "round", "ua_mean", "ua_min", "ua_max", "wa_mean", "macro_f1_mean",
           "ua_avg_model", "wa_avg_model", "consensus_distance", "bytes_per_peer",
           "bytes_max_node", "bytes_total", "wall_s")
FAULTS = {"drop": 0.2, "churn": 0.1}
QUICK = {"rounds": 12, "eval_every": 2}
MARKERS = {"local": "x", "fedavg": "s", "dpsgd-ring": "o", "dpsgd-torus": "v",
           "dpsgd-regular4": "^", "dpsgd-complete": "D", "gossip-learning": "P"}
GUIDES = ("chance", "raw audio")  # legend entries that are guides, not results
TARGET = 0.95  # "converged": the deployed UA reaches this share of the centralized UA


@dataclass(frozen=True)
class Method:
    name: str
    algorithm: str  # "centralized" or a gossipser algorithm
    topology: str = "ring"
    faults: bool = False

    @property
    def is_gossip(self) -> bool:
        return self.algorithm in ("dpsgd", "gossip-learning")

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
)
CATALOG = {m.name: m for m in BASE + tuple(
    dataclasses.replace(m, name=f"{m.name}+faults", faults=True) for m in BASE if m.is_gossip)}
# Okabe-Ito (colour-blind safe); a method with faults gets its base colour lightened
COLOURS = {"centralized": "#000000", "local": "#8c8c8c", "fedavg": "#D55E00",
           "dpsgd-ring": "#0072B2", "dpsgd-torus": "#56B4E9", "dpsgd-regular4": "#009E73",
           "dpsgd-complete": "#CC79A7", "gossip-learning": "#E69F00"}
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "grid.linewidth": 0.6, "savefig.dpi": 200, "figure.dpi": 100}


@dataclass
class Run:
    method: str
    seed: int
    rows: list[dict]  # results.csv rows, one per evaluated round
    final: dict  # deployed ua/wa/f1, ua_avg_model, bytes, ua_per_peer, confusion_avg_model
    wall_s: float


def colour(name: str) -> str:
    base = name.removesuffix("+faults")
    c = np.array(matplotlib.colors.to_rgb(COLOURS[base]))
    return matplotlib.colors.to_hex(c + 0.45 * (1 - c) if base != name else c)


def select_methods(spec: str | None, faults: bool) -> list[Method]:
    names = spec.split(",") if spec else [m.name for m in BASE]
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; known: {', '.join(CATALOG)}")
    if faults:
        names += [f"{n}+faults" for n in names if CATALOG[n].is_gossip and not CATALOG[n].faults]
    return [CATALOG[n] for n in dict.fromkeys(names)]


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
        summary = Simulator(setup, pool, listeners=[collect]).run()
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
        f"- Centralized training runs {context['central_epochs']} epochs: the same number of "
        f"passes over the training data as {cfg.rounds} rounds x {cfg.local_epochs:g} local "
        "epochs on every peer.",
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
def curve(rs: list[Run], key: str, x_key: str = "round") -> tuple[np.ndarray, ...]:
    """(x mean, y mean, y min, y max) over seeds, aligned by evaluated round."""
    n = min(len(r.rows) for r in rs)
    x = np.array([[float(row[x_key]) for row in r.rows[:n]] for r in rs])
    y = np.array([[float(row[key]) for row in r.rows[:n]] for r in rs])
    return x.mean(0), y.mean(0), y.min(0), y.max(0)


def panels(methods: Sequence[Method], runs: dict) -> list[tuple[str, list[Method]]]:
    """One panel, or two with --faults: fault-free runs, then the faulty ones beside the
    references (centralized, local, FedAvg)."""
    done = [m for m in methods if m.name in runs]
    faulty = [m for m in done if m.faults]
    clean = [m for m in done if not m.faults]
    if not faulty:
        return [("", clean)]
    return [("no faults", clean),
            (f"{FAULTS['drop']:.0%} message loss, {FAULTS['churn']:.0%} churn",
             [m for m in clean if not m.is_gossip] + faulty)]


def _line(ax, rs: list[Run], m: Method, key: str, *, scale: float = 100.0,
          x_key: str = "round", floor: float | None = None) -> None:
    x, y, lo, hi = curve(rs, key, x_key)
    if x_key != "round":
        x = x / 1e6
    if floor is not None:
        y, lo, hi = (np.maximum(v, floor) for v in (y, lo, hi))
    ls = "--" if m.faults else ("-." if m.algorithm == "local" else "-")
    # markers tell apart curves that coincide (D-PSGD on a complete graph is FedAvg with
    # equal weights) and survive black-and-white printing
    ax.plot(x, y * scale, color=colour(m.name), ls=ls, lw=1.5, label=m.name,
            marker=MARKERS[m.name.removesuffix("+faults")], ms=4 if len(x) <= 15 else 0,
            mfc="none" if m.algorithm == "fedavg" else colour(m.name), mew=1.1)
    if len(rs) > 1:
        ax.fill_between(x, lo * scale, hi * scale, color=colour(m.name), alpha=0.15, lw=0)


def _reference(ax, rs: list[Run], m: Method, *, label: str, target: bool = False) -> None:
    ua = np.array([r.final["ua"] for r in rs]) * 100
    spread = f" ({ua.min():.1f}-{ua.max():.1f} shaded)" if len(ua) > 1 else ""
    ax.axhline(ua.mean(), color=colour(m.name), ls=(0, (5, 2)), lw=1.3,
               label=f"{label}: {ua.mean():.1f} %{spread}")
    if len(ua) > 1:
        ax.axhspan(ua.min(), ua.max(), color=colour(m.name), alpha=0.06, lw=0)
    if target:
        ax.axhline(TARGET * ua.mean(), color=colour(m.name), ls=":", lw=0.9,
                   label=f"{TARGET:.0%} of centralized")


def _figure(n_panels: int, width: float = 4.4) -> tuple[Figure, list]:
    fig = Figure(figsize=(max(6.0, width * n_panels + 0.8), 4.4), layout="constrained")
    axes = fig.subplots(1, n_panels, sharey=True, squeeze=False)[0]
    return fig, list(axes)


def _finish(fig: Figure, axes, path: Path, title: str, subtitle: str, xlabel: str,
            ylabel: str, *, integer_x: bool = False) -> None:
    """Labels, one legend below all panels (guides such as 'chance' last), save."""
    handles: dict[str, object] = {}
    for ax in axes:
        ax.set_xlabel(xlabel)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    axes[0].set_ylabel(ylabel)
    order = sorted(handles, key=lambda k: k.startswith(GUIDES))
    width = fig.get_figwidth()
    sub = textwrap.fill(subtitle, width=int(15 * width))
    fig.suptitle(f"{title}\n{sub}" if subtitle else title, x=0.01, ha="left", fontsize=9.5,
                 linespacing=1.4)
    fig.legend([handles[k] for k in order], order, loc="outside lower center", frameon=False,
               ncols=min(len(order), 2 if width < 7 else 3 if width < 9.5 else 4))
    fig.savefig(path, bbox_inches="tight", pad_inches=0.06)  # nothing clipped


def plot_ua_vs_round(path: Path, methods, runs, context) -> None:
    groups = panels(methods, runs)
    fig, axes = _figure(len(groups))
    for ax, (name, ms) in zip(axes, groups, strict=True):
        for m in ms:
            if m.algorithm == "centralized":
                _reference(ax, runs[m.name], m, label=f"centralized ({context['central_epochs']}"
                           " epochs)", target=True)
            else:
                _line(ax, runs[m.name], m, m.deployed)
        ax.axhline(100 / context["n_classes"], color="0.6", lw=0.8, ls=":", label="chance")
        ax.set_title(name, fontsize=9)
    _finish(fig, axes, path, "UA on held-out speakers against communication rounds",
            f"{context['corpus']}, {context['peers']} peers; mean over {context['n_seeds']} "
            "seed(s)" + (", min-max shaded" if context["n_seeds"] > 1 else "")
            + "; FedAvg: global model, others: mean of the peers' own models",
            "communication round", "UA of the deployed model (%)", integer_x=True)


def plot_ua_vs_bytes(path: Path, methods, runs, context) -> None:
    groups = panels(methods, runs)
    fig, axes = _figure(len(groups))
    raw = context["raw_mb"] / context["peers"]
    for ax, (name, ms) in zip(axes, groups, strict=True):
        for m in ms:
            if m.algorithm == "centralized":
                _reference(ax, runs[m.name], m, label="centralized")
            elif m.algorithm == "local":
                _reference(ax, runs[m.name], m, label="local (nothing sent)")
            else:
                _line(ax, runs[m.name], m, m.deployed, x_key="bytes_per_peer")
        ax.axvline(raw, color="0.35", lw=1.0, ls=(0, (1, 2)),
                   label=f"raw audio per peer ({raw:.1f} MB, the centralized upload)")
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
    _finish(fig, axes, path, "UA against communication",
            "bytes of encoded model frames sent by a peer, cumulative; for FedAvg the clients' "
            "uploads (the server's sends are in summary.md)",
            "MB sent per peer (mean over peers, log scale)", "UA of the deployed model (%)")


def plot_consensus(path: Path, methods, runs, context) -> None:
    groups = [(n, [m for m in ms if m.algorithm != "centralized"])
              for n, ms in panels(methods, runs)]
    values = np.concatenate([[float(row["consensus_distance"]) for r in runs[m.name]
                              for row in r.rows] for _, ms in groups for m in ms] or [[1.0]])
    # complete graphs average exactly: show float round-off (~1e-20) as "below the floor"
    floor = 10 ** np.floor(np.log10(max(values.max(), 1e-30) * 1e-7))
    fig, axes = _figure(len(groups))
    for ax, (name, ms) in zip(axes, groups, strict=True):
        for m in ms:
            _line(ax, runs[m.name], m, "consensus_distance", scale=1.0, floor=floor)
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
    note = (f"; values below {floor:.0e} (exact consensus up to round-off) are drawn at it"
            if (values < floor).any() else "")
    _finish(fig, axes, path, "Disagreement between the peers' models",
            f"mean squared distance of the trained parameters to their average{note}",
            "communication round",
            r"consensus distance $\frac{1}{n}\sum_i\|\theta_i-\bar\theta\|^2$",
            integer_x=True)


def plot_spread(path: Path, methods, runs, context) -> None:
    shown = [m for m in methods if m.name in runs and m.algorithm != "centralized"]
    fig = Figure(figsize=(max(6.0, 0.75 * len(shown) + 1.5), 4.4), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # jitter of the strip plot only
    for i, m in enumerate(shown):
        ua = 100 * np.concatenate([r.final["ua_per_peer"] for r in runs[m.name]])
        box = ax.boxplot([ua], positions=[i], widths=0.55, whis=(0, 100), showfliers=False,
                         patch_artist=True, medianprops={"color": "black", "lw": 1.2})
        box["boxes"][0].set(facecolor=colour(m.name), alpha=0.35, edgecolor=colour(m.name))
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(ua)), ua, s=10, color=colour(m.name),
                   zorder=3, lw=0)
        avg = 100 * np.mean([r.final["ua_avg_model"] for r in runs[m.name]])
        ax.scatter([i], [avg], marker="D", s=36, color="white", edgecolor="black", zorder=4,
                   label="averaged model (FedAvg: global model)" if i == 0 else None)
    if "centralized" in runs:
        _reference(ax, runs["centralized"], CATALOG["centralized"], label="centralized")
    ax.axhline(100 / context["n_classes"], color="0.6", lw=0.8, ls=":", label="chance")
    ax.set_xticks(range(len(shown)), [m.name for m in shown], rotation=30, ha="right")
    ax.grid(axis="x", visible=False)
    _finish(fig, [ax], path, f"UA of each peer's own model after round {context['rounds']}",
            f"{context['peers']} peers x {context['n_seeds']} seed(s); box: quartiles, whiskers: "
            "range; for FedAvg the clients' locally updated models", "", "UA per peer (%)")


def plot_confusion(path: Path, methods, runs, context) -> None:
    gossip = [m for m in methods if m.is_gossip and m.name in runs]
    gossip = [m for m in gossip if not m.faults] or gossip
    fig = Figure(figsize=(5.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    if not gossip:  # still a valid figure, saying why it is empty
        ax.text(0.5, 0.5, "no gossip method was run", ha="center", va="center")
        ax.set_axis_off()
        fig.savefig(path)
        return
    best = max(gossip, key=lambda m: np.mean([r.final["ua_avg_model"] for r in runs[m.name]]))
    cm = np.sum([np.asarray(r.final["confusion_avg_model"]) for r in runs[best.name]], axis=0)
    rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    classes = context["classes"]
    small = len(classes) > 5
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rate[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center",
                    fontsize=6 if small else 8, color="white" if rate[i, j] > 0.55 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.grid(False)
    ax.spines[:].set_visible(True)
    ax.set_xlabel("predicted emotion")
    ax.set_ylabel("true emotion")
    ua = 100 * np.mean([r.final["ua_avg_model"] for r in runs[best.name]])
    ax.set_title(f"Averaged model of {best.name} (best gossip run), UA {ua:.1f} %\n"
                 f"share of each true class (counts), {len(runs[best.name])} seed(s) pooled",
                 loc="left", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label="share of the true class")
    fig.savefig(path)


FIGURES = {"ua_vs_round.png": plot_ua_vs_round, "ua_vs_bytes.png": plot_ua_vs_bytes,
           "consensus_vs_round.png": plot_consensus, "ua_spread_final.png": plot_spread,
           "confusion_best_gossip.png": plot_confusion}


# command line --------------------------------------------------------------------------------
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
            except TopologyError as exc:
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
    base = GossipConfig(rounds=context["rounds"],
                        local_epochs=context["central_epochs"] / context["rounds"])
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
    base = gossip_config(args, doc)
    methods = select_methods(args.methods, args.faults)
    ds = load_data(args, doc, features, console)
    test = resolve_test_speakers(args.test_speakers, doc, ds)
    # the centralized model sees the training set as often as the peers do in total
    central_epochs = max(1, round(base.rounds * base.local_epochs))
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
        "methods": [m.name for m in methods],
        "describe": (
            f"{ds.corpus.name} at {ds.corpus.root}: {len(split.train_idx)} training utterances "
            f"on {split.n_peers} peers (partition {base.partition}), {len(split.test_idx)} test "
            f"utterances from speakers {', '.join(test)}; {len(ds.classes)} classes. Model "
            f"{model_cfg.kind} (width {model_cfg.width}, {n_params:,} parameters), "
            f"{base.rounds} rounds of {base.local_epochs:g} local epoch(s), evaluated every "
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
    # as the CLI: small models gain nothing from a second torch thread; processes give speed
    torch.set_num_threads(int(os.environ.get("GOSSIPSER_TORCH_THREADS", "1")))
    try:
        return run_all(args, make_console())
    except GossipserError as exc:
        error_line(str(exc))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
