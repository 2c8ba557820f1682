"""Byzantine-robust merges and attacks on literal arrays (attacked simulations: test_simulator)."""

from __future__ import annotations

import numpy as np
import pytest

from gossipser.errors import ConfigError
from gossipser.gossip.byzantine import Attack, byzantine_ids, parse_attack
from gossipser.gossip.robust import (
    RobustRule,
    clipped_gossip,
    coordinate_median,
    krum_scores,
    merge_params,
    multi_krum,
    parse_robust,
    trimmed_mean,
)
from gossipser.gossip.settings import GossipConfig

# --- the rules on literal arrays


def test_trimmed_mean_drops_k_extremes_per_coordinate():
    x = np.array([[1, 10], [2, 20], [3, 30], [100, -100], [4, 40]], dtype=float)
    np.testing.assert_allclose(trimmed_mean(x, 1), [3.0, 20.0])
    np.testing.assert_allclose(trimmed_mean(x, 0), x.mean(axis=0))
    # k shrinks to (n - 1) // 2 = 1 when 3 rows arrived: the middle value
    np.testing.assert_allclose(trimmed_mean(x[:3], 2), [2.0, 20.0])


def test_median_per_coordinate_odd_and_even():
    np.testing.assert_allclose(coordinate_median(np.array([[1.0, 5], [2, -7], [100, 6]])),
                               [2.0, 5.0])
    np.testing.assert_allclose(coordinate_median(np.array([[1.0], [2], [3], [100]])), [2.5])


def test_krum_scores_and_multi_krum_drop_the_outlier():
    x = np.array([[0, 0], [1, 0], [0, 1], [50, 50], [1, 1]], dtype=float)
    # n=5, f=1: each row's two nearest rows; the outlier's nearest are (1,1) and (1,0)/(0,1)
    np.testing.assert_allclose(krum_scores(x, 1), [2, 2, 2, 4802 + 4901, 2])
    np.testing.assert_allclose(multi_krum(x, 1), [0.5, 0.5])


def test_clipped_gossip_fixed_and_auto_radius():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    np.testing.assert_allclose(clipped_gossip(x, None, 1.0), [0.2, 0.6])
    # auto: tau = the lower median of the distances (1, 5) = 1; 5 is beyond 4 radii
    np.testing.assert_allclose(clipped_gossip(x, None, None), [0.0, 1 / 3])
    # three neighbours at 1, 2 and 7: tau = 2, the farthest is clipped to it
    y = np.array([[0.0], [1.0], [2.0], [7.0]])
    np.testing.assert_allclose(clipped_gossip(y, None, None), [(1 + 2 + 2) / 4])
    # at 10 (beyond 4 radii) it is left out: its share stays home; a fixed radius only clips
    y[3] = 10.0
    np.testing.assert_allclose(clipped_gossip(y, None, None), [(1 + 2) / 4])
    np.testing.assert_allclose(clipped_gossip(y, None, 2.0), [(1 + 2 + 2) / 4])
    # weights: row 0 keeps its share; a neighbour within the radius is not clipped
    np.testing.assert_allclose(clipped_gossip(x, [2, 1, 1], 10.0), [0.75, 1.25])


def test_one_outlier_moves_the_average_but_not_the_robust_rules():
    honest = np.array([[1.0, 1.0], [1.1, 0.9], [0.9, 1.1], [1.0, 1.05]])
    attacked = np.vstack([honest, [[-1e6, 1e6]]])
    for rule in ("trimmed-mean:1", "median", "krum:1", "clip:auto"):
        merged = parse_robust(rule).apply(attacked, [1.0] * 5)
        assert np.abs(merged - 1.0).max() < 0.15, rule
    assert np.abs(attacked.mean(axis=0)).max() > 1e5


def test_merge_params_keeps_names_shapes_and_dtypes():
    a = {"w": np.ones((2, 2), np.float32), "n": np.array(3, np.int64), "b": np.zeros(3)}
    b = {"w": np.full((2, 2), 3, np.float32), "n": np.array(5, np.int64), "b": np.ones(3)}
    c = {"w": np.full((2, 2), 100, np.float32), "n": np.array(4, np.int64), "b": np.ones(3)}
    out = merge_params(RobustRule("median"), [a, b, c])
    assert list(out) == ["w", "n", "b"]
    assert out["w"].dtype == np.float32 and out["w"].shape == (2, 2)
    np.testing.assert_array_equal(out["w"], np.full((2, 2), 3))
    assert out["n"].dtype == np.int64 and int(out["n"]) == 4
    np.testing.assert_array_equal(out["b"], np.ones(3))


