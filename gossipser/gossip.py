"""A gossip run's configuration and set-up, shared by the simulator and the networked peers.

Everything both runtimes must agree on (data split, partition, topology, mixing weights,
initial model) is derived here from the seed, so every peer on every machine computes the
same set-up and loads only its own shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import networkx as nx
import numpy as np

from gossipser.dataset import Dataset, split_by_speakers
from gossipser.errors import ConfigError
from gossipser.features import FeatureConfig
from gossipser.mixing import mixing_matrix
from gossipser.modelio import n_inputs
from gossipser.models import ModelConfig, build_model, get_state
from gossipser.partition import parse_partition, partition
from gossipser.peer import ALGORITHMS, FedAvgServer, Params, Peer
from gossipser.topology import build_topology
from gossipser.train import TrainConfig
from gossipser.workers import PoolSpec, Shard


@dataclass(frozen=True)
class GossipConfig:
    algorithm: str = "dpsgd"
    topology: str = "ring"  # a spec (ring, torus, regular:4, ...) or a file
    peers: int | None = None  # default: one per training speaker
    rounds: int = 30
    local_epochs: float = 1.0
    mixing: str = "metropolis"
    partition: str = "speaker"
    drop: float = 0.0  # probability that a message is lost
    churn: float = 0.0  # probability that a peer is offline for a round
    stragglers: float = 0.0  # probability that a peer does only 10-50% of its local steps
    fraction: float = 1.0  # FedAvg: share of clients asked to train each round
    eval_every: int = 1
    workers: int = 2  # simulator training processes
    init: str = "shared"  # shared: one initial model from the run seed; independent: per peer

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"unknown algorithm {self.algorithm!r}; choose one of "
                              f"{', '.join(ALGORITHMS)}")
        for name in ("drop", "churn", "stragglers"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"gossip {name} must be a probability in [0, 1)")
        if self.rounds < 1 or self.eval_every < 1 or self.local_epochs < 0:
            raise ConfigError("gossip: rounds >= 1, eval_every >= 1, local_epochs >= 0 "
                              "(0 switches training off)")
        if self.init not in ("shared", "independent"):
            raise ConfigError("gossip init must be shared or independent")
        if self.peers is not None and self.peers < 2:
            raise ConfigError("gossip: need at least 2 peers")
        if not 0.0 < self.fraction <= 1.0 or self.workers < 1:
            raise ConfigError("gossip: fraction in (0, 1], workers >= 1")
        parse_partition(self.partition)

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

    @property
    def n_peers(self) -> int:
        return len(self.parts)

    def shard(self, pid: int) -> Shard:
        idx = self.parts[pid]
        return Shard(peer=pid, x=self.dataset.inputs(self.model.view, idx),
                     y=self.dataset.labels[idx], seed=peer_seed(self.seed, pid))

    def pool_spec(self) -> PoolSpec:
        return PoolSpec(
            model=self.model, train=self.train, n_inputs=n_inputs(self.features, self.model),
            n_classes=len(self.dataset.classes),
            test_x=self.dataset.inputs(self.model.view, self.test_idx),
            test_y=self.dataset.labels[self.test_idx],
        )

    def initial_params(self, pid: int) -> Params:
        if self.cfg.init == "shared":
            return self.init
        model = build_model(self.model, n_features=n_inputs(self.features, self.model),
                            n_classes=len(self.dataset.classes), seed=peer_seed(self.seed, pid))
        return get_state(model)

    def make_peer(self, pid: int) -> Peer:
        row = {int(j): float(self.mixing[pid, j]) for j in np.flatnonzero(self.mixing[pid])}
        neighbours = [] if self.cfg.algorithm == "fedavg" else list(self.graph.neighbors(pid))
        return Peer(
            pid=pid, neighbours=neighbours, algorithm=self.cfg.algorithm,
            params=self.initial_params(pid),
            samples=len(self.parts[pid]), run=self.run_id, mix_row=row,
            rng=np.random.default_rng([self.seed, 7, pid]),
        )

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
        }


def peer_seed(seed: int, pid: int) -> int:
    return int(np.random.default_rng([seed, 5, pid]).integers(2**31))


def run_id_for(seed: int, cfg: GossipConfig) -> str:
    digest = hashlib.sha256(repr((seed, cfg.to_dict())).encode()).hexdigest()[:10]
    return f"gsr-{digest}"


def setup_run(
    ds: Dataset, *, cfg: GossipConfig, model: ModelConfig, train: TrainConfig,
    test_speakers: tuple[str, ...], seed: int, run_id: str | None = None,
) -> RunSetup:
    """Split, partition, topology, mixing matrix and initial model, all from `seed`."""
    train_idx, test_idx = split_by_speakers(ds, test_speakers)
    n_speakers = len(set(ds.speakers[train_idx].tolist()))
    kind, _ = parse_partition(cfg.partition)
    peers = cfg.peers or (n_speakers if kind == "speaker" else None)
    if peers is None:
        raise ConfigError(f"--peers is needed with partition {cfg.partition}")
    rng = np.random.default_rng([seed, 3])
    parts = partition(cfg.partition, index=train_idx, labels=ds.labels, speakers=ds.speakers,
                      peers=peers, rng=rng)
    if cfg.algorithm == "fedavg":
        graph = nx.star_graph(peers - 1) if peers > 1 else nx.empty_graph(1)
        graph.graph["name"] = "server"
    else:
        graph = build_topology(cfg.topology, peers=peers, seed=seed)
    mixing = mixing_matrix(graph, cfg.mixing) if cfg.algorithm == "dpsgd" else np.eye(peers)
    init_model = build_model(model, n_features=n_inputs(ds.cfg, model),
                             n_classes=len(ds.classes), seed=seed)
    return RunSetup(
        cfg=cfg, features=ds.cfg, model=model, train=train, dataset=ds, train_idx=train_idx,
        test_idx=test_idx, parts=parts, graph=graph, mixing=mixing, init=get_state(init_model),
        seed=seed, run_id=run_id or run_id_for(seed, cfg),
    )
