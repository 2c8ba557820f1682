"""The three model families of the federated-SER literature: DNN, 1-D CNN and BiLSTM."""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from torch import nn

from gossipser.errors import ConfigError
from gossipser.learn.settings import ModelConfig


class Dropout(nn.Module):
    """Dropout drawing its mask from `self.generator` when one is set (LocalTrainer sets its
    own), so concurrent trainers in threads never share torch's global generator."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).bernoulli_(1.0 - self.p, generator=self.generator)
        return x * keep / (1.0 - self.p)


def attach_generator(model: nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, Dropout):
            m.generator = generator


class DNN(nn.Module):
    """MLP on utterance statistics (mean and std of each coefficient)."""

    def __init__(self, n_in: int, n_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.width * 4
        self.net = nn.Sequential(
            # the statistics have very different scales; batch statistics mix the samples
            # of a batch, which DP-SGD forbids: norm group/none keep the inputs as they are
            nn.BatchNorm1d(n_in, affine=False) if cfg.norm == "batch" else nn.Identity(),
            nn.Linear(n_in, h), nn.ReLU(), Dropout(cfg.dropout),
            nn.Linear(h, h // 2), nn.ReLU(), Dropout(cfg.dropout),
            nn.Linear(h // 2, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 2*D)
        return self.net(x)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.Identity()


def _conv_block(c_in: int, c_out: int, k: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, k, padding=k // 2), _norm(norm, c_out), nn.ReLU(),
    )


class CNN(nn.Module):
    """1-D convolutions over time with mean+max pooling over time."""

    def __init__(self, n_in: int, n_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        c = cfg.width
        self.features = nn.Sequential(
            _conv_block(n_in, c, 5, cfg.norm), nn.MaxPool1d(2),
            _conv_block(c, c, 5, cfg.norm), nn.MaxPool1d(2),
            _conv_block(c, c * 2, 3, cfg.norm), Dropout(cfg.dropout / 2),
        )
        self.head = nn.Sequential(Dropout(cfg.dropout), nn.Linear(4 * c, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        h = self.features(x.transpose(1, 2))
        return self.head(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))


class LSTM(nn.Module):
    """Bidirectional LSTM with mean+max pooling over time."""

    def __init__(self, n_in: int, n_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.width
        self.inp = nn.Sequential(nn.Linear(n_in, h), nn.ReLU())
        self.rnn = nn.LSTM(h, h, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(Dropout(cfg.dropout), nn.Linear(4 * h, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        out, _ = self.rnn(self.inp(x))
        return self.head(torch.cat([out.mean(dim=1), out.amax(dim=1)], dim=1))


def build_model(
    cfg: ModelConfig, *, n_features: int, n_classes: int, seed: int = 0,
) -> nn.Module:
    """A fresh model initialised from `seed`; `n_features` is the per-frame dimension
    (sequence models) or 2*dim (DNN)."""
    cls = {"dnn": DNN, "cnn": CNN, "lstm": LSTM}[cfg.kind]
    # nn.init draws from the global generator: seed it inside a fork so no state leaks out
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(n_features, n_classes, cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_FLOATING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _floating(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's floating state_dict entries, which share memory with its parameters and
    buffers (updated in place by training and loading): looked up once per module, since a
    state_dict walk costs as much as a DNN's optimiser step when a process trains thousands
    of peers in turn."""
    own = _FLOATING.get(model)
    if own is None:
        own = _FLOATING[model] = {k: v for k, v in model.state_dict().items()
                                  if v.is_floating_point()}
    return own


def get_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Every floating tensor of the model (parameters and BatchNorm statistics) as numpy copies.

    This is exactly what peers exchange and what a saved model holds.
    """
    return {k: v.detach().cpu().numpy().copy() for k, v in _floating(model).items()}


def set_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load arrays produced by `get_state` (names and shapes must match)."""
    own = _floating(model)
    with torch.no_grad():
        for k, arr in state.items():
            if k not in own or tuple(own[k].shape) != tuple(arr.shape):
                raise ConfigError(f"model state: parameter {k!r} does not fit this model")
            own[k].copy_(torch.from_numpy(np.asarray(arr)))
