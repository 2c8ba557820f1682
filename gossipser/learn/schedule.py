"""The learning-rate schedule, the same on every holder (torch-free: the simulator reads it).

One cycle over the optimiser steps a holder plans to take (centralized: epochs x steps per
epoch; a gossip peer: rounds x local steps): a warm-up over the first tenth from lr/25 to lr,
then a cosine down to lr/25e4. It is a function of the step count alone, so a resumed
checkpoint continues on the same curve.
"""

from __future__ import annotations

import math

WARMUP = 0.1
START_DIV = 25.0
FINAL_DIV = 1e4


def lr_at(step: int, total: int, lr: float, schedule: str) -> float:
    """The learning rate of optimiser step `step` (0-based) of `total` planned steps."""
    if schedule == "constant" or total <= 0:
        return lr
    low, warm = lr / START_DIV, warmup_steps(total)
    if step < warm:
        return low + (lr - low) * (1 - math.cos(math.pi * step / warm)) / 2
    done = min(1.0, (step - warm) / max(1, total - warm))
    end = low / FINAL_DIV
    return end + (lr - end) * (1 + math.cos(math.pi * done)) / 2


def annealed(step: int, total: int, schedule: str, share: float) -> bool:
    """Whether the schedule has come down, past its warm-up, to `share` of its peak learning
    rate by step `step` of `total` (always under a constant schedule)."""
    if schedule == "constant" or total <= 0:
        return True
    return step >= warmup_steps(total) and lr_at(step, total, 1.0, schedule) <= share


def warmup_steps(total: int) -> int:
    """The steps of one cycle's warm-up, of `total` planned."""
    return max(1, int(WARMUP * total))
