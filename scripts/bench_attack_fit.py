"""The attack's classifier fits with the BLAS threads the machine offers against one thread.

`gossipser attack` fits thousands of small standardised logistic regressions (a few dozen
shadow updates of up to 60k coordinates each, per layer, window and C). OpenBLAS parallelises
their dot products over every core; on a shared or busy machine its threads spin waiting for
each other, and `run_attack` limits them to one. This prints both times for the same fits, and
their ratio, from one run.

Run: .venv/bin/python scripts/bench_attack_fit.py [--examples 40] [--features 60000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_info

from gossipser.privacy.attack import _fit_predict, one_blas_thread


def fits(x: np.ndarray, y: np.ndarray, test: np.ndarray) -> float:
    """Seconds for the fits of one layer and window: three regularisation strengths."""
    start = time.perf_counter()
    for c in (0.01, 0.1, 1.0):
        _fit_predict(x, y, test, c, seed=0)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=40)
    p.add_argument("--features", type=int, default=60000)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.examples, args.features))
    y = np.arange(args.examples) % 2
    test = rng.normal(size=(10, args.features))
    fits(x[:4], y[:4], test)  # loads the fitting libraries: every BLAS they use is counted
    threads = max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
                  default=1)
    for i in range(args.repeats):  # alternated, so that the machine's load hits both alike
        many = fits(x, y, test)
        with one_blas_thread():
            one = fits(x, y, test)
        print(f"repeat {i + 1}: {threads} BLAS threads {many:.2f} s, one thread {one:.2f} s")
    print(f"ratio {many / one:.1f}")


if __name__ == "__main__":
    main()
