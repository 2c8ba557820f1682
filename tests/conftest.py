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
    from gossipser.synth import SynthConfig, write_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    write_corpus(root, SynthConfig(speakers=4, per_emotion=3, emotions=TINY_EMOTIONS))
    return root
