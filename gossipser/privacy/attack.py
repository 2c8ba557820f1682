"""Attribute inference on what peers send (after Feng et al. 2021, "Attribute inference
attack of speech emotion recognition in federated learning settings").

Threat model: an honest-but-curious neighbour keeps every model a target sends it; an
eavesdropper on the link between them sees the same frames (HMAC authenticates, it does not
encrypt). The FedAvg server is the neighbour of every client. What the adversary computes
from a target's round-r message is its update: the model minus the last one it saw from the
same target (round 1: minus the shared initial model, which every peer knows).

Method: shadow training, k-fold over the run's peers. For the targets of one fold, the
attacker runs the peers of the other folds as shadow peers (`shadow.py`) several times,
labels their updates with their known attribute, and fits one logistic regression per layer
and round (and one on all layers). A target's score is the mean logit over what its observer
saw in rounds 1 to K. The attacker picks the layer and K per fold by a cross-validation over its
shadow peers alone (a leak that sits in the first update is not diluted by the rounds after
it, and one that builds up over rounds is summed). AUC and balanced accuracy are over all
targets, with a bootstrap 95 % interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gossipser.errors import ConfigError
from gossipser.gossip.plan import RunSetup
from gossipser.gossip.private import layers_of
from gossipser.privacy.record import MessageLog
from gossipser.privacy.shadow import shadow_log

ALL = "all layers"


@dataclass(frozen=True)
class AttackConfig:
    folds: int = 2
    repeats: int = 4  # shadow runs per fold (each a new subsample of every shadow shard)
    fraction: float = 0.7  # share of a shadow peer's utterances in each shadow run
    bootstrap: int = 1000
    seed: int = 0
    workers: int = 2
    c: float = 1.0  # inverse L2 strength of the logistic regressions

    def __post_init__(self) -> None:
        if self.folds < 2 or self.repeats < 1 or not 0 < self.fraction <= 1:
            raise ConfigError("attack: need folds >= 2, repeats >= 1, 0 < fraction <= 1")


def observer_of(log: MessageLog, sender: int) -> int | None:
    """The node that received most of `sender`'s recorded messages (lowest id on a tie)."""
    counts: dict[int, int] = {}
    for (_, s), dests in log.receivers.items():
        if s == sender:
            for d in dests:
                counts[d] = counts.get(d, 0) + 1
    return min(counts, key=lambda d: (-counts[d], d)) if counts else None


def observed_updates(log: MessageLog, sender: int, init: dict | None,
                     ) -> dict[int, dict[str, np.ndarray]]:
    """round -> update the observer of `sender` computes (model minus the previous one it
    saw; without a shared init, round 1 is the model itself)."""
    who = observer_of(log, sender)
    out, last = {}, init
    for r in range(1, log.rounds + 1):
        if (r, sender) not in log.sent or who not in log.receivers.get((r, sender), []):
            continue
        sent = log.sent[(r, sender)]
        out[r] = {k: v - last[k] if last is not None and k in last else v
                  for k, v in sent.items()}
        last = sent
    return out


def _vector(update: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([np.ravel(update[k]) for k in names]).astype(np.float64)


def layer_names(log: MessageLog, order: list[str]) -> dict[str, list[str]]:
    """layer -> its parameter names in the log, in model order, plus ALL."""
    names = [k for k in order if k in log.names]
    groups = {layer: [k for k in names if k.rsplit(".", 1)[0] == layer or k == layer]
              for layer in layers_of(names)}
    return {**groups, ALL: names}


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties count half); NaN without both classes."""
    from scipy.stats import rankdata
    n1 = int((y == 1).sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((rankdata(s)[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _pooled_auc(y: np.ndarray, s: np.ndarray, fold: np.ndarray) -> float:
    """AUC within each fold, averaged with weights = its positive x negative pairs: each
    fold's scores come from its own classifier, whose offset must not mix into the ranking."""
    num = den = 0.0
    for f in np.unique(fold):
        m = fold == f
        pairs = int((y[m] == 1).sum()) * int((y[m] == 0).sum())
        if pairs:
            num += _auc(y[m], s[m]) * pairs
            den += pairs
    return num / den if den else float("nan")


