"""One exception root; a user sees one clear line, never a traceback, for bad input."""


class GossipserError(Exception):
    """Root of every error gossipser raises on purpose."""


class ConfigError(GossipserError):
    """A configuration value or file is wrong."""


class CorpusError(GossipserError):
    """A corpus folder or audio file cannot be used."""


class WireError(GossipserError):
    """A network frame is malformed, unauthenticated or does not fit the local model."""


class TransportError(GossipserError):
    """A transport could not deliver or receive."""


class TopologyError(ConfigError):
    """A topology spec or file is invalid."""