@pytest.mark.parametrize(("spec", "text"), [
    ("trimmed-mean:2", "trimmed-mean:2"), ("median", "median"), ("krum:1", "krum:1"),
    ("clip:0.5", "clip:0.5"), ("clip:auto", "clip:auto"), ("Median", "median")])
def test_parse_robust(spec, text):
    assert str(parse_robust(spec)) == text


@pytest.mark.parametrize("spec", ["trimmed-mean", "trimmed-mean:0", "krum:x", "median:2",
                                  "clip:-1", "clip:nan", "mean", "krum:1.5"])
def test_parse_robust_rejects_bad_specs_in_one_line(spec):
    with pytest.raises(ConfigError) as err:
        parse_robust(spec)
    assert "\n" not in str(err.value) and spec in str(err.value)


def test_parse_robust_none():
    assert parse_robust("none") is None and parse_robust(None) is None


def test_robust_needs_an_algorithm_that_merges_through_it():
    GossipConfig(algorithm="gossip-learning", robust="median")
    with pytest.raises(ConfigError, match="push-sum has no robust merge"):
        GossipConfig(algorithm="push-sum", robust="median")
    with pytest.raises(ConfigError, match="attack"):
        GossipConfig(attack="flip")


# --- the attacks


def test_attacks_forge_what_they_send():
    rng = np.random.default_rng(0)
    x = {"w": np.array([1.0, -2.0], np.float32), "n": np.array(7, np.int64)}
    init = {"w": np.array([5.0, 5.0], np.float32), "n": np.array(0, np.int64)}
    sign = parse_attack("signflip").forge(x, initial=init, rng=rng)
    np.testing.assert_array_equal(sign["w"], [-1.0, 2.0])
    assert int(sign["n"]) == 7  # integer counters travel unchanged
    np.testing.assert_array_equal(parse_attack("scale:-10").forge(x, initial=init, rng=rng)["w"],
                                  [-10.0, 20.0])
    np.testing.assert_array_equal(parse_attack("stale").forge(x, initial=init, rng=rng)["w"],
                                  [5.0, 5.0])
    assert parse_attack("labelflip").forge(x, initial=init, rng=rng) is x
    big = {"w": np.zeros(20000, np.float32)}
    noisy = parse_attack("gaussian:2").forge(big, initial=big, rng=rng)["w"]
    assert noisy.dtype == np.float32 and noisy.std() == pytest.approx(2.0, rel=0.03)
    np.testing.assert_array_equal(Attack("labelflip").flip_labels(np.array([0, 1, 3]), 4),
                                  [3, 2, 0])
    np.testing.assert_array_equal(Attack("signflip").flip_labels(np.array([0, 1]), 4), [0, 1])


def test_a_silent_attacker_takes_models_in_but_never_sends_one():
    from gossipser.gossip.peer import Peer

    def peer(pid: int, attack: Attack | None) -> Peer:
        return Peer(pid=pid, neighbours=[1 - pid], algorithm="dpsgd",
                    params={"w": np.full(2, float(pid), np.float32)}, samples=1, run="r",
                    rng=np.random.default_rng(pid), mix_row={0: 0.5, 1: 0.5}, attack=attack)

    honest, silent = peer(0, None), peer(1, parse_attack("silent"))
    for p in (honest, silent):
        p.begin_round(1)
    assert silent.outgoing() == [] and len(honest.outgoing()) == 1
    for _dest, msg in honest.outgoing():
        silent.receive(msg)
    for p in (honest, silent):
        p.end_round()
    np.testing.assert_array_equal(silent.params["w"], [0.5, 0.5])  # it mixed ours in
    np.testing.assert_array_equal(honest.params["w"], [0.0, 0.0])  # its weight stayed home


@pytest.mark.parametrize("spec", ["flip", "scale", "scale:x", "gaussian:0", "stale:1",
                                  "scale:inf", "silent:1"])
def test_parse_attack_rejects_bad_specs(spec):
    with pytest.raises(ConfigError):
        parse_attack(spec)


def test_byzantine_ids_count_is_drawn_from_the_seed_and_ids_are_checked():
    a = byzantine_ids("3", 10, seed=1)
    assert len(a) == 3 and a == byzantine_ids("3", 10, seed=1)
    assert byzantine_ids("3,7", 10, 0) == {3, 7} and byzantine_ids("ids:4", 10, 0) == {4}
    assert byzantine_ids("", 10, 0) == frozenset()
    for bad in ("10", "3,12", "x", "0,1,2"):
        with pytest.raises(ConfigError):
            byzantine_ids(bad, 3 if bad == "0,1,2" else 10, 0)