def _scores(y: np.ndarray, s: np.ndarray, fold: np.ndarray, rng: np.random.Generator,
            n_boot: int) -> dict:
    """AUC, balanced accuracy (decision at logit 0) and a bootstrap 95 % interval of the
    AUC, resampling targets within their folds."""
    from sklearn.metrics import balanced_accuracy_score
    members = [np.flatnonzero(fold == f) for f in np.unique(fold)]
    boots = []
    for _ in range(n_boot):
        i = np.concatenate([rng.choice(m, size=len(m)) for m in members])
        v = _pooled_auc(y[i], s[i], fold[i])
        if not np.isnan(v):
            boots.append(v)
    lo, hi = (np.percentile(boots, [2.5, 97.5]).tolist() if boots else [float("nan")] * 2)
    return {"auc": _pooled_auc(y, s, fold),
            "balanced_accuracy": float(balanced_accuracy_score(y, s > 0)), "ci": [lo, hi]}


def _fit_predict(x_train, y_train, x_test, c: float, seed: int) -> np.ndarray:
    """Logit scores of `x_test` from a standardised L2 logistic regression (classes weighted
    equally: its intercept must not carry the shadow set's class balance into the scores)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000,
                                                               class_weight="balanced",
                                                               random_state=seed))
    model.fit(x_train, y_train)
    return model.decision_function(x_test)


def windows_of(rounds: int) -> list[int]:
    """The round windows the attacker may keep, as K for "rounds 1 to K"."""
    return [k for k in (1, 2, 3, 5, 10, 20, 50, 100, 200, 500) if k < rounds] + [rounds]


def _folds(labels: np.ndarray, k: int, seed: int) -> list[list[int]]:
    """Peers with a known label dealt into k folds, each class spread evenly."""
    rng = np.random.default_rng([seed, 43])
    folds: list[list[int]] = [[] for _ in range(k)]
    turn = 0
    for cls in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == cls)).tolist()
        for p in members:
            folds[turn % k].append(int(p))
            turn += 1
    return [sorted(f) for f in folds]


Progress = Callable[[str], None]


@dataclass
class _Fold:
    """One fold's material: shadow updates (round -> [(peer, shadow run, update)]) and the
    targets' (target -> round -> update)."""

    targets: list[int]
    shadow: dict[int, list[tuple[int, int, dict]]]
    seen: dict[int, dict[int, dict]]


def _collect(setup: RunSetup, log: MessageLog, folds: list[list[int]], cfg: AttackConfig,
             progress: Progress | None) -> list[_Fold]:
    # round 1's update is the model minus the start the adversary knows: the shared model,
    # also the centre of every perturbed start; independent starts are unknown
    init = None if setup.cfg.init == "independent" else setup.init
    out = []
    for f, fold in enumerate(folds):
        shadow_peers = [p for g, other in enumerate(folds) if g != f for p in other]
        train: dict[int, list[tuple[int, int, dict]]] = {}
        for rep in range(cfg.repeats):
            if progress:
                progress(f"fold {f + 1}/{len(folds)}: shadow run {rep + 1}/{cfg.repeats} "
                         f"with {len(shadow_peers)} peers")
            seed = int(np.random.default_rng([setup.seed, cfg.seed, 47, f, rep]).integers(2**31))
            shadow = shadow_log(setup, shadow_peers, rounds=log.rounds, seed=seed,
                                fraction=cfg.fraction, workers=cfg.workers)
            for i, p in enumerate(shadow_peers):
                for r, upd in observed_updates(shadow, i, init).items():
                    train.setdefault(r, []).append((p, rep, upd))
        out.append(_Fold(targets=fold, shadow=train,
                         seen={p: observed_updates(log, p, init) for p in fold}))
    return out


