"""How the automatic step budget is shared between peers of uneven shard sizes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from gossipser.data.dataset import Dataset, load_dataset
from gossipser.errors import ConfigError
from gossipser.gossip.plan import plan_run, setup_from_plan, setup_run
from gossipser.gossip.settings import GossipConfig
from gossipser.learn.jobs import TrainJob
from gossipser.learn.pool import SerialPool
from gossipser.learn.settings import ModelConfig, TrainConfig
from gossipser.sim.simulator import Simulator

MODEL = ModelConfig(kind="dnn", width=8)
TRAIN = TrainConfig(epochs=4, batch_size=4)
TEST = ("spk06",)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    from gossipser.data.synth import SynthConfig
    from gossipser.data.synth_corpus import write_corpus

    root = tmp_path_factory.mktemp("uneven")
    write_corpus(root, SynthConfig(speakers=6, per_speaker=(2, 24), duration_s=0.5, seed=3,
                                   emotions=("neutral", "sad", "angry")))
    return load_dataset(root, cache_dir=tmp_path_factory.mktemp("uneven_cache"))


def _setup(ds: Dataset, share: str, rounds: int = 2):
    return setup_run(ds, cfg=GossipConfig(step_share=share, rounds=rounds, topology="complete"),
                     model=MODEL, train=TRAIN, test_speakers=TEST, seed=0)


def test_equal_share_gives_every_peer_the_centralized_steps(uneven: Dataset) -> None:
    setup = _setup(uneven, "equal")
    steps = [setup.local_steps(p, 1) for p in range(setup.n_peers)]
    assert set(steps) == {setup.auto_local_steps}


def test_sample_share_is_proportional_to_shard_size_with_the_same_mean(uneven: Dataset) -> None:
    # Prepare
    setup = _setup(uneven, "samples")
    sizes = np.array([len(p) for p in setup.parts], dtype=float)
    assert sizes.max() >= 4 * sizes.min()  # the corpus really is uneven
    # Execute
    steps = np.array([setup.local_steps(p, 1) for p in range(setup.n_peers)], dtype=float)
    # Assert: each peer's steps follow its share of the mean shard (rounded, at least 1)
    expected = np.maximum(1, np.round(setup.auto_local_steps * sizes / sizes.mean()))
    np.testing.assert_array_equal(steps, expected)
    assert steps.mean() == pytest.approx(setup.auto_local_steps, rel=0.25)
    assert steps[sizes.argmax()] > steps[sizes.argmin()]


def test_a_peer_that_cannot_form_a_batch_trains_nothing(uneven: Dataset) -> None:
    setup = _setup(uneven, "samples")
    assert setup.local_steps(0, 0) == 0  # fewer than two utterances: no steps per epoch


def test_explicit_local_epochs_are_per_shard_whatever_the_share(uneven: Dataset) -> None:
    for share in ("samples", "equal"):
        setup = setup_run(uneven, cfg=GossipConfig(step_share=share, local_epochs=2,
                                                   topology="complete"),
                          model=MODEL, train=TRAIN, test_speakers=TEST, seed=0)
        assert setup.local_steps(0, 3) == 6


class _Recording(SerialPool):
    def __init__(self, spec, shards) -> None:
        super().__init__(spec, shards)
        self.jobs: list[TrainJob] = []

    def train(self, jobs: Sequence[TrainJob]):
        self.jobs.extend(jobs)
        return super().train(jobs)


def test_the_simulator_trains_each_peer_its_share(uneven: Dataset) -> None:
    # Prepare
    setup = _setup(uneven, "samples", rounds=2)
    # Execute
    with _Recording(setup.pool_spec(), [setup.shard(i) for i in range(setup.n_peers)]) as pool:
        sim = Simulator(setup, pool)
        summary = sim.run()
    # Assert
    per_peer = summary["local_steps_per_round_per_peer"]
    assert len(set(per_peer)) > 1
    for job in pool.jobs:
        assert job.steps == per_peer[job.peer]
    assert summary["optimizer_steps"] == 2 * sum(per_peer)
    # the planned steps (the learning-rate schedule, DP calibration) follow the share too
    assert [setup.shard(i).planned_steps for i in range(setup.n_peers)] == [
        2 * s for s in per_peer]


def test_a_networked_peer_computes_the_same_share_from_its_shard_alone(uneven: Dataset,
                                                                        tmp_path: Path) -> None:
    # Prepare: a peer on the network loads only its own files and the evaluation set
    cfg = GossipConfig(step_share="samples", topology="complete")
    plan = plan_run(uneven.corpus, cfg=cfg, test_speakers=TEST, seed=0)
    full = setup_from_plan(uneven, plan, model=MODEL, train=TRAIN)
    pid = 2
    own = load_dataset(uneven.corpus.root, cache_dir=tmp_path,
                       keep=lambda u: str(u.path) in plan.needed_by(pid))
    # Execute
    alone = setup_from_plan(own, plan, model=MODEL, train=TRAIN)
    # Assert
    assert alone.local_steps(pid, 1) == full.local_steps(pid, 1)


def test_an_unknown_share_is_one_line() -> None:
    with pytest.raises(ConfigError, match="step_share"):
        GossipConfig(step_share="fair")
