"""Handlers of the command-line commands: wire configs to the library and print results."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from gossipser.cli.options import data_config, gossip_config, run_configs
from gossipser.config import read_toml
from gossipser.data.corpora import parse_emotions
from gossipser.data.dataset import (
    Dataset,
    folds_by_session,
    load_dataset,
    session_groups,
    speaker_folds,
    split_by_speakers,
)
from gossipser.data.features import (
    FeatureConfig,
    add_deltas,
    default_cache_dir,
    model_inputs,
    normalize_group,
)
from gossipser.errors import ConfigError, CorpusError
from gossipser.learn.metrics import Scores, scores_from_confusion
from gossipser.ui.report import confusion_table, make_console, progress, scores_table

# 10 speakers: one held out, 9 peers (a 3x3 torus works too)
SYNTH_DEFAULT = {"speakers": 10, "per_emotion": 10, "seed": 0}


def synthetic_corpus(cache_dir: Path | None, console) -> Path:
    """The default corpus: generated once into the cache, then reused."""
    from gossipser.data.synth import SYNTH_VERSION, SynthConfig, make_speaker
    from gossipser.data.synth_corpus import SPEAKER_SHEET, write_corpus, write_speaker_sheet

    cfg = SynthConfig(**SYNTH_DEFAULT)
    root = (Path(cache_dir) if cache_dir else default_cache_dir()) / (
        f"synth-v{SYNTH_VERSION}-s{cfg.speakers}-p{cfg.per_emotion}-seed{cfg.seed}")
    done = root / ".complete"
    if not done.exists():
        with progress(console, "synthesising corpus", 1) as update:
            write_corpus(root, cfg, progress=update)
        done.write_text("ok\n")
    if not (root / SPEAKER_SHEET).exists():  # generated before the sheet existed
        write_speaker_sheet(root, [make_speaker(i, seed=cfg.seed)
                                   for i in range(1, cfg.speakers + 1)])
    return root


def data_choice(args: Any, doc: dict) -> dict[str, Any]:
    """Which part of which corpus a run reads: flags over the [data] section."""
    data = data_config(doc)
    return {"corpus": getattr(args, "corpus", None) or data.corpus,
            "emotions": getattr(args, "emotions", None) or data.emotions,
            "improvised_only": bool(getattr(args, "iemocap_improvised_only", None)
                                    or data.iemocap_improvised_only)}


def load_data(args: Any, doc: dict, features: FeatureConfig, console) -> Dataset:
    """The dataset named by --data / [data].path, or the synthetic default; prints what it did."""
    data = data_config(doc)
    cache_dir = getattr(args, "cache_dir", None) or data.cache_dir
    root = getattr(args, "data", None) or data.path
    if root is None:
        root = synthetic_corpus(cache_dir, console)
        console.print(f"corpus: synthetic (generated speech-like audio) at {root}")
    choice = data_choice(args, doc)
    with progress(console, "extracting MFCC", 1, every=500) as update:
        ds = load_dataset(root, **choice, features=features,
                          cache_dir=Path(cache_dir) if cache_dir else None, progress=update)
    c = ds.corpus
    how = "auto-detected" if choice["corpus"] == "auto" else "given"
    console.print(
        f"corpus: {c.name} ({how}) at {c.root}: {len(ds)} utterances, "
        f"{len(ds.speaker_ids())} speakers, {len(ds.classes)} classes ({', '.join(ds.classes)})"
        + ("; features from cache" if ds.from_cache else "")
    )
    merged = "".join(f" ({src} merged into {dst})" for src, dst in c.merged)
    console.print("found: " + ", ".join(f"{e} {n}" for e, n in c.counts().items()) + merged)
    if c.sessions:
        per = Counter(u.session for u in c.utterances)
        kinds = Counter(u.recording for u in c.utterances if u.recording)
        console.print("sessions: " + ", ".join(f"{s} {per[s]}" for s in c.sessions) + "; "
                      + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
                      + (" (improvised only)" if choice["improvised_only"] else ""))
    for note in (*c.notes, c.skipped_summary(), ds.failed_summary()):
        if note:
            console.print(f"[yellow]warning:[/] {escape(note)}")
    return ds


def default_test_speakers(ds: Dataset) -> tuple[str, ...]:
    """RAVDESS: actors 21-24 (the literature's split); a corpus with sessions (IEMOCAP): the
    last session; otherwise the last sixth of speakers."""
    spk = ds.speaker_ids()
    if ds.corpus.name == "ravdess" and {"21", "22", "23", "24"} <= set(spk):
        return ("21", "22", "23", "24")
    sessions = session_groups(ds)
    if len(sessions) >= 2:
        return list(sessions.values())[-1]
    return spk[-max(1, len(spk) // 6):]


def speaker_list(value: str | list) -> tuple[str, ...]:
    """'21,22' or ["21", 22] -> ('21', '22')."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(str(t).strip() for t in items if str(t).strip())


def resolve_test_speakers(flag: str | None, doc: dict, ds: Dataset) -> tuple[str, ...]:
    """The --test-speakers flag, else [data] test_speakers, else the corpus default."""
    value = flag or data_config(doc).test_speakers
    return speaker_list(value) if value else default_test_speakers(ds)


def cmd_synth(args: Any) -> int:
    from gossipser.data.synth import SynthConfig
    from gossipser.data.synth_corpus import write_corpus

    console = make_console()
    emotions = parse_emotions(args.emotions) if args.emotions else None
    per_speaker = None
    if args.utterances_per_speaker:
        try:
            lo, hi = (int(v) for v in args.utterances_per_speaker.split(":"))
        except ValueError:
            raise ConfigError(f"--utterances-per-speaker takes LO:HI, e.g. 2:80; got "
                              f"{args.utterances_per_speaker!r}") from None
        per_speaker = (lo, hi)
    cfg = SynthConfig(speakers=args.speakers, per_emotion=args.per_emotion, seed=args.seed,
                      per_speaker=per_speaker, **({"emotions": emotions} if emotions else {}))
    t0 = time.perf_counter()
    with progress(console, "synthesising", 1, every=200) as update:
        n = write_corpus(Path(args.out), cfg, progress=update)
    console.print(f"wrote {n} synthetic WAV files to {args.out} in "
                  f"{time.perf_counter() - t0:.1f} s (layout <emotion>/<speaker>_<n>.wav)")
    return 0


def cmd_train(args: Any) -> int:
    from gossipser.learn.centralized import train_centralized
    from gossipser.learn.modelio import save_model
    from gossipser.learn.models import build_model, count_parameters
    from gossipser.learn.settings import n_inputs

    console = make_console()
    doc = read_toml(getattr(args, "config", None))
    features, model_cfg, train_cfg = run_configs(args, doc)
    ds = load_data(args, doc, features, console)
    n_params = count_parameters(build_model(
        model_cfg, n_features=n_inputs(features, model_cfg), n_classes=len(ds.classes)))
    console.print(f"model: {model_cfg.kind}, {n_params:,} parameters; "
                  f"{train_cfg.epochs} epochs, batch {train_cfg.batch_size}, lr {train_cfg.lr}"
                  + (f"; DP-SGD, clip {train_cfg.dp_clip}, delta {train_cfg.dp_delta:g}"
                     if train_cfg.dp is not None else ""))
    if args.folds and args.test_speakers:
        raise ConfigError("give --folds or --test-speakers, not both")
    n_folds = args.folds
    sessions = session_groups(ds)
    if not n_folds and len(sessions) >= 2 and not (args.test_speakers
                                                    or data_config(doc).test_speakers):
        n_folds = len(sessions)  # the literature's protocol on IEMOCAP: leave-one-session-out
    if n_folds and folds_by_session(ds, n_folds):
        loso = " (leave-one-session-out)" if n_folds == len(sessions) else ""
        how = "" if args.folds else "; --test-speakers for a single split"
        console.print(f"{n_folds} folds by session{loso}{how}")
    test_sets = (speaker_folds(ds, n_folds) if n_folds
                 else [resolve_test_speakers(args.test_speakers, doc, ds)])
    out = Path(args.out)
    rows: list[tuple[str, Scores]] = []
    folds = []
    t0 = time.perf_counter()
    for k, test in enumerate(test_sets):
        train_idx, test_idx = split_by_speakers(ds, test)
        label = f"fold {k + 1}/{len(test_sets)}" if len(test_sets) > 1 else "test"
        console.print(f"{label}: {len(train_idx)} training utterances from "
                      f"{len(set(ds.speakers[train_idx]))} speakers; testing on speakers "
                      f"{', '.join(test)} ({len(test_idx)} utterances)")
        with progress(console, f"training {label}", train_cfg.epochs, every=10) as update:
            res = train_centralized(
                ds, train_idx, test_idx, model_cfg=model_cfg, train_cfg=train_cfg,
                seed=args.seed, on_epoch=lambda e, loss: update(e, info=f"loss {loss:.3f}"),
            )
        rows.append((label, res.scores))
        folds.append({"test_speakers": list(test), **res.scores.to_dict(),
                      "final_loss": res.losses[-1] if res.losses else None,
                      "optimizer_steps": res.steps, "samples_processed": res.samples,
                      **({"epsilon": res.epsilon, "noise_multiplier": res.noise}
                         if res.epsilon is not None else {})})
        save_model(out if len(test_sets) == 1 else out / f"fold{k + 1}", res.model,
                   classes=ds.classes, features=features, config=model_cfg,
                   extra={"test_speakers": list(test), "corpus": ds.corpus.name})
    total = scores_from_confusion(sum(s.confusion for _, s in rows))
    mean = {m: float(np.mean([getattr(s, m) for _, s in rows]))
            for m in ("ua", "wa", "macro_f1", "macro_precision", "macro_recall")}
    choice = data_choice(args, doc)
    summary = {
        "command": "train", "corpus": ds.corpus.name, "data": str(ds.corpus.root),
        "emotion_set": choice["emotions"],
        "iemocap_improvised_only": choice["improvised_only"],
        "model": model_cfg.kind, "parameters": n_params, "seed": args.seed,
        **mean, "classes": list(ds.classes), "confusion": total.confusion.tolist(),
        "folds": folds, "wall_s": round(time.perf_counter() - t0, 2),
        # what training spent, per fold (mean): comparable with simulate's totals
        "optimizer_steps": int(np.mean([f["optimizer_steps"] for f in folds])),
        "samples_processed": int(np.mean([f["samples_processed"] for f in folds])),
        "features": features.to_dict(), "model_config": model_cfg.to_dict(),
        "train_config": train_cfg.to_dict(), "skipped_files": len(ds.failed),
        **({"epsilon_max": max(f["epsilon"] for f in folds), "delta": train_cfg.dp_delta}
           if train_cfg.dp is not None else {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if len(rows) > 1:
        rows.append(("mean over folds", _mean_scores(rows, total)))
    console.print(scores_table(rows, title=f"{model_cfg.kind} on {ds.corpus.name}, "
                                           "speaker-independent"))
    console.print(confusion_table(total, ds.classes))
    if train_cfg.dp is not None:
        console.print(f"privacy: ({summary['epsilon_max']:.2f}, {train_cfg.dp_delta:g})-DP per "
                      "utterance (RDP accountant)")
    console.print(f"wrote {out / 'summary.json'} and the model ({summary['wall_s']} s)")
    return 0


def _mean_scores(rows: list[tuple[str, Scores]], total: Scores) -> Scores:
    m = {k: float(np.mean([getattr(s, k) for _, s in rows]))
         for k in ("wa", "ua", "macro_precision", "macro_recall", "macro_f1")}
    return Scores(confusion=total.confusion, **m)


def cmd_predict(args: Any) -> int:
    import torch

    from gossipser.data.features import MfccExtractor, prepare_signal
    from gossipser.learn.modelio import load_model
    from gossipser.learn.settings import speaker_groups
    from gossipser.learn.train import predict_proba

    saved = load_model(args.model)
    cfg = saved.features
    extractor = MfccExtractor(cfg)
    console = make_console()
    results, failures = [], 0
    for f in args.files:
        try:
            sig = prepare_signal(Path(f), cfg)
        except (CorpusError, OSError) as exc:
            failures += 1
            results.append({"file": f, "error": str(exc)})
            continue
        with torch.inference_mode():
            frames = add_deltas(extractor([sig])[0], cfg.deltas)
        results.append({"file": f, "frames": frames})
    good = [r for r in results if "frames" in r]
    frames = [r.pop("frames") for r in good]
    if cfg.cmvn and cfg.cmvn_scope == "speaker":
        # the model was trained on speaker-normalised features: the files given are taken to
        # be one speaker's recordings (the device's owner), normalised by their statistics
        frames, cfg = normalize_group(frames), dataclasses.replace(cfg, cmvn=False)
    if good:
        # the files are one speaker's: BatchNorm takes their statistics (bn_stats = speaker)
        probs_all = predict_proba(saved.model, model_inputs(frames, cfg, saved.config.view),
                                  groups=speaker_groups(saved.config, np.zeros(len(frames))))
    for r, probs in zip(good, probs_all if good else [], strict=True):
        r.update({
            "emotion": saved.classes[int(probs.argmax())],
            "probabilities": {c: round(float(p), 4) for c, p in zip(saved.classes, probs,
                                                                    strict=True)},
        })
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                console.print(f"{escape(r['file'])}: [red]error[/] {escape(r['error'])}",
                              soft_wrap=True)
                continue
            top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])
            probs = "  ".join(f"{c} {p:.2f}" for c, p in top)
            console.print(f"{escape(r['file'])}: [bold]{r['emotion']}[/]  ({probs})",
                          soft_wrap=True)
    return 1 if failures else 0


def cmd_simulate(args: Any) -> int:
    from gossipser.learn.workers import planned_workers, workers_for

    console = make_console()
    doc = read_toml(args.config)
    features, model_cfg, train_cfg = run_configs(args, doc)
    gcfg = gossip_config(args, doc)
    # the training processes import torch while this one loads the corpus and plans the run
    started = workers_for(getattr(args, "workers_started", None),
                          planned_workers(gcfg.workers, gcfg.backend, {}))
    try:
        return _simulate(args, console, doc, features, model_cfg, train_cfg, gcfg, started)
    finally:
        if started is not None:
            started.close(now=True)  # still ours only when the run never started


def _simulate(args, console, doc, features, model_cfg, train_cfg, gcfg, started) -> int:
    from gossipser.cli import started as clock
    from gossipser.gossip.plan import setup_run
    from gossipser.learn.pool_ray import open_pool
    from gossipser.sim.virtual import CSV_COLUMNS, make_simulator
    from gossipser.ui.display import LiveDisplay, MetricsWriter, PlainDisplay

    ds = load_data(args, doc, features, console)
    test = resolve_test_speakers(args.test_speakers, doc, ds)
    choice = data_choice(args, doc)
    setup = setup_run(ds, cfg=gcfg, model=model_cfg, train=train_cfg, test_speakers=test,
                      seed=args.seed)
    console.print(f"testing on speakers {', '.join(test)} ({len(setup.test_idx)} utterances)")
    out = Path(args.out)
    shards = [setup.shard(i) for i in range(setup.n_peers)]
    display = args.display or ("live" if console.is_terminal else "plain")
    listeners = [MetricsWriter(out / "metrics.csv", CSV_COLUMNS)]
    if display == "live":
        listeners.append(LiveDisplay(console))
    elif display == "plain":
        listeners.append(PlainDisplay(console))
    taps = []
    try:
        with open_pool(setup.pool_spec(), shards, workers=gcfg.workers, started=started,
                       backend=gcfg.backend, address=gcfg.ray_address) as pool:
            setup.build_with(pool)  # the initial models, where torch already is
            if args.record_messages:
                from gossipser.privacy.record import FILE, MessageLog

                taps.append(MessageLog(args.record_messages, setup.shared_model_names()))
            summary = make_simulator(setup, pool, listeners=listeners, taps=taps,
                                     started=clock.STARTED).run()
    finally:
        for listener in listeners:
            if hasattr(listener, "close"):
                listener.close()
    summary.update(config={"gossip": gcfg.to_dict(), "model": model_cfg.to_dict(),
                           "train": train_cfg.to_dict(), "features": features.to_dict()},
                   test_speakers=list(test),
                   data={"path": str(ds.corpus.root), "corpus": ds.corpus.name,
                         "emotions": list(ds.classes),
                         # what selected them (a named set may merge), for `gossipser attack`
                         "emotion_set": choice["emotions"],
                         "iemocap_improvised_only": choice["improvised_only"]})
    for log in taps:
        saved = log.save(out / FILE)
        console.print(f"recorded what the peers sent in rounds 1-{log.rounds} in "
                      f"{saved} (gossipser attack --run {out})")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    f = summary["final"]
    console.print(
        f"final: UA mean {f['ua_mean']:.3f} (min {f['ua_min']:.3f}, max {f['ua_max']:.3f}), "
        f"averaged model UA {f['ua_avg_model']:.3f}, WA mean {f['wa_mean']:.3f}, "
        f"macro-F1 mean {f['macro_f1_mean']:.3f}, consensus distance "
        f"{f['consensus_distance']:.3g}; {summary['bytes_sent_total'] / 1e6:.1f} MB sent "
        f"(busiest node {summary['bytes_sent_max_peer'] / 1e6:.1f} MB) in {summary['wall_s']} s"
        + (f"; DP-SGD: epsilon {summary['epsilon_max']:.2f} at delta {summary['delta']:g} spent "
           "by the worst peer" if "epsilon_max" in summary else ""))
    console.print(f"wrote {out / 'metrics.csv'} and {out / 'summary.json'}")
    return 0


def cmd_topology(args: Any) -> int:
    from gossipser.gossip.topology import build_topology, describe, save_topology

    console = make_console()
    graph = build_topology(args.spec, peers=args.peers, seed=args.seed)
    if args.action == "make":
        path = save_topology(graph, args.out)
        console.print(f"wrote {graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges "
                      f"to {path}")
        return 0
    d = describe(graph, args.mixing)
    console.print(f"topology {graph.graph.get('name', args.spec)}: {d['nodes']} nodes, "
                  f"{d['edges']} edges, degree {d['degree_min']}-{d['degree_max']} "
                  f"(mean {d['degree_mean']:.2f}), diameter {d['diameter']}")
    console.print(f"mixing {d['mixing']}: second largest eigenvalue modulus {d['slem']:.4f}, "
                  f"spectral gap {d['spectral_gap']:.4f}")
    return 0
