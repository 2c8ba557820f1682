"""When the command started: a run's `setup_s` is measured from here."""

import time

STARTED = time.perf_counter()
