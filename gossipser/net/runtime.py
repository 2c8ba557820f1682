"""Networked runtimes: one gossip peer (or the FedAvg server) per process.

They drive exactly the simulator's `Peer` / `FedAvgServer` logic; only delivery differs.
Training runs in a worker thread (`asyncio.to_thread`) so frames keep flowing meanwhile.
Every round ends with a checkpoint; a restarted process resumes from it and, if its
neighbours moved on while it was down, fast-forwards to their round.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np

from gossipser.errors import ConfigError, TransportError
from gossipser.gossip.byzantine import Attack
from gossipser.gossip.message import SERVER_ID, Message, ModelSpec
from gossipser.gossip.mixing import Params
from gossipser.gossip.plan import RunSetup
from gossipser.gossip.wire import secret_from
from gossipser.learn.jobs import TrainJob
from gossipser.learn.modelio import save_model
from gossipser.learn.models import set_state
from gossipser.learn.pool import SerialPool
from gossipser.net.keys import Keyring, node_name
from gossipser.net.links import open_transport
from gossipser.net.node import NetNode, NetworkConfig
from gossipser.net.transport import MemoryHub, TransportConfig
from gossipser.privacy.record import FILE as RECORD_FILE
from gossipser.privacy.record import MessageLog

Status = Callable[[dict], None]
ROW_COLUMNS = ("round", "ua", "wa", "macro_f1", "loss", "age", "bytes_sent", "frames_received",
               "rejected", "send_failures", "missing", "wall_s")


@contextlib.asynccontextmanager
async def _connected(
    setup: RunSetup, net: NetworkConfig, node_id: int, *, secret: bytes | None,
    allowed: set[int], on_message, hub: MemoryHub | None, status: Status | None = None,
) -> AsyncIterator[NetNode]:
    """An open transport whose frames a `NetNode` receives in the background until exit.
    With `net.keys`, frames are signed and links encrypted; else the run secret's HMAC."""
    keys = Keyring.load(net.keys, node_id) if net.keys else None
    if keys is None:
        secret = secret if secret is not None else secret_from(net.secret)
        if status:
            status({"note": "plaintext mode: one run-wide HMAC secret, frames in clear "
                            "(give [network] keys from `gossipser keys` for signed frames "
                            "and TLS)"})
    elif status:
        status({"note": f"secure mode: frames signed with {node_name(node_id)}'s key, "
                        f"{'mutual TLS' if net.transport == 'tcp' else 'TLS to the broker'}"})
    tcfg = dataclasses.replace(transport_config(setup, net, node_id), tls=keys)
    async with open_transport(tcfg, hub=hub) as transport:
        node = NetNode(node=node_id, transport=transport, secret=secret, run=setup.run_id,
                       spec=ModelSpec.from_params(setup.message_params()), allowed=allowed,
                       on_message=on_message, max_round=setup.cfg.rounds + 1,
                       max_frame_age=net.max_frame_age, keys=keys)
        receiver = asyncio.create_task(node.receive_loop())
        try:
            yield node
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            await node.close()


def transport_config(setup: RunSetup, net: NetworkConfig, node: int) -> TransportConfig:
    """Listen addresses from the topology's node attributes, else host:base_port+id; frame and
    connection limits from what this run needs (a model message plus a margin; two inbound
    connections per node that may talk to this one, plus some for reconnects)."""
    addresses = {SERVER_ID: (net.server_host, net.server_port)}
    for pid in range(setup.n_peers):
        attrs = setup.graph.nodes[pid] if pid in setup.graph else {}
        addresses[pid] = (str(attrs.get("host", net.host)), int(attrs.get("port",
                                                                          net.base_port + pid)))
    model_bytes = sum(int(a.nbytes) + 64 for a in setup.message_params().values())
    talkers = (setup.n_peers if node == SERVER_ID
               else setup.graph.degree(node) + 1 if node in setup.graph else setup.n_peers)
    return TransportConfig(
        kind=net.transport, node=node, addresses=addresses if net.transport == "tcp" else {},
        broker_host=net.broker_host, broker_port=net.broker_port, run=setup.run_id,
        send_timeout=net.send_timeout, max_frame=model_bytes + model_bytes // 4 + 65536,
        max_connections=2 * talkers + 16,
    )


