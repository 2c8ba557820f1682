"""`[gossip]`: what a gossip run is asked to be (algorithm, topology, faults, merge rule,
training pool, clock). Checked when built, so a wrong config is one ConfigError line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gossipser.config import check_types
from gossipser.data.partition import parse_partition
from gossipser.errors import ConfigError
from gossipser.gossip.algorithms import ALGORITHMS, algorithm_class
from gossipser.gossip.byzantine import parse_attack
from gossipser.gossip.devices import parse_device_speed
from gossipser.gossip.robust import parse_robust
from gossipser.learn.workers import DEFAULT_WORKERS

INITS = ("shared", "independent", "perturbed")  # GossipConfig.init


@dataclass(frozen=True)
class GossipConfig:
    # gradient tracking: D-PSGD with drift correction, the default because one speaker per
    # peer makes the peers' gradients differ (README, "Gossip against FedAvg and centralized")
    algorithm: str = "gradient-tracking"
    topology: str = "auto"  # a spec (auto, ring, torus, regular:4, ...) or a file
    peers: int | None = None  # default: one per training speaker
    # at most; the simulator stops earlier on a plateau (see patience). The automatic step
    # budget is spread over them, so more rounds mean fewer local steps between two mixes
    rounds: int = 300
    # local training per round; None: as many steps per round as make every peer take, over
    # all rounds, the optimiser steps of centralized training on the pooled training set
    # (train.epochs x training utterances / batch size), shared as `step_share` says
    local_epochs: float | None = None
    # how the automatic budget (local_epochs unset) is shared: "samples", a peer's steps per
    # round in proportion to its shard (the pooled objective: every utterance weighs the same,
    # as in centralized training; the mean over peers is unchanged), or "equal" steps for all
    # (a peer with 2 utterances then pulls the consensus as hard as one with 80)
    step_share: str = "samples"
    mixing: str = "metropolis"
    partition: str = "speaker"
    drop: float = 0.0  # probability that a message is lost
    churn: float = 0.0  # probability that a peer is offline for a round
    stragglers: float = 0.0  # probability that a peer does only 10-50% of its local steps
    fraction: float = 1.0  # FedAvg: share of clients asked to train each round
    eval_every: int = 1
    workers: int = DEFAULT_WORKERS  # simulator training processes (or Ray actors)
    # simulator: where trainers live: "process" (a local process pool) or "ray" (Ray actors,
    # locally or on the cluster at ray_address, HOST:PORT)
    backend: str = "process"
    ray_address: str = ""
    # shared: one initial model from the run seed; independent: one per peer from its own
    # seed; perturbed: the shared one plus a secret offset per peer (gossip.plan)
    init: str = "shared"
    # simulator: stop when, over the last `patience` rounds, the mean training loss fell by
    # less than 1 % and the consensus distance by less than 5 % against the `patience` rounds
    # before (0: always run every round). Networked peers always run `rounds`.
    patience: int = 10
    # layers that stay on the device, never sent, never mixed (gossipser.gossip.private)
    private_layers: tuple[str, ...] = ()
    # Byzantine-robust merge in place of the weighted average (gossipser.gossip.robust):
    # none, trimmed-mean:K, median, krum:F, clip:TAU or clip:auto (dpsgd, gossip-learning)
    robust: str = "none"
    # simulated attackers (gossipser.gossip.byzantine): a count drawn from the seed, or ids
    # ("3,7"); each sends what `attack` forges
    byzantine: str = ""
    attack: str = "signflip"
    # simulator time (gossipser.sim.virtual): "rounds" (lock-step) or "virtual" (events in
    # virtual seconds: devices train at their own speed, messages take time on their link;
    # gossip learning, pairwise and push-sum then run with no round barrier)
    clock: str = "rounds"
    # per-peer compute speed: equal, or lognormal:MU:SIGMA, optionally ,slow:FRACTION:FACTOR
    device_speed: str = "equal"
    step_time: float = 0.05  # virtual seconds of one optimiser step at speed 1
    latency: float = 0.05  # seconds per message on a link (default for every edge)
    bandwidth: float = 1.25e6  # bytes per second on a link (10 Mbit/s)
    churn_period: float = 60.0  # virtual clock: mean seconds of an offline spell
    # virtual clock, D-PSGD and gradient tracking: seconds a peer waits for its neighbours
    # after its own training (None: twice the slowest device's round plus a model transfer)
    wait: float | None = None

    def __post_init__(self) -> None:
        check_types(self, "gossip")
        layers = tuple(x.strip() for x in self.private_layers if x.strip())
        object.__setattr__(self, "private_layers", layers)  # a TOML list becomes a tuple
        if self.private_layers and not algorithm_class(self.algorithm).uses_topology:
            raise ConfigError(f"private layers need a gossip algorithm; {self.algorithm}'s "
                              "server evaluates one global model")
        algorithm_class(self.algorithm)  # an unknown name is a ConfigError listing the known
        if parse_robust(self.robust) is not None and not algorithm_class(
                self.algorithm).supports_robust:
            robust_ok = ", ".join(n for n in ALGORITHMS if algorithm_class(n).supports_robust)
            raise ConfigError(f"robust merge {self.robust!r}: {self.algorithm} has no robust "
                              f"merge; use {robust_ok}")
        parse_attack(self.attack)
        for name in ("drop", "churn", "stragglers"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"gossip {name} must be a probability in [0, 1)")
        if self.rounds < 1 or self.eval_every < 1 or (self.local_epochs or 0) < 0:
            raise ConfigError("gossip: rounds >= 1, eval_every >= 1, local_epochs >= 0 "
                              "(0 switches training off)")
        if self.patience < 0:
            raise ConfigError("gossip: patience >= 0 (0 runs every round)")
        if self.step_share not in ("samples", "equal"):
            raise ConfigError(f"gossip step_share must be samples or equal, got "
                              f"{self.step_share!r}")
        if self.backend not in ("process", "ray"):
            raise ConfigError(f"gossip backend must be process or ray, got {self.backend!r}")
        if self.init not in INITS:
            raise ConfigError(f"gossip init must be one of {', '.join(INITS)}, got "
                              f"{self.init!r}")
        if self.peers is not None and self.peers < 2:
            raise ConfigError("gossip: need at least 2 peers")
        if not 0.0 < self.fraction <= 1.0 or self.workers < 1:
            raise ConfigError("gossip: fraction in (0, 1], workers >= 1")
        parse_partition(self.partition)
        if self.clock not in ("rounds", "virtual"):
            raise ConfigError(f"gossip clock must be rounds or virtual, got {self.clock!r}")
        parse_device_speed(self.device_speed)
        if not (self.step_time >= 0 and self.latency >= 0 and self.bandwidth > 0
                and self.churn_period > 0 and (self.wait is None or self.wait >= 0)):
            raise ConfigError("gossip: step_time, latency and wait >= 0; bandwidth and "
                              "churn_period > 0")
        if self.clock == "virtual" and self.algorithm == "fedavg":
            raise ConfigError("--clock virtual runs the gossip algorithms; fedavg has no "
                              "virtual-clock mode (use --clock rounds)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