def _fold_logits(fold: _Fold, labels: np.ndarray, names: list[str], cfg: AttackConfig,
                 windows: list[int], inner_cv: bool = True, up_to: int | None = None,
                 ) -> tuple[dict[int, dict[int, float]], dict[int, float]]:
    """(target -> round -> logit, from classifiers fitted on the fold's shadow updates;
    window K -> the AUC of the same recipe, scores averaged over the first K rounds, in a
    2-fold cross-validation over the shadow peers, each class dealt evenly: all the attacker
    can know about how well a layer and a window work)."""
    logits: dict[int, dict[int, float]] = {p: {} for p in fold.targets}
    # half -> (shadow peer, shadow run) -> round -> held-out logit
    held_out: list[dict[tuple[int, int], dict[int, float]]] = [{}, {}]
    for r, rows in fold.shadow.items():
        if up_to is not None and r > up_to:
            continue  # a window of K rounds needs no classifier for the rounds after
        ys = np.array([labels[p] for p, _, _ in rows])
        if min(np.bincount(ys, minlength=2)) < 2:
            continue
        x = np.stack([_vector(u, names) for _, _, u in rows])
        who = [p for p in fold.targets if r in fold.seen[p]]
        if who:
            s = _fit_predict(x, ys, np.stack([_vector(fold.seen[p][r], names) for p in who]),
                             cfg.c, cfg.seed)
            for p, v in zip(who, s, strict=True):
                logits[p][r] = float(v)
        if not inner_cv:
            continue
        peers = np.array([p for p, _, _ in rows])
        order = [p for c in (0, 1) for p in sorted({q for q in peers.tolist()
                                                    if labels[q] == c})]
        for k in range(2):
            held = np.isin(peers, order[k::2])
            if min(np.bincount(ys[~held], minlength=2)) < 2 or not held.any():
                continue
            scores = _fit_predict(x[~held], ys[~held], x[held], cfg.c, cfg.seed)
            for i, v in zip(np.flatnonzero(held), scores, strict=True):
                held_out[k].setdefault(rows[i][:2], {})[r] = float(v)
    inner = {}
    for w in windows if inner_cv else []:
        y, s, f = [], [], []
        for k, got in enumerate(held_out):
            for (p, _), by_round in got.items():
                v = _mean_logit(by_round, w)
                if not np.isnan(v):
                    y.append(labels[p])
                    s.append(v)
                    f.append(k)
        inner[w] = _pooled_auc(np.array(y), np.array(s), np.array(f)) if y else float("nan")
    return logits, inner


def _attack(material: list[_Fold], labels: np.ndarray, groups: dict[str, list[str]],
            cfg: AttackConfig, windows: list[int],
            chosen: list[tuple[str, int]] | None = None) -> dict:
    """Per group and fold: target logits by round and the shadow AUC per window; the
    attack's own choice per fold is the group and window with the best shadow AUC (or
    `chosen`). `upto`: target -> the window its fold chose."""
    out: dict = {"group": {}, "chosen": [], "logits": {}, "upto": {}}
    if chosen is None:
        for g, names in groups.items():
            out["group"][g] = [_fold_logits(m, labels, names, cfg, windows) for m in material]
        for f in range(len(material)):
            inner = {(g, w): v[f][1][w] for g, v in out["group"].items() for w in windows}
            out["chosen"].append(max(inner, key=lambda gw: (
                np.nan_to_num(inner[gw], nan=-1.0), gw[0] == ALL, gw[1])))
    else:
        out["chosen"] = list(chosen)
    for f, (m, (g, w)) in enumerate(zip(material, out["chosen"], strict=True)):
        got = (out["group"][g][f][0] if chosen is None
               else _fold_logits(m, labels, groups[g], cfg, windows, inner_cv=False,
                                 up_to=w)[0])
        out["logits"].update(got)
        out["upto"].update({p: w for p in got})
    return out


def _mean_logit(by_round: dict[int, float], up_to: int | None = None) -> float:
    got = [v for r, v in by_round.items() if up_to is None or r <= up_to]
    return float(np.mean(got)) if got else float("nan")


def run_attack(setup: RunSetup, log: MessageLog, labels: np.ndarray, cfg: AttackConfig,
               progress: Progress | None = None, controls: int = 10) -> dict:
    """Attack every labelled peer of the run; the result `gossipser attack` writes.

    `controls`: the attack again with the attribute shuffled over the peers of each fold,
    as many times, with the layers it chose (an attack that works must fall to chance
    there: AUC 0.5; the choice itself saw shadow data only).

    With one BLAS thread: the classifiers are thousands of small fits, whose dot products
    OpenBLAS's threads slowed 7-20x on a busy machine (they spin waiting for each other;
    `scripts/bench_attack_fit.py`)."""
    with one_blas_thread():
        return _run_attack(setup, log, labels, cfg, progress, controls)


