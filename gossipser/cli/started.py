"""When the command started: a run's `setup_s` is measured from here.

The clock starts when the package's command line is imported (what a shell command pays);
a later call of `main` in the same process (tests, notebooks) restarts it.
"""

import time

STARTED = time.perf_counter()
_calls = 0


def mark() -> None:
    """Called by `main`: the first call keeps the import time, later ones restart the clock."""
    global STARTED, _calls
    if _calls:
        STARTED = time.perf_counter()
    _calls += 1
