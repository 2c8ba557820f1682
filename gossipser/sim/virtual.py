"""The simulator on a virtual clock (`--clock virtual`): time is seconds, not rounds.

Each peer trains at its own speed (`device_speed`: a distribution of per-peer speeds, a
step taking `step_time / speed` virtual seconds) and each message takes `latency + bytes /
bandwidth` seconds on its link (the run's defaults, or the `latency` and `bandwidth`
attributes of the edge in a JSON topology file). Events (a peer's training ends, a message
arrives, a peer goes offline or comes back, a wait runs out) are processed in time order, one
at a time, deterministically by seed.

- Asynchronous algorithms (gossip learning, pairwise, and push-sum, whose masses need no
  barrier) never wait: a peer sends after each local round, merges what arrived while it
  trained, and starts its next round at once. Fast devices do more rounds.
- Synchronous ones (D-PSGD, gradient tracking) keep their per-round barrier with the
  neighbours: after its training a peer waits until every neighbour's message of the round
  has arrived (or `wait` seconds have passed), so one slow device holds back its neighbours
  and, through them, everyone.

A "round" of the metrics is n completed local rounds over all peers (the mean peer's round),
so a run does the same total work as the round-based one: `rounds` x peers local rounds; each
row also says when it happened (`virtual_s`). With equal devices and zero latency a
synchronous run equals the round-based run. Churn is in time: a peer is offline for spells
of mean `churn_period` seconds, `churn` of the time; a message to an offline peer is lost.

Training is still done by the worker pool: a job's inputs are fixed when the peer starts, so
every job started before the first result is needed runs in one batch.
"""

from __future__ import annotations

import heapq
import itertools

import numpy as np

from gossipser.errors import ConfigError
from gossipser.gossip.algorithms import Outbox
from gossipser.gossip.devices import device_speeds
from gossipser.gossip.message import Message
from gossipser.gossip.plan import RunSetup
from gossipser.learn.jobs import TrainJob, TrainResult
from gossipser.sim.simulator import CSV_COLUMNS, Simulator

__all__ = ["CSV_COLUMNS", "VirtualSimulator", "make_simulator"]


