"""Shared test fixtures."""

from pathlib import Path

import pytest

# The corpus sits beside the repository: <workspace>/shared/data/ravdess.
RAVDESS_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"


@pytest.fixture
def ravdess_root() -> Path:
    """The real RAVDESS folder; skips the test when it is not there."""
    if not RAVDESS_ROOT.is_dir():
        pytest.skip(f"RAVDESS not found at {RAVDESS_ROOT}")
    return RAVDESS_ROOT


# Four speakers x four emotions x three takes: 48 three-second WAVs, written in about a second.
TINY_EMOTIONS = ("neutral", "happy", "sad", "angry")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic corpus (`<emotion>/spkNN_uNNN.wav`, speakers spk01..spk04), shared
    read-only by the whole session: copy it before changing anything in it."""
    from gossipser.data.synth import SynthConfig
    from gossipser.data.synth_corpus import write_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    write_corpus(root, SynthConfig(speakers=4, per_emotion=3, emotions=TINY_EMOTIONS))
    return root


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread_everywhere():
    """The whole suite runs torch on one intra-op thread (see `one_torch_thread`); worker
    processes of the simulator do the same."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run torch on one intra-op thread for a module. Tiny models gain nothing from threads,
    and on a busy machine two threads that wait on each other at every op of an LSTM step can
    be a thousand times slower (seconds per forward pass)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sim_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic corpus for simulator runs: 6 speakers x 4 emotions x 3 utterances
    (spk06 is the usual test speaker)."""
    from gossipser.data.synth import SynthConfig
    from gossipser.data.synth_corpus import write_corpus

    root = tmp_path_factory.mktemp("sim_corpus")
    write_corpus(root, SynthConfig(speakers=6, per_emotion=3,
                                   emotions=("neutral", "happy", "sad", "angry")))
    return root


@pytest.fixture(scope="session")
def sim_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim_cache")