class Checkpoint:
    """OUT/checkpoint.npz: parameters, trainer state and a JSON header, written atomically
    (a temporary file, then a rename); the one before stays as checkpoint.prev.npz, so a
    damaged checkpoint costs one round, not the run."""

    def __init__(self, path: Path, run: str) -> None:
        self.path = path
        self.prev = path.with_name(path.stem + ".prev.npz")
        self.run = run
        self.notes: list[str] = []  # what went wrong, one line each, for the peer's log

    def save(self, *, params: Params, extra: dict[str, np.ndarray], header: dict) -> bool:
        """Write the checkpoint; False (with a note) when the disk or the file table is full:
        the peer goes on training and tries again next round."""
        tmp = self.path.with_suffix(".tmp.npz")
        arrays = {f"p.{k}": v for k, v in params.items()} | extra
        meta = np.frombuffer(json.dumps({"run": self.run, **header}).encode(), dtype=np.uint8)
        try:
            np.savez(tmp, _header=meta, **arrays)
            if self.path.exists():
                os.replace(self.path, self.prev)
            os.replace(tmp, self.path)
        except OSError as exc:
            self.notes.append(f"checkpoint not saved ({exc.strerror or exc}); will retry")
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return False
        return True

    def report(self, status: Status | None) -> None:
        """Hand the notes gathered since the last report to the peer's log, once."""
        for note in self.notes if status else ():
            status({"note": note})
        self.notes.clear()

    def _read(self, path: Path) -> tuple[Params, dict[str, np.ndarray], dict]:
        # an open file of our own: np.load leaks the one it opens when the zip is damaged
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            header = json.loads(bytes(z["_header"]).decode())
            params = {k[2:]: z[k] for k in z.files if k.startswith("p.")}
            extra = {k: z[k] for k in z.files if not k.startswith(("p.", "_header"))}
        if not isinstance(header, dict) or not isinstance(header.get("round"), int):
            raise ValueError("its header has no round")
        return params, extra, header

    def load(self) -> tuple[Params, dict[str, np.ndarray], dict] | None:
        """The last good checkpoint of this run, or None; a damaged one is skipped with a
        note (the previous one is used), and only two damaged ones are an error."""
        damaged = []
        for path in (self.path, self.prev):
            if not path.exists():
                continue
            try:
                params, extra, header = self._read(path)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
                damaged.append(f"{path.name} is damaged ({exc})")
                continue
            if header.get("run") != self.run:
                return None  # another run's checkpoint: start afresh
            if damaged:
                self.notes.append(f"{damaged[0]}; resuming from {path.name}, round "
                                  f"{header['round']}")
            return params, extra, header
        if damaged:
            raise ConfigError(f"checkpoint {self.path}: {'; '.join(damaged)}; delete them to "
                              "start afresh") from None
        return None


