"""scripts/compare_convergence.py end to end on a tiny corpus: files, figures, and a summary
table that agrees with results.csv.

Six speakers x four emotions x two takes (five peers), a DNN of width 8, two rounds, two
seeds, one process: the whole comparison takes a few seconds.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_convergence.py"
EMOTIONS = ("neutral", "happy", "sad", "angry")
METHODS = ("centralized", "local", "fedavg", "dpsgd-ring", "dpsgd-torus", "gossip-learning")
FIGURES = ("ua_vs_round.png", "ua_vs_bytes.png", "consensus_vs_round.png",
           "ua_spread_final.png", "confusion_best_gossip.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def compare() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("compare_convergence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve the module's annotations through sys.modules
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(scope="module")
def result(compare: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT of one tiny comparison run (with --faults, so two panels and +faults methods)."""
    from gossipser.data.synth import SynthConfig
    from gossipser.data.synth_corpus import write_corpus

    root = tmp_path_factory.mktemp("compare")
    write_corpus(root / "corpus", SynthConfig(speakers=6, per_emotion=2, emotions=EMOTIONS))
    config = root / "tiny.toml"
    config.write_text("[model]\nkind = 'dnn'\nwidth = 8\n")
    out = root / "out"
    rc = compare.main([
        "--data", str(root / "corpus"), "--cache-dir", str(root / "cache"), "--out", str(out),
        "--config", str(config), "--rounds", "2", "--local-epochs", "1", "--seeds", "0,1",
        "--workers", "1",
        "--methods", ",".join(METHODS), "--faults",
    ])
    assert rc == 0
    return out


def read_results(out: Path) -> list[dict]:
    with (out / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def summary_table(out: Path) -> dict[str, dict[str, str]]:
    """The markdown table of summary.md as {method: {column: cell}}."""
    lines = [ln for ln in (out / "summary.md").read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    return {r[0]: dict(zip(header, r, strict=True)) for r in rows}


def test_writes_results_summary_and_figures(result: Path) -> None:
    # Prepare / Execute: the module fixture ran the script
    # Assert
    for name in ("results.csv", "summary.md", "runs.json", *FIGURES):
        assert (result / name).is_file(), name
    for name in FIGURES:
        data = (result / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 20_000, f"{name} is suspiciously small ({len(data)} bytes)"


def test_results_have_one_row_per_method_seed_and_round(result: Path) -> None:
    rows = read_results(result)

    keys = {(r["method"], r["seed"], r["round"]) for r in rows}
    assert len(keys) == len(rows)
    ran = {r["method"] for r in rows}
    # five peers cannot form a torus: skipped with a reason, everything else ran
    assert ran == {"centralized", "local", "fedavg", "dpsgd-ring", "gossip-learning",
                   "dpsgd-ring+faults", "gossip-learning+faults"}
    assert "dpsgd-torus was not run: torus cannot hold 5 peers" in (
        result / "summary.md").read_text()
    for method in ran - {"centralized"}:
        for seed in ("0", "1"):
            assert [r["round"] for r in rows if (r["method"], r["seed"]) == (method, seed)] == [
                "1", "2"]
    central = [r for r in rows if r["method"] == "centralized"]
    assert [r["round"] for r in central] == ["2", "2"]  # epochs = rounds x local epochs
    assert all(float(r["bytes_max_node"]) == 0 for r in central)


def test_bytes_are_cumulative_and_the_fedavg_server_is_the_busiest_node(result: Path) -> None:
    rows = read_results(result)

    def last(method: str, column: str) -> float:
        return float([r for r in rows if r["method"] == method and r["seed"] == "0"][-1][column])

    assert last("local", "bytes_total") == 0
    assert last("dpsgd-ring", "bytes_per_peer") > 0
    # the server sends the global model to all five clients, a client uploads one model
    assert last("fedavg", "bytes_max_node") > 4 * last("fedavg", "bytes_per_peer")
    ring = [float(r["bytes_per_peer"]) for r in rows
            if r["method"] == "dpsgd-ring" and r["seed"] == "0"]
    assert ring[1] == pytest.approx(2 * ring[0])


def test_summary_table_matches_results_csv(result: Path) -> None:
    rows = read_results(result)
    table = summary_table(result)

    assert set(table) == {r["method"] for r in rows}
    for method, cells in table.items():
        # FedAvg deploys the server's global model; everyone else the peers' own models
        column = "ua_avg_model" if method == "fedavg" else "ua_mean"
        finals = []
        for seed in ("0", "1"):
            mine = [r for r in rows if r["method"] == method and r["seed"] == seed]
            finals.append(float(mine[-1][column]))
        shown = float(re.match(r"\s*(-?[\d.]+)", cells["UA (%)"]).group(1))
        assert shown == pytest.approx(100 * np.mean(finals), abs=0.051), method
        spread = re.search(r"± ([\d.]+)", cells["UA (%)"])
        assert spread is not None
        assert float(spread.group(1)) == pytest.approx(100 * np.std(finals, ddof=1), abs=0.051)


def test_merge_rebuilds_the_same_tables_and_figures(compare: ModuleType, result: Path,
                                                    tmp_path: Path) -> None:
    # Prepare: the module fixture's run (two seeds) stands for runs made one seed at a time
    out = tmp_path / "merged"

    # Execute
    code = compare.main(["--merge", str(result), "--out", str(out)])

    # Assert: nothing re-run, the same numbers, every figure drawn again
    assert code == 0
    assert summary_table(out) == summary_table(result)
    assert read_results(out) == read_results(result)
    for name in compare.FIGURES:
        assert (out / name).stat().st_size > 10_000


def test_merge_refuses_a_folder_without_results(compare: ModuleType, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = compare.main(["--merge", str(tmp_path), "--out", str(tmp_path / "out")])

    # Assert
    assert code == 2
    assert "cannot merge" in capsys.readouterr().err


def test_virtual_clock_plots_ua_against_virtual_time(compare: ModuleType, tmp_path: Path,
                                                     ) -> None:
    """--clock virtual: rows carry virtual seconds, a synchronous method waits for the slow
    device and the asynchronous ones do not, fedavg is skipped with its reason, and
    ua_vs_time.png is drawn."""
    from gossipser.data.synth import SynthConfig
    from gossipser.data.synth_corpus import write_corpus

    write_corpus(tmp_path / "corpus", SynthConfig(speakers=6, per_emotion=2, emotions=EMOTIONS))
    config = tmp_path / "tiny.toml"
    config.write_text("[model]\nkind = 'dnn'\nwidth = 8\n")
    out = tmp_path / "out"
    assert compare.main([
        "--data", str(tmp_path / "corpus"), "--cache-dir", str(tmp_path / "cache"),
        "--out", str(out), "--config", str(config), "--rounds", "2", "--local-epochs", "1",
        "--seeds", "0", "--workers", "1", "--methods", "dpsgd-ring,gossip-learning,push-sum,fedavg",
        "--clock", "virtual", "--device-speed", "equal,slow:0.2:10"]) == 0
    rows = read_results(out)
    last = {r["method"]: float(r["virtual_s"]) for r in rows}
    assert set(last) == {"dpsgd-ring", "gossip-learning", "push-sum"}  # fedavg: skipped
    assert last["gossip-learning"] < last["dpsgd-ring"] and last["push-sum"] < last["dpsgd-ring"]
    assert "fedavg" in (out / "summary.md").read_text()
    assert (out / "ua_vs_time.png").read_bytes().startswith(PNG_MAGIC)
