"""cli: the `gossipser` command. Argument parsing, the subcommands (synth, train, predict,
simulate, topology, peer, server) and how flags and TOML sections become configs.
"""

import time

STARTED = time.perf_counter()  # when the command started (for the run's setup_s)

from gossipser.cli.main import main  # noqa: E402

__all__ = ["main"]