async def run_peer(
    setup: RunSetup, pid: int, net: NetworkConfig, out: Path, *, status: Status | None = None,
    hub: MemoryHub | None = None, secret: bytes | None = None, attack: Attack | None = None,
) -> dict:
    """Run gossip peer `pid` to the end; returns its summary (also written to OUT). With
    `attack`, this peer is Byzantine (`gossipser peer --byzantine`: tests robust merges)."""
    if not 0 <= pid < setup.n_peers:
        raise ConfigError(f"--id {pid} is not a peer of this run (0..{setup.n_peers - 1})")
    out.mkdir(parents=True, exist_ok=True)
    cfg = setup.cfg
    ckpt = Checkpoint(out / "checkpoint.npz", setup.run_id)
    saved = ckpt.load()
    # under independent or perturbed init a fresh peer starts from a model nobody can
    # rebuild (a Byzantine peer's forgeries are relative to it too); a resumed one from its
    # checkpoint
    peer = setup.make_peer(pid, attack=attack, params=(
        setup.secret_initial() if saved is None and cfg.init != "shared" else None))
    peer.barrier = net.barrier or not peer.strategy.barrier_free
    pool = SerialPool(setup.pool_spec(), [setup.shard(pid, attack=attack)])
    trainer = pool.trainer(pid)
    start, rows = 1, []
    if saved is not None:
        peer.params, extra, header = saved
        trainer.load_state(extra)
        peer.restore(header)
        start, rows = header["round"] + 1, header["rows"]
    allowed = {SERVER_ID} if cfg.algorithm == "fedavg" else set(peer.neighbours)
    pending: list[Message] = []
    busy = {"training": False, "global": 0}

    log = (MessageLog(net.record_messages, setup.shared_model_names())
           if net.record_messages else None)

    async def on_message(msg: Message) -> None:
        if log is not None:  # what this neighbour learns of the others (checked frames only)
            log(msg.round, msg.sender, pid, msg)
        if msg.kind == "fedavg_global":
            busy["global"] = max(busy["global"], msg.round)
        if busy["training"]:  # merged after local training, which started from a copy
            pending.append(msg)
            return
        await node.send_all(peer.receive(msg))

    t0 = time.perf_counter()
    async with _connected(setup, net, pid, secret=secret, allowed=allowed,
                          on_message=on_message, hub=hub, status=status) as node:
        if saved is not None:  # frames seen before the restart stay refused
            node.replay.restore(saved[2].get("replay", {}))
        ckpt.report(status)
        silent = await node.handshake(allowed, round_=start, timeout=net.start_timeout)
        if silent and status:
            status({"note": f"no answer from {sorted(silent)}; going on without them"})
        r = start
        while r <= cfg.rounds:
            if cfg.algorithm == "fedavg":
                got = await node.wait_until(lambda r=r: busy["global"] >= r,
                                            net.start_timeout)
                if not got:
                    raise TransportError(f"no global model from the server for round {r} "
                                         f"in {net.start_timeout:.0f} s")
                r = busy["global"]
                if r > cfg.rounds:
                    break
            else:
                ahead = _ahead(node, allowed)
                if ahead > r + 1:  # back from a crash: the neighbours moved on, rejoin them
                    r = min(cfg.rounds, ahead)
                peer.begin_round(r)
            node.round = r
            loss = float("nan")
            if peer.wants_training():
                busy["training"] = True
                steps = setup.local_steps(pid, trainer.steps_per_epoch())
                job = TrainJob(peer=pid, params=peer.train_from(), steps=steps)
                try:
                    (res,) = await asyncio.to_thread(pool.train, [job])
                finally:
                    busy["training"] = False
                peer.trained(res.params, res.steps)
                loss = res.loss
                for msg in pending:
                    await node.send_all(peer.receive(msg))
                pending.clear()
            unreachable = await node.send_all(peer.outgoing())
            await node.wait_until(
                lambda u=unreachable, r=r: not (peer.missing() - u - _past(node, r)),
                net.wait_timeout)
            missing = len(peer.missing())
            peer.end_round()
            row = await _evaluate(pool, peer.params, r, cfg.eval_every, cfg.rounds)
            row.update(round=r, loss=loss, age=peer.age, missing=missing,
                       **_counters(node), wall_s=round(time.perf_counter() - t0, 2))
            rows.append(row)
            ckpt.save(params=peer.params, extra=trainer.state(),
                      header={"round": r, **peer.state(), "rows": rows,
                                  "replay": node.replay.state()})
            ckpt.report(status)
            if status:
                status(row)
            r += 1
        if cfg.algorithm == "fedavg":  # the last global model
            await node.wait_until(lambda: busy["global"] > cfg.rounds, net.wait_timeout)
    set_state(trainer.model, peer.params)
    save_model(out, trainer.model, classes=setup.dataset.classes, features=setup.features,
               config=setup.model, extra={"peer": pid, "run": setup.run_id})
    final_scores = pool.evaluate([peer.params])[0]
    if log is not None:
        log.save(out / RECORD_FILE)
    summary = {"peer": pid, "run": setup.run_id, "algorithm": cfg.algorithm,
               "rounds": cfg.rounds, "rows": rows, "final": final_scores.to_dict(),
               "bytes_sent": node.transport.stats.bytes_sent, "rejected": _rejections(node),
               "wall_s": round(time.perf_counter() - t0, 2),
               **({"epsilon": trainer.epsilon, "delta": setup.train.dp_delta}
                  if trainer.epsilon is not None else {})}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _ahead(node: NetNode, allowed: set[int]) -> int:
    """The latest round a majority of the neighbours have reached (0 when we have heard from
    too few): one neighbour's claim alone, honest or forged, never moves a peer ahead."""
    rounds = sorted((node.heard_round.get(j, 0) for j in allowed), reverse=True)
    return rounds[len(rounds) // 2] if rounds else 0


def _past(node: NetNode, r: int) -> set[int]:
    """Nodes already beyond round `r`. A sender's frames arrive in order, so if its round-`r`
    message is not here it went to the process we were before a restart: stop waiting."""
    return {j for j, h in node.heard_round.items() if h > r}


async def _evaluate(pool: SerialPool, params: Params, r: int, every: int, last: int) -> dict:
    if r % every and r != last:
        return {"ua": "", "wa": "", "macro_f1": ""}
    (s,) = await asyncio.to_thread(pool.evaluate, [params])
    return {"ua": s.ua, "wa": s.wa, "macro_f1": s.macro_f1}


def _rejections(node: NetNode) -> dict[str, int]:
    """Frames refused by the checks, plus those the transport dropped before decoding."""
    st = node.transport.stats
    dropped = {"oversized": st.oversized_dropped, "truncated": st.truncated_dropped,
               "inbox overflow": st.overflow_dropped,
               "connection limit": st.connections_refused, "slow frame": st.slow_dropped}
    return dict(node.rejected) | {k: v for k, v in dropped.items() if v}


def _counters(node: NetNode) -> dict:
    st = node.transport.stats
    return {"bytes_sent": st.bytes_sent, "frames_received": st.frames_received,
            "rejected": sum(node.rejected.values()), "send_failures": node.send_failures}


async def run_server(
    setup: RunSetup, net: NetworkConfig, out: Path, *, status: Status | None = None,
    hub: MemoryHub | None = None, secret: bytes | None = None,
) -> dict:
    """The FedAvg server: each round, send the global model, wait for the selected clients'
    updates (at most wait_timeout: stragglers are left out), average by sample count."""
    out.mkdir(parents=True, exist_ok=True)
    server = setup.make_server()
    clients = set(range(setup.n_peers))
    pool = SerialPool(setup.pool_spec(), [])
    rows = []
    t0 = time.perf_counter()

    async def on_message(msg: Message) -> None:
        server.receive(msg)

    async with _connected(setup, net, SERVER_ID, secret=secret, allowed=clients,
                          on_message=on_message, hub=hub, status=status) as node:
        silent = await node.handshake(clients, round_=0, timeout=net.start_timeout)
        if silent and status:
            status({"note": f"clients {sorted(silent)} did not answer; going on"})
        for r in range(1, setup.cfg.rounds + 1):
            node.round = r
            outbox = server.start_round(r)
            unreachable = await node.send_all(outbox)
            chosen = {c for c, m in outbox if m.meta["train"]} - unreachable
            await node.wait_until(lambda c=chosen: c <= set(server.updates),
                                  net.wait_timeout)
            got = len(server.updates)
            server.end_round()
            row = await _evaluate(pool, server.params, r, setup.cfg.eval_every,
                                  setup.cfg.rounds)
            row.update(round=r, updates=got, selected=len(chosen),
                       bytes_sent=node.transport.stats.bytes_sent,
                       rejected=sum(node.rejected.values()),
                       wall_s=round(time.perf_counter() - t0, 2))
            rows.append(row)
            if status:
                status(row)
        final = Message(kind="fedavg_global", run=setup.run_id, sender=SERVER_ID,
                        round=setup.cfg.rounds + 1, params=server.params, meta={"train": 0})
        await node.send_all([(c, final) for c in sorted(clients)])
    scores = pool.evaluate([server.params])[0]
    np.savez(out / "global.npz", **server.params)
    summary = {"peer": SERVER_ID, "run": setup.run_id, "algorithm": "fedavg",
               "rounds": setup.cfg.rounds, "rows": rows, "final": scores.to_dict(),
               "bytes_sent": node.transport.stats.bytes_sent, "rejected": _rejections(node),
               "wall_s": round(time.perf_counter() - t0, 2)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
