"""DP-SGD for one holder's data: per-sample clipping and Gaussian noise (Opacus), Poisson
batches, and an RDP accountant that says what (epsilon, delta) the steps so far cost.

The guarantee is per utterance (example-level DP) and per peer: each peer accounts for its own
shard, with sample rate batch / shard size, so a small shard pays more noise for the same
epsilon. A speaker's whole shard is protected only by group privacy (k utterances: about k
times epsilon), which is why `gossipser attack` measures what a neighbour still learns.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
from torch import nn

from gossipser.errors import ConfigError
from gossipser.learn.settings import DPSettings


def _opacus():
    try:
        import opacus  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ConfigError("DP-SGD needs opacus: pip install opacus==1.6.0") from None
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator
    return GradSampleModule, RDPAccountant, get_noise_multiplier, DPOptimizer, ModuleValidator


def check_model(model: nn.Module) -> None:
    """ConfigError when per-sample gradients are impossible for `model` (BatchNorm mixes the
    samples of a batch; nn.LSTM has no per-sample gradient in opacus)."""
    *_, validator = _opacus()
    errors = validator.validate(model, strict=False)
    if not errors:
        return
    kinds = {type(m) for m in model.modules()}
    if any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds):
        raise ConfigError("DP-SGD: BatchNorm mixes the utterances of a batch, so it has no "
                          "per-utterance gradient; use --norm group or --norm none")
    if any(issubclass(k, nn.RNNBase) for k in kinds):
        raise ConfigError("DP-SGD: nn.LSTM has no per-utterance gradient; use --model cnn or dnn")
    raise ConfigError(f"DP-SGD: {' '.join(str(errors[0]).split())}")


def noise_multiplier(dp: DPSettings, *, sample_rate: float, steps: int) -> float:
    """The noise multiplier: given, or the smallest that keeps `steps` steps at
    `sample_rate` within (epsilon, delta) by the RDP accountant."""
    if dp.noise is not None:
        return dp.noise
    if steps <= 0:
        return 1.0
    _, _, get_noise_multiplier, _, _ = _opacus()
    with _quiet():
        return float(get_noise_multiplier(target_epsilon=dp.epsilon, target_delta=dp.delta,
                                          sample_rate=sample_rate, steps=steps,
                                          accountant="rdp", epsilon_tolerance=0.005))


def epsilon_of(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """(epsilon at `delta`) of `steps` Poisson-subsampled Gaussian steps, by RDP."""
    if steps <= 0:
        return 0.0
    _, accountant_cls, *_ = _opacus()
    accountant = accountant_cls()
    accountant.history = [(noise, sample_rate, steps)]
    with _quiet():
        return float(accountant.get_epsilon(delta))


@contextlib.contextmanager
def _quiet():
    """Opacus warns when the best RDP order is the largest it tries (large epsilon): the
    bound is then loose, i.e. conservative, which is safe to report."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order")
        yield


class PrivateSteps:
    """Clipped, noised optimiser steps on Poisson batches of one shard of `n` examples."""

    def __init__(self, *, model: nn.Module, optimizer: torch.optim.Optimizer, dp: DPSettings,
                 n: int, batch_size: int, planned_steps: int, seed: int) -> None:
        grad_sample_module, _, _, dp_optimizer, _ = _opacus()
        check_model(model)
        self.dp = dp
        self.sample_rate = min(1.0, batch_size / max(n, 1))
        self.noise = noise_multiplier(dp, sample_rate=self.sample_rate, steps=planned_steps)
        self.n = n
        self.steps = 0
        self.sampler = torch.Generator().manual_seed(seed)
        with warnings.catch_warnings():  # opacus warns about secure_mode: our RNG is seeded
            warnings.simplefilter("ignore")
            # the loss is summed over the batch; the optimiser divides by the expected size
            self.module = grad_sample_module(model, loss_reduction="sum")
            self.optimizer = dp_optimizer(
                optimizer, noise_multiplier=self.noise, max_grad_norm=dp.clip,
                expected_batch_size=max(1, round(self.sample_rate * n)), loss_reduction="mean",
                generator=torch.Generator().manual_seed(seed + 1))

    def batch(self) -> torch.Tensor:
        """A Poisson batch: every example joins independently with the sample rate."""
        return torch.nonzero(torch.rand(self.n, generator=self.sampler) < self.sample_rate
                             ).flatten()

    def gradients(self, loss_sum) -> None:
        """Back-propagate a summed loss and turn the per-sample gradients into the private
        gradient in `p.grad`: each clipped to norm `clip`, summed, noised, averaged."""
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # opacus's hooks on the first layer, whose input
            warnings.filterwarnings("ignore", message="Full backward hook")  # needs no grad
            loss_sum.backward()
        self.optimizer.pre_step()

    def step(self, loss_sum) -> None:
        self.gradients(loss_sum)
        self.optimizer.original_optimizer.step()
        self.steps += 1

    def epsilon(self) -> float:
        return epsilon_of(self.noise, self.sample_rate, self.steps, self.dp.delta)

    def state(self) -> dict[str, np.ndarray]:
        return {"_dp.steps": np.array(self.steps, np.int64),
                "_dp.sampler": self.sampler.get_state().numpy(),
                "_dp.noise_rng": self.optimizer.generator.get_state().numpy()}

    def load_state(self, saved: dict[str, np.ndarray]) -> None:
        if "_dp.steps" in saved:
            self.steps = int(saved["_dp.steps"])
            self.sampler.set_state(torch.from_numpy(np.array(saved["_dp.sampler"])))
            self.optimizer.generator.set_state(
                torch.from_numpy(np.array(saved["_dp.noise_rng"])))
