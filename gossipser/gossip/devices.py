"""Devices and links in time, for the virtual clock (`gossipser.sim.virtual`): how fast each
peer computes. Links take their latency and bandwidth from the run config or from the edge
attributes of a JSON topology file."""

from __future__ import annotations

import numpy as np

from gossipser.errors import ConfigError


def parse_device_speed(spec: str) -> tuple[tuple[float, float] | None, tuple[float, float]]:
    """`equal` or `lognormal:MU:SIGMA`, optionally followed by `,slow:FRACTION:FACTOR` (that
    share of the peers is FACTOR times slower). Returns ((mu, sigma) or None, (fraction,
    factor))."""
    base, _, slow = spec.partition(",")
    kind, *args = base.split(":")
    try:
        if kind == "equal" and not args:
            dist = None
        elif kind == "lognormal" and len(args) == 2:
            dist = (float(args[0]), float(args[1]))
            if not dist[1] >= 0:
                raise ValueError
        else:
            raise ValueError
        fraction, factor = 0.0, 1.0
        if slow:
            name, *sargs = slow.split(":")
            if name != "slow" or len(sargs) != 2:
                raise ValueError
            fraction, factor = float(sargs[0]), float(sargs[1])
            if not (0 <= fraction <= 1 and factor >= 1):
                raise ValueError
    except ValueError:
        raise ConfigError(f"device speed {spec!r}: use equal or lognormal:MU:SIGMA (SIGMA >= 0), "
                          "optionally ,slow:FRACTION:FACTOR (e.g. lognormal:0:0.5,slow:0.1:10)"
                          ) from None
    return dist, (fraction, factor)


def device_speeds(spec: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Each peer's compute speed (1: a step takes `step_time`)."""
    dist, (fraction, factor) = parse_device_speed(spec)
    speed = np.ones(n) if dist is None else np.exp(rng.normal(dist[0], dist[1], size=n))
    slow = rng.permutation(n)[: int(round(fraction * n))]
    speed[slow] /= factor
    return speed
