"""Figures of the convergence comparison (matplotlib, colour-blind-safe palette): UA against
rounds and bytes, consensus distance, per-peer spread and the confusion matrix.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gossipser.ui.compare import CATALOG, FAULTS, TARGET, Method, Run

MARKERS = {"local": "x", "fedavg": "s", "dpsgd-ring": "o", "dpsgd-torus": "v",
           "dpsgd-regular4": "^", "dpsgd-complete": "D", "gossip-learning": "P",
           "tracking-regular4": "*", "push-sum": "h"}
GUIDES = ("chance", "raw audio")  # legend entries that are guides, not results
# Okabe-Ito (colour-blind safe); a method with faults gets its base colour lightened
COLOURS = {"centralized": "#000000", "local": "#8c8c8c", "fedavg": "#D55E00",
           "dpsgd-ring": "#0072B2", "dpsgd-torus": "#56B4E9", "dpsgd-regular4": "#009E73",
           "dpsgd-complete": "#CC79A7", "gossip-learning": "#E69F00",
           "tracking-regular4": "#882255", "push-sum": "#44AA99"}
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "grid.linewidth": 0.6, "savefig.dpi": 200, "figure.dpi": 100}



def colour(name: str) -> str:
    base = name.removesuffix("+faults")
    c = np.array(matplotlib.colors.to_rgb(COLOURS[base]))
    return matplotlib.colors.to_hex(c + 0.45 * (1 - c) if base != name else c)


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
    if x_key.startswith("bytes"):
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


def _against(ax, ms: Sequence[Method], runs: dict, x_key: str) -> None:
    """Each method's deployed UA against `x_key` (bytes, virtual seconds); centralized and
    local-only, which have no such axis, as horizontal references."""
    for m in ms:
        if m.algorithm == "centralized":
            _reference(ax, runs[m.name], m, label="centralized")
        elif m.algorithm == "local":
            _reference(ax, runs[m.name], m, label="local (nothing sent)")
        else:
            _line(ax, runs[m.name], m, m.deployed, x_key=x_key)


def plot_ua_vs_bytes(path: Path, methods, runs, context) -> None:
    groups = panels(methods, runs)
    fig, axes = _figure(len(groups))
    raw = context["raw_mb"] / context["peers"]
    for ax, (name, ms) in zip(axes, groups, strict=True):
        _against(ax, ms, runs, "bytes_per_peer")
        ax.axvline(raw, color="0.35", lw=1.0, ls=(0, (1, 2)),
                   label=f"raw audio per peer ({raw:.1f} MB, the centralized upload)")
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
    _finish(fig, axes, path, "UA against communication",
            "bytes of encoded model frames sent by a peer, cumulative; for FedAvg the clients' "
            "uploads (the server's sends are in summary.md)",
            "MB sent per peer (mean over peers, log scale)", "UA of the deployed model (%)")


def plot_ua_vs_time(path: Path, methods, runs, context) -> None:
    """Virtual clock: UA against virtual seconds, synchronous and asynchronous algorithms on
    the same devices and links."""
    groups = panels(methods, runs)
    fig, axes = _figure(len(groups))
    for ax, (name, ms) in zip(axes, groups, strict=True):
        _against(ax, ms, runs, "virtual_s")
        ax.axhline(100 / context["n_classes"], color="0.6", lw=0.8, ls=":", label="chance")
        ax.set_title(name, fontsize=9)
    _finish(fig, axes, path, "UA against virtual time",
            f"device speeds {context.get('device_speed', 'equal')}, a step "
            f"{context.get('step_time', '')} s at speed 1, links {context.get('latency', '')} s "
            f"+ bytes / {context.get('bandwidth', 0) / 1e6:g} MB/s; the same total local "
            "rounds for every method; D-PSGD and gradient tracking wait for their neighbours",
            "virtual seconds", "UA of the deployed model (%)")


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
