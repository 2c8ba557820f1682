"""scripts/bench_startup.py as a user runs it: this checkout against itself as the baseline,
one run each, and a folder that is not a checkout refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_startup.py"


def _run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GOSSIPSER_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True,
                          text=True, timeout=600, env=env)


def test_bench_startup_prints_both_medians_and_the_ratio(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--runs", "1", "--baseline", str(ROOT), "--", "--peers", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert any(ln.startswith("this ") and "median" in ln for ln in lines)
    assert any(ln.startswith("baseline median") for ln in lines)
    word, ratio = lines[-1].split()
    assert word == "ratio" and 0.0 < float(ratio) < 10.0


def test_bench_startup_refuses_a_folder_that_is_not_a_checkout(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--baseline", str(tmp_path))
    assert proc.returncode != 0
    assert "is not a gossipser checkout" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
