"""What local training does to a batch and to the step size, the same on every holder.

Augmentation acts on fixed-length MFCC sequences (batch, frames, coefficients), sized from the
input so that it adapts to any --max-frames and feature width:
- `shift`: each utterance rolled in time by up to a fifth of its frames (where in the window
  the speech sits carries no emotion);
- `mask`: two time masks of up to a seventh of the frames and one band of up to a
  thirteenth of the coefficients set to zero (SpecAugment on MFCCs).
The DNN's utterance statistics are left alone. Draws come from the trainer's own generator,
so a peer's run depends only on its seed.

The learning-rate schedule is one cycle over the optimiser steps a holder plans to take
(centralized: epochs x steps per epoch; a gossip peer: rounds x local steps): a warm-up over
the first tenth from lr/25 to lr, then a cosine down to lr/25e4. It is a function of the step
count alone, so a resumed checkpoint continues on the same curve.
"""

from __future__ import annotations

import math

import torch

WARMUP = 0.1
START_DIV = 25.0
FINAL_DIV = 1e4


def augment(x: torch.Tensor, names: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """An augmented copy of a (batch, frames, coefficients) batch; other shapes unchanged."""
    if not names or x.dim() != 3 or len(x) == 0:
        return x
    b, t, d = x.shape
    frames = torch.arange(t)
    if "shift" in names:
        reach = t // 5
        shift = torch.randint(-reach, reach + 1, (b, 1), generator=generator)
        x = torch.gather(x, 1, ((frames - shift) % t).unsqueeze(2).expand(b, t, d))
    if "mask" in names:
        keep = torch.ones(b, t, d, dtype=torch.bool)
        for _ in range(2):
            keep &= ~_band(b, t, t // 7, generator).unsqueeze(2)
        keep &= ~_band(b, d, d // 13, generator).unsqueeze(1)
        x = x * keep
    return x


def _band(b: int, n: int, widest: int, generator: torch.Generator) -> torch.Tensor:
    """(b, n) bool: per row, one run of 0..widest consecutive True entries."""
    width = torch.randint(0, widest + 1, (b, 1), generator=generator)
    start = (torch.rand(b, 1, generator=generator) * (n - width + 1)).long()
    pos = torch.arange(n)
    return (pos >= start) & (pos < start + width)


def lr_at(step: int, total: int, lr: float, schedule: str) -> float:
    """The learning rate of optimiser step `step` (0-based) of `total` planned steps."""
    if schedule == "constant" or total <= 0:
        return lr
    low, warm = lr / START_DIV, max(1, int(WARMUP * total))
    if step < warm:
        return low + (lr - low) * (1 - math.cos(math.pi * step / warm)) / 2
    done = min(1.0, (step - warm) / max(1, total - warm))
    end = low / FINAL_DIV
    return end + (lr - end) * (1 + math.cos(math.pi * done)) / 2
