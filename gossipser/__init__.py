"""gossipser: privacy-preserving speech emotion recognition by decentralized gossip learning."""

__version__ = "0.1.0"
