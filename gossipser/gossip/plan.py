"""A gossip run's set-up, shared by the simulator and the networked peers (its config,
`GossipConfig`, is in `gossipser.gossip.settings`).

Everything both runtimes must agree on (data split, partition, topology, mixing weights,
initial model) is derived here from the seed, so every peer on every machine computes the
same set-up and loads only its own shard.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import secrets
from dataclasses import dataclass

import networkx as nx
import numpy as np

from gossipser.data.corpora import Corpus
from gossipser.data.dataset import Dataset, corpus_arrays, split_speakers
from gossipser.data.features import FeatureConfig
from gossipser.data.partition import parse_partition, partition
from gossipser.errors import ConfigError
from gossipser.gossip.algorithms import algorithm_class
from gossipser.gossip.byzantine import Attack, byzantine_ids, parse_attack
from gossipser.gossip.mixing import Params, mixing_matrix
from gossipser.gossip.peer import Peer
from gossipser.gossip.private import BN_STATS, private_names, public
from gossipser.gossip.robust import RobustRule, parse_robust
from gossipser.gossip.server import FedAvgServer
from gossipser.gossip.settings import GossipConfig
from gossipser.gossip.topology import build_topology
from gossipser.learn.jobs import PoolSpec, Shard
from gossipser.learn.settings import (
    ModelConfig,
    TrainConfig,
    n_inputs,
    speaker_groups,
    steps_per_epoch,
)

# init = "perturbed": the spread of the secret offset on a trained parameter that every model
# starts alike (a norm layer's scale 1 and shift 0). 0.1 of its unit scale is ~100x one
# round's update at the peak learning rate, and its average over 20 peers is 0.02
CONSTANT_OFFSET = 0.1


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
    seed: int
    run_id: str
    n_train: int = 0  # training utterances of the whole run (every peer's, loaded or not)
    peer_sizes: tuple[int, ...] = ()  # every peer's planned shard size (default: its part)
    init_seed: int | None = None  # the shared initial model's seed (None: `seed`)
    # initial models, built on first use here or by a training pool (`build_with`), keyed by
    # what they are built from, so a `dataclasses.replace` with another model never reuses one
    initial: dict[tuple, Params] = dataclasses.field(default_factory=dict, repr=False,
                                                     compare=False)

    @property
    def init(self) -> Params:
        """The shared initial model (from `init_seed`, by default the run seed); every run
        reads it for the names and shapes a message carries, whatever `cfg.init` is."""
        return self._initial(self.shared_seed)

    @property
    def shared_seed(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed

    def _key(self, seed: int) -> tuple:
        return (seed, self.model, n_inputs(self.features, self.model), len(self.dataset.classes))

    def build_with(self, pool) -> None:
        """Have `pool` (with torch in its workers) build the initial models, so that this
        process needs no torch."""
        seeds = [self.shared_seed] + [s for pid in range(self.n_peers)
                                      for s in self._peer_seeds(pid)]
        seeds = [s for s in dict.fromkeys(seeds) if self._key(s) not in self.initial]
        self.initial.update(zip(map(self._key, seeds), pool.initial_states(seeds), strict=True))

    def _initial(self, seed: int, *, once: bool = False) -> Params:
        """The initial model from `seed`; `once`: a peer's own, dropped from the cache when
        taken (the peer keeps it; thousands of peers need not hold two copies)."""
        key = self._key(seed)
        got = self.initial.pop(key, None) if once else self.initial.get(key)
        if got is None:
            from gossipser.learn.models import build_model, get_state  # torch

            got = get_state(build_model(self.model, n_features=key[2], n_classes=key[3],
                                        seed=seed))
            if not once:
                self.initial[key] = got
        return got

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

    def _peer_seeds(self, pid: int) -> tuple[int, ...]:
        """The seeds peer `pid`'s own start is built from (none under a shared start)."""
        if self.cfg.init == "shared":
            return ()
        own = peer_seed(self.seed, pid)
        if self.cfg.init == "independent":
            return (own,)
        return own, int(np.random.default_rng([self.seed, 5, pid, 1]).integers(2**31))

    def initial_params(self, pid: int) -> Params:
        return self._start(self._peer_seeds(pid))

    def _start(self, seeds: tuple[int, ...]) -> Params:
        """A peer's start from its own seeds (`_peer_seeds`): none, the shared model; one,
        an independent model; two, a perturbed one."""
        if not seeds:
            return self.init
        if len(seeds) == 1:
            return self._initial(seeds[0], once=True)
        return self._perturbed(*seeds)

    def _perturbed(self, a: int, b: int) -> Params:
        """init = "perturbed": the shared model plus (model a - model b) / sqrt(2), a secret
        offset with the initialiser's own spread in every coordinate. A trained parameter
        every model starts alike (a norm layer's scale 1 and shift 0) gets a normal offset
        of spread `CONSTANT_OFFSET` instead, drawn from a and b: unmasked, its first update
        is exact and gives the speaker away. Running statistics get none. Unlike independent
        starts, the peers' average stays the shared model at its own scale."""
        one, two = self._initial(a, once=True), self._initial(b, once=True)
        rng = np.random.default_rng([a, b, 9])
        out: Params = {}
        for k, v in self.init.items():
            offset = (one[k] - two[k]) / np.sqrt(2.0)
            if (not offset.any() and v.size and np.issubdtype(v.dtype, np.floating)
                    and k.rsplit(".", 1)[-1] not in BN_STATS):
                offset = rng.normal(0.0, CONSTANT_OFFSET, v.shape)
            out[k] = (v + offset).astype(v.dtype, copy=False)
        return out

    def secret_initial(self) -> Params:
        """A start built as `initial_params` builds one, from seeds drawn from the operating
        system's randomness: a networked peer's under init = "independent" or "perturbed",
        which no neighbour can rebuild and subtract from its first update. (A simulation
        derives every peer's seeds from the run seed so that it can be repeated; its
        attacker is not given them.)"""
        return self._start(tuple(secrets.randbelow(2**31) for _ in self._peer_seeds(0)))

    def make_peer(self, pid: int, attack: Attack | None = None,
                  params: Params | None = None) -> Peer:
        """Peer `pid`, starting from `params` (default: `initial_params(pid)`)."""
        row = {int(j): float(self.mixing[pid, j]) for j in np.flatnonzero(self.mixing[pid])}
        uses_graph = algorithm_class(self.cfg.algorithm).uses_topology
        neighbours = list(self.graph.neighbors(pid)) if uses_graph else []
        return Peer(
            pid=pid, neighbours=neighbours, algorithm=self.cfg.algorithm,
            params=self.initial_params(pid) if params is None else params,
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

    parts = [index(p) for p in plan.peer_paths]
    return RunSetup(
        cfg=plan.cfg, features=ds.cfg, model=model, train=train, dataset=ds,
        train_idx=np.concatenate(parts) if parts else np.zeros(0, np.int64),
        test_idx=index(plan.test_paths), parts=parts, graph=plan.graph, mixing=plan.mixing,
        seed=plan.seed, run_id=plan.run_id,
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