class VirtualSimulator(Simulator):
    """`Simulator` with events in virtual time instead of lock-step rounds."""

    def __init__(self, setup: RunSetup, pool, **kwargs) -> None:
        super().__init__(setup, pool, **kwargs)
        cfg = self.cfg
        if self.server is not None:
            raise ConfigError("the virtual clock runs the gossip algorithms, not fedavg")
        n = len(self.peers)
        vrng = np.random.default_rng([setup.seed, 13])  # the round-mode streams stay as they are
        self.speed = device_speeds(cfg.device_speed, n, vrng)
        self.churn_rng = np.random.default_rng([setup.seed, 14])
        for p in self.peers:  # push-sum's masses need no barrier; D-PSGD and GT do
            p.barrier = p.strategy.synchronous and not p.strategy.barrier_free
        self.events: list[tuple[float, int, str, tuple]] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.online: set[int] = set(range(n))
        self.local_round = [0] * n
        self.training: dict[int, int] = {}  # peer -> token of its training in progress
        self._token = itertools.count(1)
        self.pending: dict[int, TrainJob] = {}
        self.results: dict[int, TrainResult] = {}
        self.waiting: dict[int, int] = {}  # barrier peers waiting: peer -> round
        self.arrived: dict[int, list[Message]] = {i: [] for i in range(n)}
        self.completed = 0  # local rounds finished over all peers
        self._losses: dict[int, float] = {}
        model_bytes = sum(v.nbytes for v in setup.message_params().values())
        steps = [self.setup.local_steps(i, self.steps_per_epoch[i]) for i in range(n)]
        slowest = max(s * cfg.step_time / v for s, v in zip(steps, self.speed, strict=True))
        self.wait = cfg.wait if cfg.wait is not None else 2 * (
            slowest + self._max_link_time(model_bytes))
        self.deliveries: list[tuple[float, int, int]] = []  # (time, dest, sender): tests
        self.toggles: list[tuple[float, int, bool]] = []  # (time, peer, online after)
        self.initially_offline: set[int] = set()

    # links -------------------------------------------------------------------------------
    def _link(self, u: int, v: int) -> tuple[float, float]:
        attrs = self.setup.graph.edges[u, v] if self.setup.graph.has_edge(u, v) else {}
        return (float(attrs.get("latency", self.cfg.latency)),
                float(attrs.get("bandwidth", self.cfg.bandwidth)))

    def _max_link_time(self, nbytes: int) -> float:
        times = [lat + nbytes / bw for lat, bw in (self._link(u, v)
                                                   for u, v in self.setup.graph.edges)]
        return max(times, default=self.cfg.latency + nbytes / self.cfg.bandwidth)

    # events ------------------------------------------------------------------------------
    def _at(self, t: float, kind: str, *data) -> None:
        heapq.heappush(self.events, (t, next(self._seq), kind, data))

    def _send(self, src: int, outbox: Outbox) -> None:
        for dest, msg in outbox:
            if self._sent(src, dest, msg, self.local_round[src]):
                self.messages_dropped += 1
                continue
            latency, bandwidth = self._link(src, dest)
            self._at(self.now + latency + self._size(msg) / bandwidth, "arrive", src, dest, msg)

    def _begin(self, i: int, r: int) -> None:
        """Peer i starts local round r: its training job is queued, its end scheduled."""
        peer = self.peers[i]
        peer.begin_round(r)
        self.local_round[i] = r
        steps = self._steps(i)
        token = next(self._token)
        self.training[i] = token
        if steps > 0:
            self.pending[i] = TrainJob(peer=i, params=peer.train_from(), steps=steps)
        self._at(self.now + steps * self.cfg.step_time / self.speed[i], "trained", i, token)

    def _flush(self) -> None:
        """Run every queued training job in one batch of the pool."""
        jobs = [j for i, j in self.pending.items() if i not in self.results]
        for res in self.pool.train(jobs):
            self.results[res.peer] = res

    def _trained(self, i: int, token: int) -> None:
        if self.training.get(i) != token:  # went offline meanwhile: the training is lost
            return
        del self.training[i]
        peer = self.peers[i]
        if i in self.pending:
            if i not in self.results:
                self._flush()
            del self.pending[i]
            self._took(self.results.pop(i), self._losses)
        self._send(i, peer.outgoing())
        if peer.barrier:
            self.waiting[i] = self.local_round[i]
            if peer.missing():
                self._at(self.now + self.wait, "timeout", i, self.local_round[i])
            else:
                self._finish(i)
            return
        arrived, self.arrived[i] = self.arrived[i], []
        for msg in arrived:  # what came in while it trained
            self._send(i, peer.receive(msg))
        self._finish(i)

    def _finish(self, i: int) -> None:
        peer = self.peers[i]
        if peer.barrier:
            del self.waiting[i]
            peer.end_round()
        self.completed += 1
        self._begin(i, self.local_round[i] + 1)

    def _arrive(self, src: int, dest: int, msg: Message) -> None:
        if dest not in self.online:  # never delivered to a peer that is away
            self.messages_dropped += 1
            return
        self.deliveries.append((self.now, dest, src))
        peer = self.peers[dest]
        if not peer.barrier and dest in self.training:
            self.arrived[dest].append(msg)
            return
        self._send(dest, peer.receive(msg))
        if dest in self.waiting and not peer.missing():
            self._finish(dest)

    def _timeout(self, i: int, r: int) -> None:
        if self.waiting.get(i) == r:
            self._finish(i)  # a missing neighbour's weight stays home

    def _spell(self, online: bool) -> float:
        """How long a peer stays online (or away) from now: exponential, away `churn_period`
        s on average and online long enough that it is away `churn` of the time."""
        churn, period = self.cfg.churn, self.cfg.churn_period
        return self.churn_rng.exponential(period * (1 - churn) / churn if online else period)

    def _toggle(self, i: int) -> None:
        self.toggles.append((self.now, i, i not in self.online))
        if i in self.online:
            self.online.discard(i)
            self.training.pop(i, None)  # its training in progress is lost
            self.pending.pop(i, None)
            self.results.pop(i, None)
            self.waiting.pop(i, None)
            self.arrived[i] = []
            self._at(self.now + self._spell(online=False), "toggle", i)
        else:
            self.online.add(i)
            r = self.local_round[i]
            if self.peers[i].barrier:  # rejoin at the neighbours' round, not behind them
                r = max([r, *(self.local_round[j] for j in self.peers[i].neighbours)])
            self._begin(i, max(r, 1))
            self._at(self.now + self._spell(online=True), "toggle", i)

    # the run -----------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        n = len(self.peers)
        t0 = self._begin_run(clock="virtual")
        if cfg.churn > 0:
            for i in range(n):
                away = self.churn_rng.random() < cfg.churn
                if away:
                    self.online.discard(i)
                    self.initially_offline.add(i)
                self._at(self._spell(online=not away), "toggle", i)
        for i in sorted(self.online):
            self._begin(i, 1)
        handlers = {"trained": self._trained, "arrive": self._arrive,
                    "timeout": self._timeout, "toggle": self._toggle}
        r = 0
        while self.events and r < cfg.rounds:
            self.now, _, kind, data = heapq.heappop(self.events)
            handlers[kind](*data)
            while self.completed >= (r + 1) * n and r < cfg.rounds:
                r += 1  # a round of the metrics: n more local rounds done
                losses, self._losses = self._losses, {}
                if self._end_of_round(r, set(self.online), losses, t0,
                                      virtual_s=round(self.now, 3)):
                    r = cfg.rounds + 1
        return self._end_run(t0, virtual_s=round(self.now, 3), clock={
            "kind": "virtual", "device_speed": cfg.device_speed,
            "speed_min": float(self.speed.min()), "speed_median": float(np.median(self.speed)),
            "speed_max": float(self.speed.max()), "step_time": cfg.step_time,
            "latency": cfg.latency, "bandwidth": cfg.bandwidth, "wait": self.wait})


def make_simulator(setup: RunSetup, pool, **kwargs) -> Simulator:
    """The simulator the config's clock asks for: lock-step rounds or the virtual clock."""
    cls = VirtualSimulator if setup.cfg.clock == "virtual" else Simulator
    return cls(setup, pool, **kwargs)
