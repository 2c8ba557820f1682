"""gossipser: privacy-preserving speech emotion recognition by decentralized gossip learning.

Rooms in data-flow order; each imports only from those above it in this list:

    data    audio -> corpus -> MFCC features -> dataset arrays -> speakers split into peers
    learn   models, local training, metrics, model files, centralized baseline, training pools
    gossip  messages and wire format, mixing, topologies, peers and algorithm strategies
    sim     the single-process simulator (many peers, faults, metrics)
    net     transports (TCP, MQTT), the networked peer and FedAvg server runtimes
    ui      live display, metrics files, tables, the convergence comparison report
    cli     the `gossipser` command

`errors` (the exception root) and `config` (TOML reading, typed validation) serve every room.
"""

__version__ = "0.1.0"
