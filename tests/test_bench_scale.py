"""scripts/bench_scale.py as a user runs it, tiny: both peer counts run, the larger one with
parked trainers, every peer takes the local steps asked for, and the figures it promises are
printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_scale.py"


def test_bench_scale_prints_growth_and_memory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--peers", "5,40", "--model", "dnn", "--rounds", "3",
         "--per-peer", "2", "--local-steps", "2", "--workers", "1", "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "5 peers" in out and "live trainers" in out
    assert "40 peers" in out and "parked trainers" in out  # 40 > 32 in one process
    assert "2 local steps, 10 peer-steps a round" in out  # --local-steps reaches every peer
    assert "2 local steps, 80 peer-steps a round" in out
    assert "peer-steps/s" in out and "MB per peer" in out and "engine" in out
    assert "memory per extra peer" in out
    assert "steady rounds 2-2" in out  # round 1 warms up, round 3 evaluates
    assert out.count("parameters by shared memory") == 2
