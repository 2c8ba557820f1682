"""Start-up of `gossipser simulate`: seconds from the command to the first round (`setup_s`).

    python scripts/bench_startup.py [--runs 5] [--baseline OTHER_CHECKOUT] [-- extra flags]

Runs `gossipser simulate --rounds 1 --local-epochs 1 --display none` on the bundled synthetic
corpus (features cached by a first, uncounted run) from this checkout and, with
`--baseline`, from another checkout of the project, alternated so that both see the same
machine. Prints each run's `setup_s`, the medians and, as its last line, `ratio X` (this
checkout / baseline; below 1 is faster). The machines are shared: pause other jobs first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
LAUNCH = "import sys; from gossipser.cli.main import main; sys.exit(main())"


def setup_seconds(checkout: Path, extra: list[str], out: Path) -> float:
    """One simulate run from `checkout` (its package first on the path); its `setup_s`."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, "-c", LAUNCH, "simulate", "--rounds", "1", "--local-epochs", "1",
           "--display", "none", "--out", str(out), *extra]
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"bench_startup: simulate from {checkout} failed: {tail}")
    return float(json.loads((out / "summary.json").read_text())["setup_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each checkout (default 5)")
    ap.add_argument("--baseline", type=Path, help="another checkout to compare against")
    ap.add_argument("extra", nargs="*", help="more simulate flags, after --")
    args = ap.parse_args()
    sides = [("this", HERE)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    for _, checkout in sides:
        if not (checkout / "gossipser" / "cli" / "main.py").is_file():
            raise SystemExit(f"bench_startup: {checkout} is not a gossipser checkout")
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for _, checkout in sides:  # warm: features cached, files in the page cache
            setup_seconds(checkout, args.extra, Path(tmp) / "warm")
        for i in range(args.runs):
            for name, checkout in sides:
                t = setup_seconds(checkout, args.extra, Path(tmp) / f"{name}{i}")
                times[name].append(t)
                print(f"run {i + 1} {name:8s} setup_s {t:.2f}", flush=True)
    for name, ts in times.items():
        print(f"{name:8s} median {statistics.median(ts):.2f} s (min {min(ts):.2f}, "
              f"max {max(ts):.2f}, {len(ts)} runs)")
    if args.baseline:
        ratio = statistics.median(times["this"]) / statistics.median(times["baseline"])
        print(f"ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
