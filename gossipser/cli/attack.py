"""`gossipser attack --run OUT`: what a simulated run's messages reveal about the speakers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

from gossipser.cli.commands import load_data
from gossipser.cli.options import NoFlags, run_configs
from gossipser.config import build
from gossipser.errors import ConfigError
from gossipser.gossip.plan import setup_run
from gossipser.gossip.settings import GossipConfig
from gossipser.privacy.attack import AttackConfig, run_attack
from gossipser.privacy.attributes import default_attributes, peer_labels, read_attribute_file
from gossipser.privacy.record import FILE, MessageLog
from gossipser.ui.report import make_console

ADVERSARY = ("an honest-but-curious neighbour of each target (the one that received most of "
             "its recorded messages; the FedAvg server for fedavg), or an eavesdropper on "
             "that link, which sees the same frames")


def _run_summary(run: Path) -> dict:
    path = run / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror}); --run takes a "
                          "`gossipser simulate --out` folder") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not JSON ({exc})") from None
    if not isinstance(summary, dict) or "config" not in summary or "data" not in summary:
        raise ConfigError(f"{path}: not the summary of a `gossipser simulate` run of this "
                          "version (no config or data); run it again")
    return summary


def cmd_attack(args: Any) -> int:
    console = make_console()
    run = Path(args.run)
    summary = _run_summary(run)
    log = MessageLog.load(run / FILE)
    cfg = summary["config"]
    data = summary["data"]
    doc = {"data": {"path": data["path"], "corpus": data["corpus"],
                    "emotions": data.get("emotion_set") or data["emotions"],
                    "iemocap_improvised_only": bool(data.get("iemocap_improvised_only"))},
           "features": cfg["features"], "model": cfg["model"], "train": cfg["train"]}
    features, model, train = run_configs(NoFlags(), doc)
    gossip = build(GossipConfig, cfg["gossip"], {"workers": args.workers}, "gossip")
    ds = load_data(NoFlags(), doc, features, console)
    setup = setup_run(ds, cfg=gossip, model=model, train=train,
                      test_speakers=tuple(summary["test_speakers"]), seed=int(summary["seed"]))
    if set(log.senders()) - set(range(setup.n_peers)) or not log.names <= set(setup.init):
        raise ConfigError(f"{run / FILE}: the recorded messages do not match this run")
    if args.attribute_file:
        values, source = read_attribute_file(args.attribute_file), args.attribute_file
    else:
        values, source = default_attributes(ds)
    labels, classes, speakers = peer_labels(ds, setup.parts, values)
    console.print(f"attack: {len(log.senders())} peers recorded over {log.rounds} round(s); "
                  f"attribute {classes[0]}/{classes[1]} from {source}")
    acfg = AttackConfig(folds=args.folds, repeats=args.shadow_runs, seed=args.seed,
                        workers=args.workers)
    result = run_attack(setup, log, labels, acfg, progress=lambda s: console.print(s),
                        controls=args.controls)
    result = {**result, "attribute": {"classes": list(classes), "source": source,
                                      "positive": classes[1]},
              "adversary": ADVERSARY, "run": str(run), "algorithm": gossip.algorithm,
              "private_layers": sorted(setup.private), "epsilon": summary.get("epsilon_max"),
              "ua_mean": summary.get("final", {}).get("ua_mean"),
              "speakers": {int(p): speakers[p] for p in result["scores"]}}
    (run / "attack.json").write_text(json.dumps(result, indent=2) + "\n")
    console.print(_table(result))
    seen = ", ".join(f"{k}: {v:.2f}" for k, v in result["auc_by_rounds_seen"].items()
                     if not math.isnan(v))
    console.print(f"attack AUC by rounds seen: {seen}")
    if result["control_auc"]:
        c = result["control_auc"]
        console.print(f"control, the attribute shuffled over the peers {c['runs']} times: "
                      f"AUC {c['mean']:.2f} ± {c['std']:.2f} (chance is 0.5)")
    console.print(f"wrote {run / 'attack.json'}")
    return 0


def _table(result: dict) -> Table:
    a = result["attribute"]
    table = Table(title=f"attribute inference ({a['classes'][0]} vs {a['classes'][1]}), "
                  f"{result['targets']} targets", title_justify="left")
    # shadow AUC: the attacker's own cross-validation, per fold (a layer's: over all rounds)
    for name in ("layer", "AUC", "95 % CI", "balanced acc.", "shadow AUC"):
        table.add_column(name, justify="left" if name == "layer" else "right")
    chosen = " / ".join(dict.fromkeys(  # per fold: the layer and the rounds kept
        f"{g} ({f'rounds 1-{w}' if w > 1 else 'round 1'})"
        for g, w in zip(result["chosen_layers"], result["chosen_rounds"], strict=True)))
    rows = [(f"[bold]attack[/] (chose {chosen})", result)] + list(result["per_layer"].items())
    for name, r in rows:
        lo, hi = r["ci"]
        shadow = "/".join(f"{v:.2f}" for v in r.get("shadow_auc", []))
        table.add_row(name, f"{r['auc']:.3f}", f"[{lo:.2f}, {hi:.2f}]",
                      f"{r['balanced_accuracy']:.3f}", shadow)
    return table
