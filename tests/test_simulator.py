"""The real simulator on a tiny synthetic corpus: averaging maths, determinism, faults, pools, CLI.

Models are a DNN of width 8 and each peer holds a few utterances, so a run takes a fraction
of a second; `local_epochs=0` switches training off to test the averaging alone.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from gossipser.cli.main import main
from gossipser.data.dataset import Dataset, load_dataset
from gossipser.errors import ConfigError, GossipserError
from gossipser.gossip.algorithms import ALGORITHMS
from gossipser.gossip.message import Message
from gossipser.gossip.mixing import combine, slem
from gossipser.gossip.plan import RunSetup, setup_run
from gossipser.gossip.settings import GossipConfig
from gossipser.gossip.wire import encode
from gossipser.learn.jobs import Shard, TrainJob
from gossipser.learn.models import get_state
from gossipser.learn.pool import ProcessPool, SerialPool
from gossipser.learn.settings import ModelConfig, TrainConfig
from gossipser.learn.trainers import PARK_ABOVE, _Trainers
from gossipser.sim.simulator import (
    CSV_COLUMNS,
    SIM_SECRET,
    Simulator,
    consensus_distance_of,
    flatten,
)

TEST_SPEAKERS = ("spk06",)  # 5 training speakers x 4 emotions x 3 takes = 60 utterances
MODEL = ModelConfig(kind="dnn", width=8)
TRAIN = TrainConfig(epochs=1)

# One torch thread, as in the ProcessPool workers; two threads per tiny op on a busy machine
# make these runs 10-40x slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def ds(sim_corpus: Path, sim_cache: Path) -> Dataset:
    return load_dataset(sim_corpus, cache_dir=sim_cache)


@pytest.fixture(autouse=True)
def _private_cache(sim_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOSSIPSER_CACHE", str(sim_cache))


class RecordingPool(SerialPool):
    """A SerialPool that remembers the training jobs of each call (one call per round)."""

    def __init__(self, spec, shards) -> None:
        super().__init__(spec, shards)
        self.calls: list[list[TrainJob]] = []

    def train(self, jobs: Sequence[TrainJob]):
        self.calls.append(list(jobs))
        return super().train(jobs)


def make_setup(ds: Dataset, *, seed: int = 0, **gossip) -> RunSetup:
    gossip = {"peers": 8, "partition": "iid", "rounds": 3, **gossip}
    return setup_run(ds, cfg=GossipConfig(**gossip), model=MODEL, train=TRAIN,
                     test_speakers=TEST_SPEAKERS, seed=seed)


def simulate(ds: Dataset, *, seed: int = 0, pool_cls=RecordingPool, **gossip) -> Simulator:
    setup = make_setup(ds, seed=seed, **gossip)
    with pool_cls(setup.pool_spec(), [setup.shard(i) for i in range(setup.n_peers)]) as pool:
        sim = Simulator(setup, pool)
        sim.run()
    return sim


def initial_states(setup: RunSetup) -> np.ndarray:
    return np.stack([flatten(setup.initial_params(i)) for i in range(setup.n_peers)])


def column(sim: Simulator, name: str) -> np.ndarray:
    return np.array([row[name] for row in sim.rows], dtype=float)


def without_wall_time(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


def same_rows(a: list[dict], b: list[dict]) -> bool:
    def same(x, y) -> bool:
        both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
        return both_nan or x == y

    a, b = without_wall_time(a), without_wall_time(b)
    return len(a) == len(b) and all(same(r[k], s[k]) for r, s in zip(a, b, strict=True) for k in r)


# --- averaging with training switched off


@pytest.mark.parametrize(("topology", "peers"), [("ring", 16), ("torus", 20), ("regular:4", 16)])
def test_dpsgd_keeps_the_mean_and_contracts_at_slem_squared(ds, topology, peers):
    rounds = 30
    sim = simulate(ds, algorithm="dpsgd", topology=topology, peers=peers, rounds=rounds,
                   local_epochs=0, init="independent", eval_every=rounds)
    x0 = initial_states(sim.setup)

    final = np.stack([flatten(s) for s in sim.final_states()])
    np.testing.assert_allclose(final.mean(axis=0), x0.mean(axis=0), rtol=0, atol=1e-6)
    d = column(sim, "consensus_distance")  # d[k]: after round k + 1
    start, _ = consensus_distance_of([sim.setup.initial_params(i) for i in range(peers)])
    assert start > 0 and d[-1] < start
    rate = (d[rounds - 1] / d[9]) ** (1 / (rounds - 10))  # geometric mean, rounds 11..30
    assert rate == pytest.approx(slem(sim.setup.mixing) ** 2, rel=0.05)
    assert sim.pool.calls == [[]] * rounds  # nothing trained
    assert column(sim, "messages_dropped").max() == 0


def test_push_sum_keeps_mass_and_agrees_on_the_mean_with_unequal_degrees(ds):
    sim = simulate(ds, algorithm="push-sum", topology="star", peers=10, rounds=40,
                   local_epochs=0, init="independent", eval_every=40)
    x0 = initial_states(sim.setup)

    weights = np.array([p.strategy.weight for p in sim.peers])
    z = np.stack([flatten(s) for s in sim.final_states()])
    assert weights.sum() == pytest.approx(10.0, rel=1e-12)
    assert weights.max() / weights.min() > 2  # the hub holds more mass than a leaf
    np.testing.assert_allclose((weights[:, None] * z).sum(axis=0), x0.sum(axis=0),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(z, np.broadcast_to(x0.mean(axis=0), z.shape), rtol=0, atol=1e-5)
    d = column(sim, "consensus_distance")
    assert d[-1] < 1e-9 * consensus_distance_of([sim.setup.initial_params(i)
                                                 for i in range(10)])[0]


# --- determinism


@pytest.mark.parametrize("algorithm", ["dpsgd", "gossip-learning"])
def test_runs_are_deterministic_by_seed(ds, algorithm):
    faults = dict(algorithm=algorithm, drop=0.2, churn=0.2, stragglers=0.3, local_epochs=2)

    a = simulate(ds, seed=1, **faults)
    b = simulate(ds, seed=1, **faults)
    c = simulate(ds, seed=2, **faults)

    assert same_rows(a.rows, b.rows)
    for sa, sb in zip(a.final_states(), b.final_states(), strict=True):
        assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not same_rows(a.rows, c.rows)
    assert not np.array_equal(flatten(a.final_states()[0]), flatten(c.final_states()[0]))


# --- faults


def steps_of(sim: Simulator) -> list[int]:
    return [j.steps for call in sim.pool.calls for j in call]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_faulty_runs_finish_and_their_counters_show_it(ds, algorithm):
    rounds = 4
    clean = simulate(ds, algorithm=algorithm, rounds=rounds, local_epochs=4)
    faulty = simulate(ds, algorithm=algorithm, rounds=rounds, local_epochs=4,
                      drop=0.3, churn=0.3, stragglers=0.3)

    for sim in (clean, faulty):
        assert [r["round"] for r in sim.rows] == list(range(1, rounds + 1))
        assert all(0.0 <= r["ua_mean"] <= 1.0 for r in sim.rows)
        assert np.isfinite(np.concatenate([flatten(s) for s in sim.final_states()])).all()
        last = sim.rows[-1]
        assert last["bytes_sent_total"] == sum(sim.bytes_sent.values())
        assert last["messages_dropped"] <= last["messages_sent"]
    assert set(clean.steps_per_epoch.values()) == {1}  # 7-8 utterances, batch 32
    assert set(steps_of(clean)) == {4}
    assert 1 <= min(steps_of(faulty)) < 4  # stragglers do 10-50% of the steps, at least one
    assert column(clean, "online").min() == 8
    assert column(faulty, "online").min() < 8
    c, f = clean.rows[-1], faulty.rows[-1]
    assert c["messages_dropped"] == 0
    if algorithm == "local":
        assert c["messages_sent"] == f["messages_sent"] == f["bytes_sent_total"] == 0
        return
    assert f["messages_dropped"] > 0
    assert 0 < f["bytes_sent_total"] < c["bytes_sent_total"]
    assert np.all(np.diff(column(faulty, "bytes_sent_total")) > 0)


def test_churn_offline_peers_neither_train_nor_send(ds):
    sim = simulate(ds, algorithm="dpsgd", topology="ring", rounds=5, churn=0.3)

    online = column(sim, "online").astype(int)
    size = len(encode(Message(kind="model", run=sim.setup.run_id, sender=0, round=1,
                              params=sim.setup.init), secret=SIM_SECRET))
    assert [len(call) for call in sim.pool.calls] == list(online)
    sent = column(sim, "messages_sent").astype(int)
    # on a ring each online peer sends two messages a round, all of one size
    assert list(np.diff(sent, prepend=0)) == list(2 * online)
    assert list(column(sim, "bytes_sent_total").astype(int)) == list(sent * size)
    assert 0 < sim.rows[-1]["messages_dropped"] < sent[-1]


def test_drop_loses_about_that_share_of_messages(ds):
    sim = simulate(ds, algorithm="dpsgd", topology="ring", rounds=5, drop=0.3, local_epochs=0)

    last = sim.rows[-1]
    assert last["messages_sent"] == 5 * 8 * 2
    assert 0.15 < last["messages_dropped"] / last["messages_sent"] < 0.45


def test_fedavg_fraction_trains_a_share_of_clients(ds):
    sim = simulate(ds, algorithm="fedavg", fraction=0.5, rounds=3)

    assert [len(call) for call in sim.pool.calls] == [4, 4, 4]
    assert len({tuple(j.peer for j in call) for call in sim.pool.calls}) > 1
    last = [j.peer for j in sim.pool.calls[-1]]
    others = [i for i in range(8) if i not in last]
    states = sim.final_states()
    # clients not asked in the last round hold the global model it started from
    assert all(np.array_equal(flatten(states[i]), flatten(states[others[0]])) for i in others)
    # the server's model is the sample-weighted average of the last round's updates
    expected = combine([states[i] for i in last], [sim.peers[i].samples for i in last])
    for k, v in sim.server.params.items():
        np.testing.assert_allclose(v, expected[k], rtol=1e-6, atol=1e-7)


# --- worker processes


@pytest.mark.parametrize("schedule", ["constant", "onecycle"])
def test_the_plateau_rule_waits_for_a_decaying_schedule_to_come_down(ds, schedule):
    """A flat loss at the peak of one cycle is where its annealing still pays: the run stops
    on a plateau only once the learning rate is down to LATE_LR of its peak."""
    from gossipser.learn.schedule import lr_at
    from gossipser.sim.simulator import LATE_LR

    # Prepare: 100 rounds, patience 5, a training loss and consensus distance flat throughout
    setup = setup_run(ds, cfg=GossipConfig(peers=4, partition="iid", rounds=100, patience=5),
                      model=MODEL, train=TrainConfig(epochs=1, schedule=schedule),
                      test_speakers=TEST_SPEAKERS, seed=0)
    with SerialPool(setup.pool_spec(), [setup.shard(i) for i in range(setup.n_peers)]) as pool:
        sim = Simulator(setup, pool)
        # Execute: the first round the rule calls a plateau
        first = next(r for r in range(1, 101) if sim._plateau(dict.fromkeys(range(4), 1.0),
                                                              r, 1e-3) is not None)
    # Assert
    if schedule == "constant":
        assert first == 10  # two windows of 5 rounds
    else:
        assert first > 50 and lr_at(first - 1, 100, 1.0, schedule) > LATE_LR
        assert lr_at(first, 100, 1.0, schedule) <= LATE_LR


def test_process_pool_matches_serial_pool(ds):
    gossip = dict(algorithm="dpsgd", peers=6, rounds=2, local_epochs=1)
    assert torch.get_num_threads() == 1  # as in the workers (one_torch_thread)
    serial = simulate(ds, pool_cls=SerialPool, **gossip)

    parallel = simulate(ds, pool_cls=lambda spec, shards: ProcessPool(spec, shards, workers=2),
                        **gossip)

    assert parallel.pool.workers == 2
    assert_same_run(parallel, serial)


@pytest.mark.parametrize("init", ["shared", "independent", "perturbed"])
def test_training_processes_build_the_initial_models_this_process_would(ds, init):
    here = make_setup(ds, peers=5, init=init)
    there = make_setup(ds, peers=5, init=init)
    with ProcessPool(there.pool_spec(), [there.shard(i) for i in range(5)], workers=2) as pool:
        there.build_with(pool)
        # the shared model, plus one model per peer (independent) or two (perturbed)
        assert len(there.initial) == {"shared": 1, "independent": 6, "perturbed": 11}[init]
        np.testing.assert_array_equal(initial_states(there), initial_states(here))
        assert flatten(there.init).tobytes() == flatten(here.init).tobytes()
        # another model never reuses a cached one, even with the cache shared by replace
        cnn = dataclasses.replace(there, model=ModelConfig(kind="cnn", width=8))
        assert set(cnn.init) != set(there.init)
        assert set(cnn.init) == set(get_state(_Trainers(cnn.pool_spec(), [])._build()))
        # a worker that fails to build answers with one line, and the pool goes on
        with pytest.raises(GossipserError, match="training worker: ValueError"):
            pool.initial_states(["not a seed", 1, 2])  # worker 0 fails, 1 answers
        scores = pool.evaluate([there.init, there.init])
        assert scores[0].ua == scores[1].ua


def test_perturbed_starts_are_secret_offsets_around_the_shared_model(ds):
    """init = perturbed: every peer starts from the shared model plus an offset of its own
    with the initialiser's spread in each layer; a trained constant (a norm's scale and
    shift) gets one of spread CONSTANT_OFFSET, running statistics none. The peers' average
    stays near the shared model at its scale, where independent starts average towards
    zero."""
    from gossipser.gossip.plan import CONSTANT_OFFSET

    peers = 8
    setup = make_setup(ds, peers=peers, init="perturbed")
    cnn = setup_run(ds, cfg=GossipConfig(peers=peers, partition="iid", init="perturbed"),
                    model=ModelConfig(kind="cnn", width=8), train=TRAIN,
                    test_speakers=TEST_SPEAKERS, seed=0)
    norm = [cnn.initial_params(i)["features.0.1.weight"] for i in range(peers)]
    stats = [cnn.initial_params(i)["features.0.1.running_var"] for i in range(peers)]
    assert np.std(np.stack(norm) - 1.0) == pytest.approx(CONSTANT_OFFSET, rel=0.25)
    assert np.abs(norm[0] - norm[1]).min() > 0
    assert all((s == 1.0).all() for s in stats)
    starts = [setup.initial_params(i) for i in range(peers)]
    again = make_setup(ds, peers=peers, init="perturbed")  # the same seed, the same starts
    for i, s in enumerate(starts):
        assert flatten(s).tobytes() == flatten(again.initial_params(i)).tobytes()
    independent = make_setup(ds, peers=peers, init="independent")
    lone = [independent.initial_params(i) for i in range(peers)]
    trained = 0
    for k, shared in setup.init.items():
        offsets = np.stack([s[k] - shared for s in starts])
        assert all(s[k].dtype == shared.dtype for s in starts)
        if np.ptp(shared) == 0:  # a statistic every model starts from (the DNN's norm)
            assert not offsets.any(), k
            continue
        assert np.abs(offsets[0] - offsets[1]).max() > 0, k
        if shared.size >= 256:
            trained += 1
            assert offsets.std() == pytest.approx(shared.std(), rel=0.1), k
            scale = np.linalg.norm(shared)
            mean = np.mean([s[k] for s in starts], axis=0)
            assert np.linalg.norm(mean) > 0.9 * scale, k
            assert np.linalg.norm(np.mean([s[k] for s in lone], axis=0)) < 0.6 * scale, k
    assert trained >= 2
    with pytest.raises(ConfigError, match="gossip init must be one of shared, independent, "
                       "perturbed, got 'secret'"):
        GossipConfig(init="secret")


def test_a_failed_job_is_one_error_and_the_pool_goes_on(ds, monkeypatch):
    """Jobs travel in chunks to both workers at once; a job that fails in a worker is one
    GossipserError once every answer is in, and the next call gets its own results only."""
    import gossipser.learn.pool as pool_module

    monkeypatch.setattr(pool_module, "CHUNK", 2)  # three chunks per worker
    setup = make_setup(ds, peers=12, rounds=1)
    shards = [setup.shard(i) for i in range(12)]
    good = [TrainJob(peer=i, params=setup.init, steps=1) for i in range(12)]
    bad = list(good)
    bad[5] = TrainJob(peer=5, params={"no such layer": np.zeros(3, np.float32)}, steps=1)
    with ProcessPool(setup.pool_spec(), shards, workers=2) as pool, \
            SerialPool(setup.pool_spec(), shards) as serial:
        with pytest.raises(GossipserError, match="training worker: ConfigError"):
            pool.train(bad)
        # worker 1 holds peers 1, 3, 5, ...: its chunk (5, 7) stopped at 5, the rest ran; the
        # serial pool's trainers take the same jobs first
        serial.train([j for j in bad if j.peer not in (5, 7)])
        got, want = pool.train(good), serial.train(good)
    assert [r.peer for r in got] == list(range(12))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(flatten(a.params), flatten(b.params), rtol=1e-5, atol=1e-6)


def test_training_parameters_travel_through_shared_memory_with_the_same_results(ds):
    """A training job's parameters go to the worker through the peer's row of shared memory
    (not pickled through the pipe), to the same weights and losses as by pickle and as in
    this process, round after round; a job whose parameters do not fit the rows goes by
    pickle; the file behind the rows is gone once the workers have mapped it."""
    import tempfile

    setup = make_setup(ds, peers=6, rounds=1)
    shards = [setup.shard(i) for i in range(6)]

    def slot_files() -> set[Path]:
        return {f for d in (Path("/dev/shm"), Path(tempfile.gettempdir())) if d.is_dir()
                for f in d.glob("gossipser-slots-*")}

    before = slot_files()
    with ProcessPool(setup.pool_spec(), shards, workers=2) as shared, \
            ProcessPool(setup.pool_spec(), shards, workers=2, slots=False) as pickled, \
            SerialPool(setup.pool_spec(), shards) as serial:
        runs = {"shared": shared, "pickled": pickled, "serial": serial}
        start = {name: [setup.init] * 6 for name in runs}
        for _ in range(3):  # each round starts from the last round's results
            got = {name: pool.train([TrainJob(peer=i, params=start[name][i], steps=2)
                                     for i in range(6)]) for name, pool in runs.items()}
            for name in ("pickled", "serial"):
                for a, b in zip(got["shared"], got[name], strict=True):
                    assert flatten(a.params).tobytes() == flatten(b.params).tobytes()
                    assert a.loss == b.loss
            start = {name: [r.params for r in res] for name, res in got.items()}
        assert shared.uses_slots and not pickled.uses_slots
        assert slot_files() == before
        # float64 parameters do not fit the float32 rows: this call goes by pickle
        wide = {k: v.astype(np.float64) for k, v in start["serial"][0].items()}
        jobs = [TrainJob(peer=0, params=wide, steps=1)]
        a, b = shared.train(jobs)[0], serial.train(jobs)[0]
        assert flatten(a.params).tobytes() == flatten(b.params).tobytes()
        # one row per peer: a call with a peer twice goes by pickle
        twice = [TrainJob(peer=1, params=setup.init, steps=1)] * 2
        assert shared._slots_for(twice) is None and shared._slots_for(twice[:1]) is not None


@pytest.mark.parametrize("slots", [True, False])
def test_a_job_that_cannot_be_sent_is_one_error_not_a_hang(ds, slots):
    """A feeding thread that fails on its own (here a job that cannot be pickled) leaves no
    answer to wait for: the call ends with one GossipserError and the pool goes on."""
    setup = make_setup(ds, peers=4, rounds=1)
    good = [TrainJob(peer=i, params=setup.init, steps=1) for i in range(4)]
    bad = list(good)
    bad[1] = TrainJob(peer=1, params={"w": lambda: 0}, steps=1)  # worker 1: not picklable
    with ProcessPool(setup.pool_spec(), [setup.shard(i) for i in range(4)], workers=2,
                     slots=slots) as pool:
        with pytest.raises(GossipserError, match="training pool: .*(lambda|pickle)"):
            pool.train(bad)
        assert [r.peer for r in pool.train(good)] == [0, 1, 2, 3]


def test_parked_trainers_match_live_trainers(ds):
    """Thousands of peers keep no torch module each: parked between jobs (Adam moments and
    RNG states as arrays), a peer trains to the same weights as with its own live trainer,
    over several rounds so that the restored optimiser state matters."""
    gossip = dict(algorithm="gradient-tracking", peers=6, rounds=3, local_epochs=1)
    live = simulate(ds, pool_cls=lambda spec, shards: SerialPool(spec, shards, park=False),
                    **gossip)
    parked = simulate(ds, pool_cls=lambda spec, shards: SerialPool(spec, shards, park=True),
                      **gossip)
    assert not live.pool._t.park and live.pool._t.trainers
    assert parked.pool._t.park and not parked.pool._t.trainers  # no module per peer
    sharing = parked.pool._t.sharing  # a trainer per peer, all on the one shared module
    assert set(sharing) == set(range(6)) and len({id(t.model) for t in sharing.values()}) == 1
    assert_same_run(parked, live)
    # many peers in a process park by default
    many = [Shard(peer=i, x=np.zeros((4, 3), np.float32), y=np.zeros(4, int), seed=i)
            for i in range(PARK_ABOVE + 1)]
    assert _Trainers(parked.pool._t.spec, many).park
    assert not _Trainers(parked.pool._t.spec, many[:PARK_ABOVE]).park


def test_parked_private_trainers_continue_their_accounting(ds):
    """DP-SGD under parking: each job gets a module of its own; noise, sampling and the
    accountant continue as with a live trainer."""
    setup = make_setup(ds, peers=3)
    spec = dataclasses.replace(setup.pool_spec(), model=dataclasses.replace(MODEL, norm="group"),
                               train=dataclasses.replace(TRAIN, dp_noise=1.0))
    shards = [setup.shard(i) for i in range(3)]
    live, parked = _Trainers(spec, shards, park=False), _Trainers(spec, shards, park=True)
    params = {i: get_state(live.trainers[i].model) for i in range(3)}
    results = {}
    for pool in (live, parked):
        state = dict(params)
        for _ in range(3):
            for i in range(3):
                res = pool.train(TrainJob(peer=i, params=state[i], steps=2))
                state[i] = res.params
        results[pool.park] = (state, res.epsilon)
    (a, eps_a), (b, eps_b) = results[False], results[True]
    assert eps_a == pytest.approx(eps_b) and eps_a > 0
    for i in range(3):
        np.testing.assert_allclose(flatten(a[i]), flatten(b[i]), rtol=1e-5, atol=1e-6)


def assert_same_run(a: Simulator, b: Simulator) -> None:
    """Same final weights (to float32 rounding) and the same UA every round."""
    for x, y in zip(a.final_states(), b.final_states(), strict=True):
        np.testing.assert_allclose(flatten(x), flatten(y), rtol=1e-5, atol=1e-5)
    assert column(a, "ua_mean") == pytest.approx(column(b, "ua_mean"))


def test_ray_pool_matches_serial_pool(ds, sim_corpus, sim_cache, tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray not installed (pip install 'gossipser[ray]'; "
                        "make test installs it)")
    from gossipser.learn.pool_ray import RayPool

    gossip = dict(algorithm="gradient-tracking", peers=6, rounds=2, local_epochs=1)
    serial = simulate(ds, pool_cls=SerialPool, **gossip)
    on_ray = simulate(ds, pool_cls=lambda spec, shards: RayPool(spec, shards, workers=2),
                      **gossip)
    assert on_ray.pool.workers == 2
    assert_same_run(on_ray, serial)
    # and from the command line
    assert cli_simulate(sim_corpus, sim_cache, tmp_path / "ray", "--backend", "ray",
                        "--workers", "2", "--display", "none") == 0
    assert json.loads((tmp_path / "ray" / "summary.json").read_text())["final"]["ua_mean"] > 0


# --- command line


def cli_simulate(corpus: Path, cache: Path, out: Path, *extra: str) -> int:
    return main(["simulate", "--data", str(corpus), "--cache-dir", str(cache), "--out", str(out),
                 "--rounds", "2", "--test-speakers", "spk06", "--model", "dnn", "--width", "8",
                 "--workers", "1", *extra])


def test_cli_simulate_writes_metrics_and_summary(sim_corpus, sim_cache, tmp_path, capsys):
    out = tmp_path / "run"

    rc = cli_simulate(sim_corpus, sim_cache, out, "--display", "plain", "--peers", "8",
                      "--partition", "iid", "--topology", "ring")

    captured = capsys.readouterr()
    assert rc == 0, captured.err
    with (out / "metrics.csv").open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert [r["round"] for r in rows] == ["1", "2"]
    assert all(r["ua_mean"] != "" and r["consensus_distance"] != "" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "gradient-tracking" and summary["topology"] == "ring"
    assert summary["peers"] == 8 and summary["rounds"] == 2
    assert summary["wall_s"] >= 0
    assert summary["bytes_sent_total"] >= summary["bytes_sent_max_peer"] > 0
    final = summary["final"]
    for key in ("ua_mean", "ua_min", "ua_max", "wa_mean", "macro_f1_mean", "ua_avg_model"):
        assert 0.0 <= final[key] <= 1.0, key
    assert final["ua_min"] <= final["ua_mean"] <= final["ua_max"]
    assert final["consensus_distance"] >= 0
    assert summary["test_speakers"] == ["spk06"]
    assert "round 2/2" in captured.out and "final: UA mean" in captured.out
    assert captured.err == ""


@pytest.mark.parametrize("algorithm", ["fedavg", "push-sum"])
def test_cli_live_display_on_a_non_terminal(sim_corpus, sim_cache, tmp_path, capsys, algorithm):
    rc = cli_simulate(sim_corpus, sim_cache, tmp_path / "run", "--display", "live",
                      "--algorithm", algorithm)

    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "gossip simulation" in captured.out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["algorithm"] == algorithm and summary["peers"] == 5  # one per speaker


def test_cli_topology_show_make_and_show_file(tmp_path, capsys):
    assert main(["topology", "show", "ring", "--peers", "8"]) == 0
    shown = capsys.readouterr().out
    assert "8 nodes, 8 edges" in shown and "diameter 4" in shown
    assert "second largest eigenvalue modulus" in shown

    path = tmp_path / "reg.txt"
    assert main(["topology", "make", "regular:4", "--peers", "10", "--out", str(path)]) == 0
    assert "wrote 10 nodes, 20 edges" in capsys.readouterr().out
    assert main(["topology", "show", str(path)]) == 0
    assert "10 nodes, 20 edges, degree 4-4" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "needle"), [
    (["--algorithm", "gossipy"], "unknown algorithm"),
    (["--drop", "1.5"], "drop"),
    (["--peers", "12", "--partition", "speaker"], "only 5 training speakers"),
    (["--topology", "TOPOFILE", "--peers", "6", "--partition", "iid"], "peers=6"),
    (["--test-speakers", "spk99"], "spk99"),
    (["--robust", "krum"], "robust merge 'krum'"),
    (["--algorithm", "push-sum", "--robust", "median"], "push-sum has no robust merge"),
    (["--byzantine", "9"], "byzantine '9'"),
    (["--byzantine", "1", "--attack", "scale:abc"], "attack 'scale:abc'"),
])
def test_cli_simulate_bad_input_is_one_line_and_exit_2(
    sim_corpus, sim_cache, tmp_path, capsys, args, needle,
):
    topo = tmp_path / "ten.txt"
    assert main(["topology", "make", "ring", "--peers", "10", "--out", str(topo)]) == 0
    capsys.readouterr()
    args = [str(topo) if a == "TOPOFILE" else a for a in args]

    rc = main(["simulate", "--data", str(sim_corpus), "--cache-dir", str(sim_cache),
               "--out", str(tmp_path / "run"), "--model", "dnn", "--width", "8",
               "--workers", "1", "--rounds", "1", "--display", "none",
               *(["--test-speakers", "spk06"] if "--test-speakers" not in args else []), *args])

    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("gossipser: error:"), err
    assert needle in err


def test_cli_topology_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["topology", "show", "ring", "--peers", "2"]) == 2
    assert main(["topology", "show", str(tmp_path / "missing.txt")]) == 2

    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("gossipser: error:") for line in err)


# --- attacked simulations


def _honest_drift(sim) -> float:
    """How far the honest peers' final models lie from the honest peers' initial mean, in
    units of the largest honest initial weight."""
    init = np.stack([flatten(sim.setup.initial_params(i)) for i in sim.honest])
    start, scale = init.mean(axis=0), np.abs(init).max()
    return max(float(np.abs(flatten(sim.peers[i].params) - start).max())
               for i in sim.honest) / scale


def test_one_scaled_attacker_wrecks_plain_dpsgd_and_not_a_robust_merge(ds):
    base = dict(algorithm="dpsgd", topology="regular:4", peers=8, rounds=15, local_epochs=0,
                init="independent", eval_every=15, byzantine="ids:3", attack="scale:-10")
    plain = simulate(ds, **base)
    assert plain.setup.byzantine == {3} and plain.honest == [0, 1, 2, 4, 5, 6, 7]
    assert _honest_drift(plain) > 10
    init = np.stack([flatten(plain.setup.initial_params(i)) for i in plain.honest])
    for rule in ("trimmed-mean:1", "median", "krum:1", "clip:auto"):
        sim = simulate(ds, **base, robust=rule)
        assert _honest_drift(sim) < (0.5 if rule.startswith(("krum", "clip")) else 1.0), rule
        if rule in ("trimmed-mean:1", "median"):
            # one attacker among each peer's five models: every honest value stays within the
            # honest peers' initial range, coordinate by coordinate
            final = np.stack([flatten(sim.peers[i].params) for i in sim.honest])
            assert (final >= init.min(axis=0) - 1e-6).all(), rule
            assert (final <= init.max(axis=0) + 1e-6).all(), rule


@pytest.mark.parametrize(("algorithm", "attack"), [
    ("dpsgd", "signflip"), ("dpsgd", "labelflip"), ("dpsgd", "gaussian:1"),
    ("gossip-learning", "scale:-10"), ("gossip-learning", "stale")])
def test_attacked_runs_with_a_robust_merge_finish_and_report_honest_peers(
        ds, algorithm, attack):
    sim = simulate(ds, algorithm=algorithm, topology="regular:4", peers=8, rounds=4,
                   byzantine="2", attack=attack, robust="trimmed-mean:1", drop=0.2)
    s = sim.summary(1.0)
    assert s["byzantine"] == sorted(sim.setup.byzantine) and len(s["byzantine"]) == 2
    assert s["attack"] == attack and s["robust"] == "trimmed-mean:1"
    assert len(s["final"]["ua_per_peer"]) == 6
    assert np.isfinite(s["final"]["ua_mean"]) and np.isfinite(s["final"]["consensus_distance"])
    assert len(sim.rows) == 4


def test_cli_simulate_starts_workers_early_and_stops_them_on_a_bad_input(
        sim_corpus, sim_cache, tmp_path, capsys):
    import multiprocessing

    rc = main(["simulate", "--data", str(sim_corpus), "--cache-dir", str(sim_cache),
               "--out", str(tmp_path / "bad"), "--model", "dnn", "--width", "8",
               "--workers", "2", "--test-speakers", "spk99", "--display", "none"])
    assert rc == 2 and "spk99" in capsys.readouterr().err
    assert multiprocessing.active_children() == []
    rc = main(["simulate", "--data", str(sim_corpus), "--cache-dir", str(sim_cache),
               "--out", str(tmp_path / "good"), "--model", "dnn", "--width", "8",
               "--workers", "2", "--test-speakers", "spk06", "--rounds", "1",
               "--display", "plain"])
    assert rc == 0
    assert "set up in" in capsys.readouterr().out
    summary = json.loads((tmp_path / "good" / "summary.json").read_text())
    assert 0 < summary["setup_s"] < 120
    assert multiprocessing.active_children() == []


def test_consensus_distance_streams_the_same_figures_as_one_stacked_copy():
    """Mean summed model by model and differences a block at a time: the same sums in the
    same order as stacking every model, private and statistic entries left out."""
    rng = np.random.default_rng(5)
    states = [{"a": rng.standard_normal((4, 5)).astype(np.float32),
               "b": rng.standard_normal(3).astype(np.float32),
               "bn.running_mean": rng.standard_normal(3).astype(np.float32),
               "secret": rng.standard_normal(2).astype(np.float32)} for _ in range(37)]
    dist, per_peer = consensus_distance_of(states, skip=frozenset({"secret"}), block=16)
    want = np.zeros(37)
    for k in ("a", "b"):
        x = np.stack([np.ravel(s[k]) for s in states])
        d = x - x.mean(axis=0, dtype=np.float64)
        want += np.einsum("ij,ij->i", d, d)
    assert per_peer.tobytes() == want.tobytes() and dist == float(want.mean())
    assert consensus_distance_of(states[:1])[0] == 0.0
