"""What local training does to a batch, the same on every holder.

Augmentation acts on fixed-length MFCC sequences (batch, frames, coefficients), sized from the
input so that it adapts to any --max-frames and feature width:
- `shift`: each utterance rolled in time by up to a fifth of its frames (where in the window
  the speech sits carries no emotion);
- `mask`: two time masks of up to a seventh of the frames and one band of up to a
  thirteenth of the coefficients set to zero (SpecAugment on MFCCs).
The DNN's utterance statistics are left alone. Draws come from the trainer's own generator,
so a peer's run depends only on its seed.
"""

from __future__ import annotations

import torch


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

