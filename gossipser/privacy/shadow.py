"""Shadow runs: the attacker's own peers, trained by the run's algorithm and config.

The attacker holds recordings of speakers whose attribute it knows (here: the peers of the
other fold of the run, which stand in for a public corpus of the same kind). It runs them as
peers of a gossip run of its own, with the target run's shared initial model and settings,
and records what they send: labelled examples of the messages it will see from its targets.
"""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np

from gossipser.errors import ConfigError
from gossipser.gossip.algorithms import algorithm_class
from gossipser.gossip.mixing import mixing_matrix
from gossipser.gossip.plan import RunSetup
from gossipser.gossip.topology import build_topology
from gossipser.learn.pool import make_pool
from gossipser.learn.settings import steps_per_epoch
from gossipser.privacy.record import MessageLog
from gossipser.sim.simulator import Simulator

PROCESS_STEPS = 2000


def shadow_setup(setup: RunSetup, peers: list[int], *, seed: int, fraction: float) -> RunSetup:
    """`setup` with only `peers`' shards, each subsampled to `fraction` (another draw per
    `seed`), on a topology of the same kind; initial model and step budget unchanged."""
    rng = np.random.default_rng([seed, 41])
    parts = []
    for p in peers:
        part = setup.parts[p]
        keep = max(min(2, len(part)), int(round(fraction * len(part))))
        parts.append(np.sort(rng.choice(part, size=keep, replace=False)))
    n = len(parts)
    algo = algorithm_class(setup.cfg.algorithm)
    if algo.uses_topology:
        try:
            graph = build_topology(setup.cfg.topology, peers=n, seed=seed)
        except ConfigError:  # a topology file of the target's size: the default kind
            graph = build_topology("auto", peers=n, seed=seed)
    else:  # FedAvg: every client talks to the server
        graph = nx.star_graph(n - 1)
        graph.graph["name"] = "server"
    mixing = mixing_matrix(graph, setup.cfg.mixing) if algo.uses_mixing else np.eye(n)
    return dataclasses.replace(
        setup, parts=parts, graph=graph, mixing=mixing, seed=seed,
        train_idx=np.concatenate(parts), peer_sizes=tuple(len(p) for p in parts),
        run_id=f"{setup.run_id}-shadow{seed % 10_000}",
        init_seed=setup.shared_seed, initial=dict(setup.initial))


def shadow_log(setup: RunSetup, peers: list[int], *, rounds: int, seed: int,
               fraction: float, workers: int) -> MessageLog:
    """What the shadow peers (ids 0..len(peers)-1, in `peers` order) send in `rounds` rounds."""
    shadow = shadow_setup(setup, peers, seed=seed, fraction=fraction)
    log = MessageLog(rounds, setup.shared_model_names())
    shards = [shadow.shard(i) for i in range(shadow.n_peers)]
    steps = rounds * sum(shadow.local_steps(s.peer, steps_per_epoch(len(s.y),
                                                                   setup.train.batch_size))
                         for s in shards)
    # worker processes take seconds to start: worth it only for a few thousand steps
    workers = workers if steps >= PROCESS_STEPS else 1
    with make_pool(shadow.pool_spec(), shards, workers=workers) as pool:
        sim = Simulator(shadow, pool, taps=[log])
        for r in range(1, rounds + 1):
            sim.run_round(r)
    return log