def one_blas_thread():
    """A context in which every BLAS the classifiers use runs one thread. The fitting
    libraries are loaded first: a limit reaches only the BLAS libraries already loaded, and
    scipy brings its own."""
    import sklearn.linear_model  # noqa: F401  (loads scipy's BLAS)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _run_attack(setup: RunSetup, log: MessageLog, labels: np.ndarray, cfg: AttackConfig,
                progress: Progress | None, controls: int) -> dict:
    targets = [p for p in log.senders() if labels[p] >= 0]
    if len(set(labels[targets].tolist())) < 2 or min(
            np.bincount(labels[targets], minlength=2)) < cfg.folds:
        raise ConfigError(f"the attack needs at least {cfg.folds} recorded peers of each "
                          "attribute value")
    groups = layer_names(log, list(setup.init))
    folds = _folds(labels, cfg.folds, cfg.seed)
    fold_of = {p: f for f, fold in enumerate(folds) for p in fold}
    material = _collect(setup, log, folds, cfg, progress)
    rng = np.random.default_rng([cfg.seed, 53])
    windows = windows_of(log.rounds)
    res = _attack(material, labels, groups, cfg, windows)
    scored = [p for p in targets if p in fold_of and res["logits"].get(p)]
    y, fid = labels[scored], np.array([fold_of[p] for p in scored])
    score = {p: _mean_logit(res["logits"][p], res["upto"][p]) for p in scored}
    overall = _scores(y, np.nan_to_num([score[p] for p in scored]), fid, rng, cfg.bootstrap)
    per_layer = {}
    for g, per_fold in res["group"].items():
        merged = {p: v for logits, _ in per_fold for p, v in logits.items()}
        s = np.nan_to_num([_mean_logit(merged.get(p, {})) for p in scored])
        per_layer[g] = {**_scores(y, s, fid, rng, cfg.bootstrap),
                        "shadow_auc": [v[1][log.rounds] for v in per_fold]}
    by_rounds = {k: _pooled_auc(y, np.nan_to_num([_mean_logit(res["logits"][p], k)
                                                  for p in scored]), fid)
                 for k in range(1, log.rounds + 1)}
    # the attacker who sees round r alone: how the leak moves as the peers train and agree
    by_round = {r: _pooled_auc(y, np.nan_to_num([res["logits"][p].get(r, np.nan)
                                                 for p in scored]), fid)
                for r in range(1, log.rounds + 1)}
    control = []
    for i in range(controls):
        if progress:
            progress(f"control {i + 1}/{controls}: the attack with the attribute shuffled")
        shuffled = labels.copy()  # within each fold, so every fold keeps its class counts
        for fold in folds:
            shuffled[fold] = rng.permutation(labels[fold])
        c = _attack(material, shuffled, groups, cfg, windows, chosen=res["chosen"])
        control.append(_pooled_auc(shuffled[scored], np.nan_to_num(
            [_mean_logit(c["logits"].get(p, {}), c["upto"].get(p)) for p in scored]), fid))
    control = [c for c in control if not np.isnan(c)]
    return {
        **overall, "chosen_layers": [g for g, _ in res["chosen"]],
        "chosen_rounds": [w for _, w in res["chosen"]],
        "shadow_auc": [res["group"][g][f][1][w] for f, (g, w) in enumerate(res["chosen"])],
        "shadow_auc_by_window": {g: {w: [v[1][w] for v in per_fold] for w in windows}
                                 for g, per_fold in res["group"].items()},
        "per_layer": per_layer,
        "control_auc": ({"mean": float(np.mean(control)), "std": float(np.std(control)),
                         "runs": len(control)} if control else None),
        "auc_by_rounds_seen": by_rounds, "auc_by_round": by_round,
        "targets": len(scored), "rounds_recorded": log.rounds, "folds": folds,
        "shadow": {"runs_per_fold": cfg.repeats, "fraction": cfg.fraction,
                   "examples_per_fold": [sum(len(v) for v in m.shadow.values())
                                         for m in material]},
        "scores": {int(p): score[p] for p in scored},
    }
