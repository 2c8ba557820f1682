"""Gradient tracking (DSGT; Pu & Nedić 2021, Nedić, Olshevsky & Shi 2017), with local training
as the gradient oracle: drift-corrected D-PSGD for peers whose data differ.

D-PSGD with a constant step settles where the *mixed* local gradients balance, which is not
the minimiser of the sum of the peers' losses when each peer holds one speaker. Each peer
here also keeps a tracker z of the network-average update: with d the change local training
made this round (x - trained x, a step times the local gradient for one SGD step),

    z  <- (mixed z of the last round) + d - d_last          (z starts at the first d)
    send (x - z, z);  x <- sum_j W_ij (x_j - z_j);  z_mixed <- sum_j W_ij z_j

where x is the model local training started from this round.

so every peer moves along the average update instead of its own. On heterogeneous quadratics
with a constant step it reaches the exact minimiser of their sum (tests/test_gradient_tracking).
A missing neighbour's weight stays home, as in D-PSGD. A message carries both the model
(`x - z`, under the parameter names) and the tracker (under `TRACK` + name), so it is twice
the size of a D-PSGD message.

With a robust rule (`--robust`) the peer merges the models and, separately, the trackers by
that rule (each with its own clipping radius under clip:auto). A robust merge no longer keeps
the trackers' sum, so tracking loses its exactness; what it keeps is that a bad neighbour's
model and tracker both arrive bounded. Without a rule nothing changes.
"""

from __future__ import annotations

import numpy as np

from gossipser.gossip.algorithms.base import Algorithm, Outbox, register
from gossipser.gossip.message import Message
from gossipser.gossip.mixing import Params

TRACK = "track/"  # prefix of the tracker's entries in a message


@register
class GradientTracking(Algorithm):
    name = "gradient-tracking"
    synchronous = True
    buffered_kind = "model"
    uses_mixing = True
    supports_robust = True

    def __init__(self) -> None:
        self.z: Params | None = None  # tracker of the average update (after last round's mix)
        self.d_last: Params | None = None  # this peer's update in the last round
        self.d: Params | None = None  # this peer's update in the current round
        self.x: Params | None = None  # the model local training started from this round

    def after_training(self, peer, before: Params) -> None:
        self.x = before
        self.d = {k: (before[k].astype(np.float64) - peer.params[k]).astype(before[k].dtype)
                  for k in before}

    def _update(self, peer) -> Params:
        d = self.d if self.d is not None else {k: np.zeros_like(v) for k, v in peer.params.items()}
        self.d = None
        if self.z is None or self.d_last is None:
            z = d
        else:
            z = {k: self.z[k] + d[k] - self.d_last[k] for k in d}
        self.d_last = d
        return z

    def outgoing(self, peer) -> Outbox:
        if self.x is None:  # no local training this round: the update is zero
            self.x = peer.params
        self.z = self._update(peer)
        return [(j, self._message(peer)) for j in peer.neighbours]

    def _message(self, peer) -> Message:
        params = {k: self.x[k] - self.z[k] for k in self.x}
        params.update({TRACK + k: v for k, v in self.z.items()})
        return Message(kind="model", run=peer.run, sender=peer.pid, round=peer.round,
                       age=peer.age, samples=peer.samples, params=params)

    def end_round(self, peer, inbox) -> None:
        if self.z is None:  # this peer sent nothing this round (offline): nothing to mix
            return
        row = peer.mix_row
        own = row.get(peer.pid, 0.0) + sum(
            w for j, w in row.items() if j != peer.pid and j not in inbox)
        senders = sorted(inbox)
        weights = [own] + [row[j] for j in senders]
        names = list(peer.params)
        mine = {k: self.x[k] - self.z[k] for k in names}
        self.x = None
        peer.params = peer.merge(
            [mine] + [{k: inbox[j].params[k] for k in names} for j in senders], weights)
        self.z = peer.merge([self.z] + [{k: inbox[j].params[TRACK + k] for k in names}
                                        for j in senders], weights)

    def message_params(self, params: Params) -> Params:
        return {**params, **{TRACK + k: v for k, v in params.items()}}

    def state(self) -> dict[str, float]:
        return {}  # the tracker restarts from the next update after a resume
