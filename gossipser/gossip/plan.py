"""A gossip run's configuration and set-up, shared by the simulator and the networked peers.

Everything both runtimes must agree on (data split, partition, topology, mixing weights,
initial model) is derived here from the seed, so every peer on every machine computes the
same set-up and loads only its own shard.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass

import networkx as nx
import numpy as np

from gossipser.config import check_types
from gossipser.data.corpora import Corpus
from gossipser.data.dataset import Dataset, corpus_arrays, split_speakers
from gossipser.data.features import FeatureConfig
from gossipser.data.partition import parse_partition, partition
from gossipser.errors import ConfigError
from gossipser.gossip.algorithms import ALGORITHMS, algorithm_class
from gossipser.gossip.byzantine import Attack, byzantine_ids, parse_attack
from gossipser.gossip.devices import parse_device_speed
from gossipser.gossip.mixing import Params, mixing_matrix
from gossipser.gossip.peer import Peer
from gossipser.gossip.private import private_names, public
from gossipser.gossip.robust import RobustRule, parse_robust
from gossipser.gossip.server import FedAvgServer
from gossipser.gossip.topology import build_topology
from gossipser.learn.modelio import n_inputs
from gossipser.learn.models import ModelConfig, build_model, get_state
from gossipser.learn.train import TrainConfig, speaker_groups, steps_per_epoch
from gossipser.learn.trainers import PoolSpec, Shard
from gossipser.learn.workers import DEFAULT_WORKERS


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
    init: str = "shared"  # shared: one initial model from the run seed; independent: per peer
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
        if self.init not in ("shared", "independent"):
            raise ConfigError("gossip init must be shared or independent")
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


@dataclass
class RunSetup:
    """The agreed-on pieces of one run; `peer_ids` are 0..N-1, the FedAvg server is -1."""

    cfg: GossipConfig
    features: FeatureConfig
    model: ModelConfig
    train: TrainConfig
    dataset: Dataset
    train_idx: np.ndarray
    test_idx: np.ndarray
    parts: list[np.ndarray]
    graph: nx.Graph
    mixing: np.ndarray
    init: Params
    seed: int
    run_id: str
    n_train: int = 0  # training utterances of the whole run (every peer's, loaded or not)
    peer_sizes: tuple[int, ...] = ()  # every peer's planned shard size (default: its part)

    @property
    def n_peers(self) -> int:
        return len(self.parts)

    @property
    def auto_local_steps(self) -> int:
        """Local steps per round that give each peer, over `rounds`, the optimiser steps of
        centralized training: epochs x training utterances / batch size."""
        t = self.train
        if t.epochs == 0:
            return 0
        return max(1, math.ceil(t.epochs * self.n_train / (t.batch_size * self.cfg.rounds)))

    def peer_steps(self, pid: int) -> int:
        """Automatic local steps per round of peer `pid`: `auto_local_steps`, scaled by its
        shard size over the mean shard size under `step_share = samples` (at least 1)."""
        base = self.auto_local_steps
        if base == 0 or self.cfg.step_share == "equal":
            return base
        sizes = self.peer_sizes or tuple(len(p) for p in self.parts)
        mean = sum(sizes) / len(sizes)
        return max(1, int(round(base * sizes[pid] / mean))) if mean > 0 else 0

    def local_steps(self, pid: int, steps_per_epoch: int) -> int:
        """Optimiser steps of peer `pid`'s local training in one round (0: its shard has
        fewer than two utterances)."""
        epochs = self.cfg.local_epochs
        if steps_per_epoch == 0 or epochs == 0:
            return 0
        if epochs is None:
            return self.peer_steps(pid)
        return max(1, int(round(epochs * steps_per_epoch)))

    def peer_attack(self, pid: int, attack: Attack | None = None) -> Attack | None:
        """What peer `pid` does if it is Byzantine: `attack` (a networked peer's own flag), or
        the run's attack when the config names it among `byzantine`; None: honest."""
        if attack is not None:
            return attack
        return self.attack if pid in self.byzantine else None

    def shard(self, pid: int, attack: Attack | None = None) -> Shard:
        idx = self.parts[pid]
        per_epoch = steps_per_epoch(len(idx), self.train.batch_size)
        planned = self.cfg.rounds * self.local_steps(pid, per_epoch)
        y = self.dataset.labels[idx]
        attack = self.peer_attack(pid, attack)
        if attack is not None:
            y = attack.flip_labels(y, len(self.dataset.classes))
        return Shard(peer=pid, x=self.dataset.inputs(self.model.view, idx),
                     y=y, seed=peer_seed(self.seed, pid),
                     planned_steps=planned)

    def pool_spec(self) -> PoolSpec:
        return PoolSpec(
            model=self.model, train=self.train, n_inputs=n_inputs(self.features, self.model),
            n_classes=len(self.dataset.classes),
            test_x=self.dataset.inputs(self.model.view, self.test_idx),
            test_y=self.dataset.labels[self.test_idx],
            test_groups=speaker_groups(self.model, self.dataset.speakers[self.test_idx]),
        )

    def initial_params(self, pid: int) -> Params:
        if self.cfg.init == "shared":
            return self.init
        model = build_model(self.model, n_features=n_inputs(self.features, self.model),
                            n_classes=len(self.dataset.classes), seed=peer_seed(self.seed, pid))
        return get_state(model)

    def make_peer(self, pid: int, attack: Attack | None = None) -> Peer:
        row = {int(j): float(self.mixing[pid, j]) for j in np.flatnonzero(self.mixing[pid])}
        uses_graph = algorithm_class(self.cfg.algorithm).uses_topology
        neighbours = list(self.graph.neighbors(pid)) if uses_graph else []
        return Peer(
            pid=pid, neighbours=neighbours, algorithm=self.cfg.algorithm,
            params=self.initial_params(pid),
            samples=len(self.parts[pid]), run=self.run_id, mix_row=row,
            rng=np.random.default_rng([self.seed, 7, pid]), private=self.private,
            robust=self.robust,
            attack=self.peer_attack(pid, attack),
        )

    @functools.cached_property
    def byzantine(self) -> frozenset[int]:
        """The peers that attack (`GossipConfig.byzantine`)."""
        return byzantine_ids(self.cfg.byzantine, self.n_peers, self.seed)

    @functools.cached_property
    def robust(self) -> RobustRule | None:
        """The Byzantine-robust merge rule (`GossipConfig.robust`), or None."""
        return parse_robust(self.cfg.robust)

    @functools.cached_property
    def attack(self) -> Attack | None:
        """What the Byzantine peers do (`GossipConfig.attack`)."""
        return parse_attack(self.cfg.attack)

    @property
    def private(self) -> frozenset[str]:
        """Parameter names that never leave a peer (`GossipConfig.private_layers`)."""
        return private_names(self.init, self.cfg.private_layers)

    def message_params(self) -> Params:
        """The parameter names, shapes and dtypes one model message of this run carries."""
        return public(algorithm_class(self.cfg.algorithm)().message_params(self.init),
                      self.private)

    def shared_model_names(self) -> list[str]:
        """The model's parameter names that leave a peer (not private), in model order."""
        return [k for k in self.init if k not in self.private]

    def make_server(self) -> FedAvgServer:
        return FedAvgServer(clients=range(self.n_peers), params=self.init, run=self.run_id,
                            fraction=self.cfg.fraction, rng=np.random.default_rng([self.seed, 8]))

    def describe(self) -> dict:
        return {
            "algorithm": self.cfg.algorithm, "topology": self.graph.graph.get(
                "name", self.cfg.topology), "peers": self.n_peers, "rounds": self.cfg.rounds,
            "model": self.model.kind, "corpus": self.dataset.corpus.name,
            "classes": list(self.dataset.classes), "seed": self.seed, "run": self.run_id,
            "partition": self.cfg.partition, "test_utterances": int(len(self.test_idx)),
            "peer_utterances": [int(len(p)) for p in self.parts],
            **({"private_layers": sorted(self.private)} if self.private else {}),
            **({"dp": dp_description(self.train)} if self.train.dp is not None else {}),
            **({"robust": str(self.robust)} if self.robust else {}),
            **({"byzantine": sorted(self.byzantine), "attack": str(self.attack)}
               if self.byzantine else {}),
        }


def dp_description(train: TrainConfig) -> dict:
    """What a summary says about DP-SGD: the guarantee's unit and its settings."""
    dp = train.dp
    return {"unit": "utterance, per peer (example-level DP on each peer's own shard)",
            "delta": dp.delta, "clip": dp.clip, "target_epsilon": dp.epsilon,
            "noise_multiplier": dp.noise, "accountant": "rdp (opacus)"}


def peer_seed(seed: int, pid: int) -> int:
    return int(np.random.default_rng([seed, 5, pid]).integers(2**31))


def run_id_for(seed: int, cfg: GossipConfig) -> str:
    digest = hashlib.sha256(repr((seed, cfg.to_dict())).encode()).hexdigest()[:10]
    return f"gsr-{digest}"


@dataclass(frozen=True)
class RunPlan:
    """What every peer must agree on, computed from file names and the seed (no audio)."""

    cfg: GossipConfig
    seed: int
    run_id: str
    test_paths: tuple[str, ...]
    peer_paths: tuple[tuple[str, ...], ...]
    graph: nx.Graph
    mixing: np.ndarray

    def needed_by(self, pid: int | None) -> frozenset[str]:
        """Files a peer must read: its own shard and the evaluation set (None: every file;
        the server, -1: the evaluation set only)."""
        if pid is None:
            own = tuple(p for part in self.peer_paths for p in part)
        else:
            own = self.peer_paths[pid] if 0 <= pid < len(self.peer_paths) else ()
        return frozenset((*own, *self.test_paths))


def plan_run(
    corpus: Corpus, *, cfg: GossipConfig, test_speakers: tuple[str, ...], seed: int,
    run_id: str | None = None,
) -> RunPlan:
    """Split, partition, topology and mixing matrix, all from `seed` and the corpus listing."""
    labels, speakers, paths = corpus_arrays(corpus)
    train_idx, test_idx = split_speakers(speakers, corpus, test_speakers)
    n_speakers = len(set(speakers[train_idx].tolist()))
    kind, _ = parse_partition(cfg.partition)
    peers = cfg.peers or (n_speakers if kind == "speaker" else None)
    if peers is None:
        raise ConfigError(f"--peers is needed with partition {cfg.partition}")
    parts = partition(cfg.partition, index=train_idx, labels=labels, speakers=speakers,
                      peers=peers, rng=np.random.default_rng([seed, 3]))
    algo = algorithm_class(cfg.algorithm)
    if algo.uses_topology:
        graph = build_topology(cfg.topology, peers=peers, seed=seed)
    else:  # FedAvg: every client talks to the server
        graph = nx.star_graph(peers - 1)
        graph.graph["name"] = "server"
    mixing = mixing_matrix(graph, cfg.mixing) if algo.uses_mixing else np.eye(peers)
    byzantine_ids(cfg.byzantine, len(parts), seed)  # a bad id or count: one line, now
    return RunPlan(
        cfg=cfg, seed=seed, run_id=run_id or run_id_for(seed, cfg),
        test_paths=tuple(paths[i] for i in test_idx),
        peer_paths=tuple(tuple(paths[i] for i in part) for part in parts),
        graph=graph, mixing=mixing,
    )


def setup_from_plan(
    ds: Dataset, plan: RunPlan, *, model: ModelConfig, train: TrainConfig,
) -> RunSetup:
    """Bind a plan to loaded features; files that failed to load drop out of their shard."""
    where = {p: i for i, p in enumerate(ds.paths)}

    def index(paths: tuple[str, ...]) -> np.ndarray:
        return np.array([where[p] for p in paths if p in where], dtype=np.int64)

    init_model = build_model(model, n_features=n_inputs(ds.cfg, model),
                             n_classes=len(ds.classes), seed=plan.seed)
    parts = [index(p) for p in plan.peer_paths]
    return RunSetup(
        cfg=plan.cfg, features=ds.cfg, model=model, train=train, dataset=ds,
        train_idx=np.concatenate(parts) if parts else np.zeros(0, np.int64),
        test_idx=index(plan.test_paths), parts=parts, graph=plan.graph, mixing=plan.mixing,
        init=get_state(init_model), seed=plan.seed, run_id=plan.run_id,
        n_train=sum(len(p) for p in plan.peer_paths),
        peer_sizes=tuple(len(p) for p in plan.peer_paths),
    )


def setup_run(
    ds: Dataset, *, cfg: GossipConfig, model: ModelConfig, train: TrainConfig,
    test_speakers: tuple[str, ...], seed: int, run_id: str | None = None,
) -> RunSetup:
    """Plan and bind in one go (the simulator, which loads every file)."""
    plan = plan_run(ds.corpus, cfg=cfg, test_speakers=test_speakers, seed=seed, run_id=run_id)
    return setup_from_plan(ds, plan, model=model, train=train)
