"""cli: the `gossipser` command. Argument parsing, the subcommands (synth, train, predict,
simulate, topology, peer, server) and how flags and TOML sections become configs.
"""

from gossipser.cli import started  # noqa: F401  (first: the clock starts with the command)
from gossipser.cli.main import main

__all__ = ["main"]
