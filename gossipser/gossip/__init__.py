"""gossip: what peers exchange and how they merge, with no I/O. The message and its wire
format, mixing maths, topologies, the peer and its algorithm strategies, the FedAvg server,
the run plan, and the events a run emits. Imports `data` and `learn`.
"""
