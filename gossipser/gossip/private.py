"""Private layers: parts of the model that stay on the device, never sent and never mixed.

A peer trains its whole model but shares only the rest (as in FedPer and LG-FedAvg, here for
gossip). The first layers see the speaker's voice most directly and leak the most about it
(Feng et al. 2021), so keeping them home is a defence that costs no noise.

Layer names are module prefixes of the parameter names (``features.0.0`` for the CNN's first
convolution), or ``first`` / ``last`` for the first or last module with weights, or
``bn-stats`` for every BatchNorm's running statistics (running mean and variance and the
batch counter): the speaker's feature statistics seen through each layer. Under the default
``bn_stats = "speaker"`` they are never used at inference (a BatchNorm normalises with the
speaker's own batch), so keeping them home costs nothing; under ``running`` each peer keeps
its own, as SiloBN does. ``bn`` keeps every BatchNorm layer home whole, its scale and shift
too, as FedBN does (each peer then scores with a scale and shift trained on its own data).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gossipser.errors import ConfigError

ALIASES = ("first", "last", "bn-stats", "bn")
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def layers_of(names: Iterable[str]) -> list[str]:
    """Module names owning the parameters `names`, in order (``a.b.weight`` -> ``a.b``)."""
    out: list[str] = []
    for name in names:
        module = name.rsplit(".", 1)[0] if "." in name else name
        if module not in out:
            out.append(module)
    return out


def _weighted_layers(names: list[str]) -> list[str]:
    return layers_of(n for n in names if "weight" in n.rsplit(".", 1)[-1])


def private_names(params: Mapping[str, object], layers: Iterable[str]) -> frozenset[str]:
    """The parameter names that `layers` (module names or ``first``/``last``) cover.

    Raises ConfigError, naming the model's layers, for a name that matches nothing or for a
    choice that would leave nothing to share."""
    names = list(params)
    chosen: set[str] = set()
    for layer in layers:
        layer = layer.strip()
        if layer == "bn-stats":
            hit = {n for n in names if n.rsplit(".", 1)[-1] in BN_STATS}
            if not hit:
                raise ConfigError("private layer 'bn-stats': this model has no BatchNorm "
                                  "statistics (GroupNorm, or the LSTM)")
            chosen |= hit
            continue
        if layer == "bn":
            norms = {n.rsplit(".", 1)[0] for n in names if n.endswith(".running_mean")}
            if not norms:
                raise ConfigError("private layer 'bn': this model has no BatchNorm layer "
                                  "(GroupNorm, or the LSTM)")
            chosen |= {n for n in names if n.rsplit(".", 1)[0] in norms}
            continue
        if layer in ALIASES:
            weighted = _weighted_layers(names)
            layer = weighted[0] if layer == "first" else weighted[-1]
        hit = {n for n in names if n == layer or n.startswith(layer + ".")}
        if not hit:
            shown = ", ".join(layers_of(names))
            raise ConfigError(f"private layer {layer!r} is not in the model; its layers are "
                              f"first, last, bn-stats, bn, {shown}")
        chosen |= hit
    if chosen and chosen == set(names):
        raise ConfigError("private layers cover the whole model: nothing would be shared")
    return frozenset(chosen)


def is_private(key: str, private: frozenset[str]) -> bool:
    """Whether a message entry belongs to a private parameter (``name`` or ``prefix/name``,
    as gradient tracking's tracker entries are named)."""
    return key in private or ("/" in key and key.split("/", 1)[1] in private)


def public(params: Mapping, private: frozenset[str]) -> dict:
    """`params` without the private entries."""
    if not private:
        return dict(params)
    return {k: v for k, v in params.items() if not is_private(k, private)}
