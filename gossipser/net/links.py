"""Opening a transport by name: memory (tests), tcp or mqtt (aiomqtt is imported only then)."""

from __future__ import annotations

from gossipser.errors import ConfigError
from gossipser.net.tcp import TcpTransport
from gossipser.net.transport import MemoryHub, MemoryTransport, Transport, TransportConfig


def open_transport(cfg: TransportConfig, *, hub: MemoryHub | None = None) -> Transport:
    """The transport `cfg.kind` names; kind 'memory' needs the shared `hub`."""
    if cfg.kind == "memory":
        if hub is None:
            raise ConfigError("transport: kind 'memory' needs a MemoryHub (hub=...)")
        return MemoryTransport(cfg, hub=hub)
    if cfg.kind == "tcp":
        return TcpTransport(cfg)
    from gossipser.net.mqtt import MqttTransport  # imports aiomqtt only when used

    return MqttTransport(cfg)
