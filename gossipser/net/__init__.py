"""net: one peer per process over real links. Transports (memory, TCP, MQTT), the node that
frames and filters messages, the runtime of a peer and of the FedAvg server, and a local
mosquitto broker. Imports `gossip` and `learn`.
"""
