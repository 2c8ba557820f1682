"""Typed config validation: a wrong type anywhere is one line naming section, key, what was
expected and what was given."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gossipser.cli.main import main
from gossipser.cli.options import DataConfig, data_config
from gossipser.config import build, check_types, describe_type, read_toml
from gossipser.data.features import FeatureConfig
from gossipser.data.synth import SynthConfig
from gossipser.errors import ConfigError
from gossipser.gossip.settings import GossipConfig
from gossipser.learn.settings import ModelConfig, TrainConfig
from gossipser.net.node import NetworkConfig

SECTIONS = {"features": FeatureConfig, "model": ModelConfig, "train": TrainConfig,
            "gossip": GossipConfig, "network": NetworkConfig, "data": DataConfig}


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("gossip", "rounds", "ten", "[gossip] rounds: expected an integer, got 'ten'"),
    ("gossip", "rounds", 2.5, "[gossip] rounds: expected an integer, got 2.5"),
    ("gossip", "rounds", True, "[gossip] rounds: expected an integer, got True"),
    ("gossip", "drop", "0.1", "[gossip] drop: expected a number, got '0.1'"),
    ("gossip", "peers", "9", "[gossip] peers: expected an integer or nothing"),
    ("features", "fmax", [8000], "[features] fmax: expected a number or nothing"),
    ("features", "cmvn", 1, "[features] cmvn: expected true or false, got 1"),
    ("model", "kind", 3, "[model] kind: expected a string, got 3"),
    ("train", "lr", False, "[train] lr: expected a number, got False"),
    ("network", "base_port", "7401", "[network] base_port: expected an integer, got '7401'"),
    ("data", "emotions", 4, "[data] emotions: expected a string or a list of strings or"),
    ("data", "seed", "zero", "[data] seed: expected an integer, got 'zero'"),
])
def test_a_wrong_type_names_section_key_expected_and_given(section, key, value, expected):
    with pytest.raises(ConfigError) as info:
        build(SECTIONS[section], {key: value}, {}, section)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_right_types_pass_and_ints_are_numbers():
    cfg = build(FeatureConfig, {"frame_ms": 25, "fmax": None, "n_mfcc": 20}, {}, "features")
    assert cfg.frame_ms == 25 and cfg.n_mfcc == 20
    assert build(DataConfig, {"emotions": ["angry", "sad"], "test_speakers": ["21", 22]}, {},
                 "data").test_speakers == ["21", 22]
    assert SynthConfig(emotions=["sad", "angry"]).emotions == ("sad", "angry")


def test_every_config_dataclass_checks_its_types_even_from_code():
    for section, cls in SECTIONS.items():
        field = next(f for f in dataclasses.fields(cls) if f.type in ("int", "str", "float"))
        wrong = [] if field.type != "str" else 0
        with pytest.raises(ConfigError, match=rf"^\[{section}\] {field.name}: expected"):
            cls(**{field.name: wrong})
    with pytest.raises(ConfigError, match=r"^\[synth\] emotions: expected a list of strings"):
        SynthConfig(emotions="angry")


def test_describe_type_reads_like_english():
    assert describe_type(int) == "an integer"
    assert describe_type(float | None) == "a number or nothing (leave the key out)"
    assert describe_type(tuple[str, ...]) == "a list of strings"


def test_check_types_reports_the_first_wrong_field():
    @dataclasses.dataclass
    class Two:
        a: int = 1
        b: str = "x"

    check_types(Two(), "two")
    with pytest.raises(ConfigError, match=r"^\[two\] b: expected a string, got 2$"):
        check_types(Two(b=2), "two")


def test_unknown_key_and_missing_data_section_values(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"\[data\]: unknown key\(s\) \['pth'\]"):
        data_config({"data": {"pth": "x"}})
    assert data_config({}) == DataConfig()
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[gossip]\n")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        read_toml(bad)


def test_the_cli_prints_one_line_for_a_mistyped_toml(tmp_path: Path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('[gossip]\nrounds = "ten"\n')
    rc = main(["simulate", "--config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].endswith("[gossip] rounds: expected an integer, got 'ten'")
