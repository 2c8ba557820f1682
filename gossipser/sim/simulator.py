"""Single-process topology simulator: many peers, one machine, deterministic by seed.

It only delivers messages between `Peer` objects (and the FedAvg server), injects faults
(message drop, churn, stragglers), hands training to a worker pool and emits events.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from gossipser.gossip.algorithms import Outbox
from gossipser.gossip.events import Listener, PeerStatus, RoundFinished, RunFinished, RunStarted
from gossipser.gossip.message import SERVER_ID, Message
from gossipser.gossip.mixing import Params, combine, stack_float64
from gossipser.gossip.plan import RunSetup
from gossipser.gossip.server import FedAvgServer
from gossipser.gossip.wire import encode
from gossipser.learn.jobs import TrainJob, TrainResult
from gossipser.learn.schedule import annealed

# sees every message a peer sends: (round, sender, destination, message); gossipser.privacy
# records what an adversary would observe with one
Tap = Callable[[int, int, int, Message], None]
SIM_SECRET = b"simulator"  # frames are encoded only to measure their size on the wire
# the plateau rule waits, under a decaying schedule, until the learning rate is this share of
# its peak (the cosine's last ~18 % of rounds)
LATE_LR = 0.1

CSV_COLUMNS = (
    "round", "ua_mean", "ua_min", "ua_max", "wa_mean", "macro_f1_mean", "ua_avg_model",
    "wa_avg_model", "consensus_distance", "loss_mean", "online", "messages_sent",
    "messages_dropped", "bytes_sent_total", "bytes_per_peer_mean", "bytes_sent_max_peer",
    "bytes_sent_max_node", "epsilon_max", "wall_s", "virtual_s",
)


def is_statistic(name: str) -> bool:
    """BatchNorm running statistics travel with the model but are not trained parameters."""
    return name.endswith(("running_mean", "running_var"))


def flatten(params: Params) -> np.ndarray:
    """Trained parameters as one float64 vector (what the consensus distance measures)."""
    return np.concatenate([np.ravel(params[k]).astype(np.float64)
                           for k in sorted(params) if not is_statistic(k)])


def consensus_distance_of(states: Sequence[Params], *, skip: frozenset[str] = frozenset(),
                          block: int = 16) -> tuple[float, np.ndarray]:
    """((1/n) sum_i ||theta_i - theta_bar||^2 over trained parameters, per-peer distances);
    `skip` names parameters left out (private layers, which never agree).

    One parameter at a time: its float64 mean summed model by model, then the differences
    of `block` models at a time, stacked in the buffer merges reuse (`stack_float64`). No
    copy of every model is made (at 1,000 peers the stacked copies cost more in page faults
    than in arithmetic), and the figures are those of stacking them all: the same sums in
    the same order."""
    n = len(states)
    per_peer = np.zeros(n)
    for k in states[0]:
        if is_statistic(k) or k in skip:
            continue
        mean = np.ravel(states[0][k]).astype(np.float64)
        for s in states[1:]:
            mean += np.ravel(s[k])
        mean /= n
        for start in range(0, n, block):
            d = stack_float64([s[k] for s in states[start:start + block]])
            d -= mean
            per_peer[start:start + len(d)] += np.einsum("ij,ij->i", d, d)
    return float(per_peer.mean()), per_peer


class Simulator:
    def __init__(self, setup: RunSetup, pool, *, listeners: Sequence[Listener] = (),
                 taps: Sequence[Tap] = (), started: float | None = None) -> None:
        self.setup = setup
        self.started = started  # perf_counter() when the command started: setup_s
        self.setup_s: float | None = None
        self.taps = list(taps)
        self.round = 0
        self.private = setup.private
        self.cfg = setup.cfg
        self.pool = pool
        self.listeners = list(listeners)
        self.rng = np.random.default_rng([setup.seed, 11])
        self.peers = [setup.make_peer(i) for i in range(setup.n_peers)]
        # metrics, the averaged model and the plateau rule follow the honest peers only
        self.byzantine = setup.byzantine
        self.honest = [i for i in range(setup.n_peers) if i not in self.byzantine]
        self.server: FedAvgServer | None = (
            setup.make_server() if self.cfg.algorithm == "fedavg" else None)
        self.steps_per_epoch = pool.steps_per_epoch()
        self.bytes_sent: dict[int, int] = {i: 0 for i in range(setup.n_peers)}
        if self.server is not None:
            self.bytes_sent[SERVER_ID] = 0
        self.messages_sent = 0
        self.messages_dropped = 0
        self._sizes: dict[tuple, int] = {}
        self.rows: list[dict] = []
        self._loss: list[float] = []  # mean training loss per round (plateau rule)
        self._dist: list[float] = []  # consensus distance per round
        self.steps_done = 0  # optimiser steps over all peers
        self.samples_done = 0  # examples seen by the peers' optimisers
        self.epsilon: dict[int, float] = {}  # DP-SGD: privacy each peer has spent so far
        self.noise: dict[int, float] = {}

    def _emit(self, event) -> None:
        for listener in self.listeners:
            listener(event)

    def _size(self, msg: Message) -> int:
        key = (msg.kind, tuple(sorted(msg.meta.items())))
        if key not in self._sizes:
            self._sizes[key] = len(encode(msg, secret=SIM_SECRET))
        return self._sizes[key]

    def _sent(self, src: int, dest: int, msg: Message, round_: int) -> bool:
        """Account one message sent (taps, bytes, count); True when its link loses it."""
        if src != SERVER_ID:
            for tap in self.taps:
                tap(round_, src, dest, msg)
        self.bytes_sent[src] += self._size(msg)
        self.messages_sent += 1
        return self.cfg.drop > 0 and self.rng.random() < self.cfg.drop

    def _took(self, res: TrainResult, losses: dict[int, float]) -> None:
        """Hand a training result to its peer and count what it cost."""
        self.peers[res.peer].trained(res.params, res.steps)
        losses[res.peer] = res.loss
        self.steps_done += res.steps
        self.samples_done += res.samples
        if res.epsilon is not None:
            self.epsilon[res.peer], self.noise[res.peer] = res.epsilon, res.noise

    def _deliver(self, sender: int, outbox: Outbox, online: set[int]) -> None:
        queue = deque((sender, dest, msg) for dest, msg in outbox)
        while queue:
            src, dest, msg = queue.popleft()
            lost = self._sent(src, dest, msg, self.round)
            if lost or (dest != SERVER_ID and dest not in online):
                self.messages_dropped += 1
                continue
            if dest == SERVER_ID:
                self.server.receive(msg)
            else:
                queue.extend((dest, d, m) for d, m in self.peers[dest].receive(msg))

    def _steps(self, pid: int) -> int:
        steps = self.setup.local_steps(pid, self.steps_per_epoch[pid])
        if steps == 0:
            return 0
        if self.cfg.stragglers > 0 and self.rng.random() < self.cfg.stragglers:
            steps = max(1, int(round(steps * self.rng.uniform(0.1, 0.5))))
        return steps

    def run_round(self, r: int) -> tuple[set[int], dict[int, float]]:
        n = len(self.peers)
        self.round = r
        churn = self.cfg.churn
        online = {i for i in range(n) if not (churn > 0 and self.rng.random() < churn)}
        for p in self.peers:
            p.begin_round(r)
        training = sorted(online)
        if self.server is not None:
            self._deliver(SERVER_ID, self.server.start_round(r), online)
            training = [c for c in training if self.peers[c].wants_training()]
        jobs = [TrainJob(peer=i, params=self.peers[i].train_from(), steps=self._steps(i))
                for i in training]
        losses = {}
        for res in self.pool.train([j for j in jobs if j.steps > 0]):
            self._took(res, losses)
        for i in self.rng.permutation(training):
            self._deliver(int(i), self.peers[int(i)].outgoing(), online)
        for i in sorted(online):
            self.peers[i].end_round()
        if self.server is not None:
            self.server.end_round()
        return online, losses

    def _row(self, r: int, online: set[int], losses: dict[int, float], evaluate: bool,
             t0: float, consensus: tuple[float, np.ndarray]) -> tuple[dict, tuple[PeerStatus, ...]]:
        states = [self.peers[i].params for i in self.honest]
        dist, honest_dist = consensus
        per_peer = dict(zip(self.honest, honest_dist, strict=True))
        peer_bytes = [self.bytes_sent[i] for i in range(len(self.peers))]
        row: dict = {c: "" for c in CSV_COLUMNS}
        row.update(
            round=r, consensus_distance=dist, online=len(online),
            loss_mean=self._honest_loss(losses),
            messages_sent=self.messages_sent, messages_dropped=self.messages_dropped,
            bytes_sent_total=sum(self.bytes_sent.values()),
            bytes_per_peer_mean=float(np.mean(peer_bytes)),
            bytes_sent_max_peer=max(peer_bytes),
            bytes_sent_max_node=max(self.bytes_sent.values()),  # the FedAvg server is a node
            epsilon_max=max(self.epsilon.values()) if self.epsilon else "",
            wall_s=round(time.perf_counter() - t0, 3),
        )
        uas: list[float | None] = [None] * len(self.peers)
        if evaluate:
            avg = (self.server.params if self.server is not None
                   else combine(states, [1.0] * len(states)))
            scores = self.pool.evaluate(states + [avg])
            peer_scores, avg_score = scores[:-1], scores[-1]
            for i, sc in zip(self.honest, peer_scores, strict=True):
                uas[i] = sc.ua
            honest_uas = [sc.ua for sc in peer_scores]
            row.update(
                ua_mean=float(np.mean(honest_uas)), ua_min=float(np.min(honest_uas)),
                ua_max=float(np.max(honest_uas)),
                wa_mean=float(np.mean([s.wa for s in peer_scores])),
                macro_f1_mean=float(np.mean([s.macro_f1 for s in peer_scores])),
                ua_avg_model=avg_score.ua, wa_avg_model=avg_score.wa,
            )
            self.last_scores = (peer_scores, avg_score)
        statuses = tuple(
            PeerStatus(peer=i, online=i in online, ua=uas[i], loss=losses.get(i),
                       distance=float(per_peer.get(i, float("nan"))),
                       bytes_sent=self.bytes_sent[i])
            for i in range(len(self.peers))
        )
        return row, statuses

    def run(self) -> dict:
        t0 = self._begin_run()
        for r in range(1, self.cfg.rounds + 1):
            online, losses = self.run_round(r)
            if self._end_of_round(r, online, losses, t0):
                break
        return self._end_run(t0)

    def _begin_run(self, **info) -> float:
        """Say the run starts (with `setup_s`); returns the clock its wall time counts from."""
        if self.started is not None:
            self.setup_s = round(time.perf_counter() - self.started, 2)
        self._emit(RunStarted(info={**self.setup.describe(), "workers": self.pool.workers,
                                    "setup_s": self.setup_s, **info}))
        rounds = self.cfg.rounds
        self.stopped = {"round": rounds, "reason": f"ran the {rounds} rounds planned"}
        return time.perf_counter()

    def _end_of_round(self, r: int, online: set[int], losses: dict[int, float], t0: float,
                      **extra) -> bool:
        """The metrics row of round r (`extra` columns added), emitted; True: the run has
        reached its plateau and stops."""
        cfg = self.cfg
        # over the honest peers: (distance, per-peer distances), for the plateau and row
        consensus = consensus_distance_of([self.peers[i].params for i in self.honest],
                                          skip=self.private)
        plateau = self._plateau(losses, r, consensus[0])
        last = r == cfg.rounds or plateau is not None
        row, statuses = self._row(r, online, losses, r % cfg.eval_every == 0 or last, t0,
                                  consensus)
        row.update(extra)
        self.rows.append(row)
        self._emit(RoundFinished(round=r, rounds=cfg.rounds, row=row, peers=statuses))
        if plateau is not None:
            self.stopped = {"round": r, "reason": plateau}
        return plateau is not None

    def _end_run(self, t0: float, **extra) -> dict:
        """The run's summary (`extra` fields added), emitted and returned."""
        summary = {**self.summary(time.perf_counter() - t0), **extra}
        self._emit(RunFinished(summary=summary))
        return summary

    def _plateau(self, losses: dict[int, float], r: int, dist: float) -> str | None:
        """Why the run has reached its plateau (None: not yet): over the last `patience`
        rounds against the `patience` before, the mean training loss fell by < 1 % and the
        consensus distance by < 5 %. Under a decaying schedule only once the learning rate
        has come down to `LATE_LR` of its peak: a plateau at a high learning rate is where
        the annealing still to come pays, not where the run ends."""
        p = self.cfg.patience
        if p == 0:
            return None
        self._loss.append(self._honest_loss(losses))
        self._dist.append(dist)
        if r < 2 * p or not annealed(r, self.cfg.rounds, self.setup.train.schedule, LATE_LR):
            return None
        loss, dist = np.array(self._loss[-2 * p:]), np.array(self._dist[-2 * p:])
        if np.isnan(loss).any():
            return None
        l0, l1, d0, d1 = loss[:p].mean(), loss[p:].mean(), dist[:p].mean(), dist[p:].mean()
        if l1 > 0.99 * l0 and d1 > 0.95 * d0:
            return (f"plateau: over rounds {r - p + 1}-{r} the mean training loss changed by "
                    f"{100 * (l1 / l0 - 1):+.1f} % and the consensus distance by "
                    f"{100 * (d1 / d0 - 1):+.1f} % against the {p} rounds before")
        return None

    def _honest_loss(self, losses: dict[int, float]) -> float:
        trained = [v for i, v in losses.items() if i not in self.byzantine and not np.isnan(v)]
        return float(np.mean(trained)) if trained else float("nan")

    def summary(self, wall_s: float) -> dict:
        last = self.rows[-1]
        peer_scores, avg_score = self.last_scores
        privacy = self._privacy()
        steps = [self.setup.local_steps(p, self.steps_per_epoch.get(p, 0))
                 for p in range(len(self.peers))]
        return {
            **self.setup.describe(), "wall_s": round(wall_s, 2),
            **({"setup_s": self.setup_s} if self.setup_s is not None else {}),
            "bytes_sent_total": int(sum(self.bytes_sent.values())),
            "bytes_sent_max_peer": int(max(self.bytes_sent[i] for i in range(len(self.peers)))),
            "bytes_sent_max_node": int(max(self.bytes_sent.values())),
            "bytes_sent_server": int(self.bytes_sent.get(SERVER_ID, 0)),
            "messages_sent": self.messages_sent, "messages_dropped": self.messages_dropped,
            "optimizer_steps": self.steps_done, "samples_processed": self.samples_done,
            "local_steps_per_round": float(np.median(steps or [0])),
            "local_steps_per_round_per_peer": steps,
            "stopped": self.stopped,
            **privacy,
            "final": {
                "ua_mean": last["ua_mean"], "ua_min": last["ua_min"], "ua_max": last["ua_max"],
                "wa_mean": last["wa_mean"], "macro_f1_mean": last["macro_f1_mean"],
                "ua_avg_model": last["ua_avg_model"], "wa_avg_model": last["wa_avg_model"],
                "macro_f1_avg_model": avg_score.macro_f1,
                "consensus_distance": last["consensus_distance"],
                "confusion_avg_model": avg_score.confusion.tolist(),
                "ua_per_peer": [s.ua for s in peer_scores],  # honest peers, in id order
                **({"epsilon": privacy["epsilon_max"]} if privacy else {}),
            },
        }

    def _privacy(self) -> dict:
        """DP-SGD: the (epsilon, delta) each peer's shard has spent, worst peer first."""
        if self.setup.train.dp is None:
            return {}
        n = len(self.peers)
        eps = [self.epsilon.get(i, 0.0) for i in range(n)]
        return {"epsilon_max": max(eps), "epsilon_per_peer": eps,
                "delta": self.setup.train.dp.delta,
                "noise_multiplier_per_peer": [self.noise.get(i) for i in range(n)]}

    def final_states(self) -> list[Params]:
        return [p.params for p in self.peers]
