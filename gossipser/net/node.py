"""Network plumbing shared by a networked peer and the FedAvg server.

A `NetNode` owns a transport, turns messages into authenticated frames and back, rejects
and counts anything that does not check out (bad frame, bad tag, other run, wrong shapes,
non-finite values, a sender that is not a neighbour, a round beyond the run, a replayed or
stale frame), and answers `hello`s, so that nodes started at different moments find each
other. It holds no learning logic.

Sequence numbers against replays are `gossipser.net.replay`'s; every frame also names its
destination (`to`) and its sender's session (`session`, a random number drawn at every
launch). Sessions are learnt by challenge and answer, never from a frame alone: a `hello`
carries its sender's session as a challenge, and the answer (`ack`) echoes it (`echo`). A
node takes a neighbour's session only from an answer that echoes its own current session,
which no frame recorded before this launch can do. Until then the neighbour's frames wait
(at most `PENDING` per neighbour) and a challenge goes out; once the session is known they
are delivered if they carry it and dropped as "foreign session" if not. So a frame of an
earlier session (a recorded run, or the neighbour before a restart) is dropped even within
`max_frame_age` and even when it arrives first. A hello from a neighbour whose session is
not yet known, or has changed (a restart), is answered and challenged back; a challenge left
unanswered for `RECHALLENGE_S` is sent again with the sender's next frame, so one lost hello
does not cut a neighbour off. An answer to a challenge this launch did not make, or one
older (by `seq`) than the answer that set the session (a delayed answer of the sender's
previous launch), is dropped as "stale handshake". Hellos go out in the background, so a
neighbour that is down does not stall the receiving of the others' frames.

The same holds the other way: every frame but a hello also names the session of the node it
is for (`for`), learnt the same way. A node sends a neighbour nothing but hellos until it
knows the neighbour's session (its frames wait, at most `PENDING`, and a challenge goes
out), and drops a frame that names another session than its own as "not for this launch".
So a frame a neighbour sent this node's previous launch (after its last checkpoint, so that
its sequence number is above the restored floor) cannot be replayed to it after a restart;
the node challenges the sender instead, which then learns the new session. A node that hears
a hello from a neighbour's new session (newer than the answer that set the old one) stops
naming the old one at once, so what it sends meanwhile waits for the answer; once the
answer is in, its held frames go out in order, preceded by the latest message it sent that
neighbour when that message is for the round the neighbour resumed at or later (the earlier
launch may have lost it; it goes as a new frame, and the peer logic ignores a round's
duplicate). Frames still on their way when a node closes get `grace` seconds to go out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from gossipser.config import check_types
from gossipser.errors import ConfigError, TransportError, WireError
from gossipser.gossip.message import Message, ModelSpec
from gossipser.gossip.wire import decode, encode
from gossipser.net.replay import ReplayGuard, now_us

Handler = Callable[[Message], Awaitable[None]]
PENDING = 8  # frames kept per neighbour whose session is not yet known
RECHALLENGE_S = 1.0  # a challenge left unanswered this long is sent again on the next frame


@dataclass(frozen=True)
class NetworkConfig:
    """[network] section of a run config."""

    transport: str = "tcp"  # tcp, mqtt (memory: tests)
    secret: str = "env:GOSSIPSER_SECRET"  # env:VAR, file:PATH or a literal
    host: str = "127.0.0.1"  # peers listen on host:base_port+id unless the topology says
    base_port: int = 7401
    server_host: str = "127.0.0.1"
    server_port: int = 7400
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    wait_timeout: float = 20.0  # longest wait for a neighbour's (or a client's) message
    send_timeout: float = 5.0
    start_timeout: float = 120.0  # longest wait for the neighbours to show up at start
    # a folder made by `gossipser keys`: every frame signed with this node's key and checked
    # against the sender's certificate, mutual TLS on TCP, TLS and a per-peer ACL on MQTT.
    # Empty: the plaintext mode (one run-wide HMAC secret, frames in clear), for simulations
    # and quick tests on one machine
    keys: str = ""
    # a frame whose sequence number (its sender's clock) is older than this many seconds is
    # dropped as stale: a frame recorded in an earlier run cannot be replayed into this one
    max_frame_age: float = 300.0
    # a peer keeps the models its neighbours sent it in rounds 1..N (OUT/messages.npz):
    # what an honest-but-curious neighbour holds (gossipser.privacy.record); 0: nothing
    record_messages: int = 0
    # false: an algorithm that can run without its round barrier does (push-sum): a peer
    # takes each message in as it arrives and never waits for its neighbours. gossip-learning
    # and pairwise never wait anyway; dpsgd and gradient-tracking always do
    barrier: bool = True

    def __post_init__(self) -> None:
        check_types(self, "network")
        if self.transport not in ("tcp", "mqtt", "memory"):
            raise ConfigError(f"[network] transport must be tcp or mqtt, got {self.transport!r}")
        if self.record_messages < 0:
            raise ConfigError("[network] record_messages must be >= 0")
        for name in ("wait_timeout", "send_timeout", "start_timeout", "max_frame_age"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[network] {name} must be > 0 seconds")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["secret"] = d["secret"].split(":")[0] + ":…" if ":" in d["secret"] else "…"
        return d


class NetNode:
    """Send and receive `Message`s over one open transport."""

    def __init__(
        self, *, node: int, transport, secret: bytes | None, run: str, spec: ModelSpec,
        allowed: Iterable[int], on_message: Handler, max_round: int | None = None,
        max_frame_age: float = 300.0, keys=None,
    ) -> None:
        self.node = node
        self.transport = transport
        self.secret = secret
        self.run = run
        self.spec = spec
        self.allowed = frozenset(allowed)
        self.on_message = on_message
        self.rejected: Counter[str] = Counter()
        self.send_failures = 0
        self.heard: set[int] = set()  # nodes we got any authenticated message from
        self.heard_round: dict[int, int] = {}  # latest round each node told us about
        self._changed = asyncio.Event()
        self.round = 0  # the owner's current round, told to nodes that say hello
        self.max_round = max_round  # a frame claiming a later round is dropped
        self.keys = keys  # gossipser.net.keys.Keyring: sign and verify instead of the HMAC
        self.replay = ReplayGuard(max_frame_age)
        self._seq = 0  # the last sequence number this node sent
        self.session = secrets.randbits(62)  # this launch; neighbours learn it from hellos
        self.sessions: dict[int, int] = {}  # each sender's session, once it answered us
        self.pending: dict[int, deque[Message]] = {}  # frames of senders not yet answered
        self.challenged: dict[int, float] = {}  # sender -> when we last asked (no answer yet)
        self.answered: dict[int, int] = {}  # sender -> seq of the answer that set its session
        self.outbox: dict[int, deque[Message]] = {}  # frames for nodes not yet answered
        self.last_sent: dict[int, Message] = {}  # the latest message for each node
        self.restarted: set[int] = set()  # nodes that said hello from a new session
        self.asking: dict[int, asyncio.Task] = {}  # a challenge on its way, per node
        self.flushing: dict[int, asyncio.Task] = {}  # held frames going out, per node
        self._hellos: set[asyncio.Task] = set()  # answers and challenges on their way

    # sending ---------------------------------------------------------------------------
    async def send(self, dest: int, msg: Message) -> bool:
        """Send one message; False (counted) when the destination cannot be reached. A
        message for a node whose session is not known yet waits until it answers, and one
        for a node whose held frames are going out goes after them."""
        if msg.kind != "hello":
            self.last_sent[dest] = msg
            flush = self.flushing.get(dest)
            if flush is not None and not flush.done():
                await asyncio.shield(flush)
        return await self._transmit(dest, msg)

    async def _transmit(self, dest: int, msg: Message) -> bool:
        meta = {**msg.meta, "to": dest, "session": self.session}
        if msg.kind != "hello":
            if dest not in self.sessions:
                return await self._hold(dest, msg)
            meta["for"] = self.sessions[dest]
        self._seq = max(self._seq + 1, now_us())
        msg = dataclasses.replace(msg, meta={**meta, "seq": self._seq})
        try:
            await self.transport.send(dest, encode(msg, secret=self.secret, signer=self.keys))
            return True
        except TransportError:
            self.send_failures += 1
            return False

    async def _hold(self, dest: int, msg: Message) -> bool:
        """Keep `msg` until `dest` answers a challenge (the one on its way, or one sent now
        unless the last went out less than RECHALLENGE_S ago); False, and nothing kept, when
        the challenge could not be sent and `dest` has not answered meanwhile."""
        waiting = self.outbox.setdefault(dest, deque())
        if len(waiting) == PENDING:
            waiting.popleft()
            self.send_failures += 1
        waiting.append(msg)
        task = self._challenge(dest)
        if task is None or await asyncio.shield(task) or dest in self.sessions:
            return True
        with contextlib.suppress(ValueError):
            waiting.remove(msg)
        return False

    async def send_all(self, outbox: list[tuple[int, Message]]) -> set[int]:
        """Send concurrently; returns the destinations that could not be reached."""
        if not outbox:
            return set()
        ok = await asyncio.gather(*(self.send(d, m) for d, m in outbox))
        return {d for (d, _), good in zip(outbox, ok, strict=True) if not good}

    # receiving -------------------------------------------------------------------------
    def _accept(self, frame: bytes) -> Message | None:
        try:
            msg = decode(frame, secret=self.secret, keys=self.keys, spec=self.spec, run=self.run)
        except WireError as exc:
            self.rejected[_reason(str(exc))] += 1
            return None
        if msg.sender not in self.allowed:
            self.rejected["sender is not a neighbour"] += 1
            return None
        if self.max_round is not None and msg.round > self.max_round:
            self.rejected["round beyond the run"] += 1
            return None
        if msg.meta.get("to") != self.node:  # a frame meant for another node, replayed here
            self.rejected["wrong destination"] += 1
            return None
        why = self.replay.check(msg.sender, msg.meta.get("seq"), now_us())
        if why is not None:
            self.rejected[why] += 1
            return None
        if type(msg.meta.get("session")) is not int:
            self.rejected["no session"] += 1
            return None
        return msg

    async def _admit(self, msg: Message) -> list[Message]:
        """The messages `msg` lets through now: itself if its sender's session is known and
        matches, the sender's waiting frames too when `msg` is the answer that makes it known,
        nothing while the session is unknown (then `msg` waits and a challenge goes out)."""
        sender, session = msg.sender, msg.meta["session"]
        if msg.kind == "hello":
            if msg.meta.get("ack"):
                # an answer to another launch's challenge, or one older than the answer that
                # set the session (a delayed answer of the sender's previous launch)
                if (msg.meta.get("echo") != self.session
                        or msg.meta["seq"] < self.answered.get(sender, -1)):
                    self.rejected["stale handshake"] += 1
                    return []
                return self._learnt(sender, session, msg)
            self._post(sender, self._hello(self.round, ack=1, echo=session))
            if session != self.sessions.get(sender):  # first contact, a restart or a replay:
                if sender in self.sessions and msg.meta["seq"] > self.answered[sender]:
                    # newer than the answer that set the session: the sender restarted, so
                    # frames for it wait for its answer instead of naming its old session
                    del self.sessions[sender]
                    self.restarted.add(sender)
                self._challenge(sender, again=True)  # ask for proof
            return []
        if msg.meta.get("for") != self.session:
            # sent to an earlier launch of this node (or replayed from one): never delivered;
            # the sender is challenged, so that it learns this launch's session
            self.rejected["not for this launch"] += 1
            self._challenge(sender)
            return []
        if session == self.sessions.get(sender):
            return [msg]
        # an unknown sender, a restart whose hello we missed, or a replay: the frame waits
        # until the sender answers a challenge (sent again if the last one went unanswered)
        waiting = self.pending.setdefault(sender, deque())
        if len(waiting) == PENDING:
            waiting.popleft()
            self.rejected["unanswered session"] += 1
        waiting.append(msg)
        self._challenge(sender)
        return []

    def _learnt(self, sender: int, session: int, answer: Message) -> list[Message]:
        """`sender` answered our challenge: its session is known; its waiting frames of that
        session go through with the answer, the others are foreign. What we held for it goes
        out; after a restart, so does the latest message we sent it, unless it is for a round
        before the one it resumed at (the earlier launch may have dropped or lost it; a
        duplicate of a round's message is ignored by the peer logic)."""
        restarted = (sender in self.restarted
                     or self.sessions.get(sender, session) != session)
        self.restarted.discard(sender)
        self.sessions[sender] = session
        self.answered[sender] = answer.meta["seq"]
        self.challenged.pop(sender, None)
        held = list(self.outbox.pop(sender, ()))
        last = self.last_sent.get(sender)
        if (restarted and last is not None and last.round >= answer.round
                and not any(m is last for m in held)):
            held.insert(0, last)
        if held:
            self.flushing[sender] = self._post(sender, held)
        ready = [answer]
        for m in self.pending.pop(sender, ()):
            if m.meta["session"] == session:
                ready.append(m)
            else:
                self.rejected["foreign session"] += 1
        return ready

    def _challenge(self, dest: int, again: bool = False) -> asyncio.Task | None:
        """Ask `dest` for its session in the background, unless a challenge is on its way or
        went out less than RECHALLENGE_S ago (a lost challenge or answer is repaired by the
        next frame); returns the challenge on its way (its result: whether it was sent)."""
        task = self.asking.get(dest)
        if task is not None and not task.done():
            return task
        last = self.challenged.get(dest)
        if not (again or last is None or time.monotonic() - last > RECHALLENGE_S):
            return None
        self.challenged[dest] = time.monotonic()
        task = self.asking[dest] = self._post(dest, self._hello(self.round))
        # one that could not be sent is forgotten: the next message tries again at once
        task.add_done_callback(
            lambda t, dest=dest: None if t.cancelled() or t.result()
            else self.challenged.pop(dest, None))
        return task

    async def _in_order(self, dest: int, msgs: list[Message]) -> bool:
        return all([await self._transmit(dest, m) for m in msgs])

    async def close(self, grace: float = 2.0) -> None:
        """Let the frames still on their way (hellos, held frames let go) go out for at most
        `grace` seconds, then cancel them (the transport is closing)."""
        if self._hellos:
            await asyncio.wait(set(self._hellos), timeout=grace)
        for task in list(self._hellos):
            task.cancel()
        await asyncio.gather(*self._hellos, return_exceptions=True)

    def _post(self, dest: int, msg: Message | list[Message]) -> asyncio.Task:
        """Send in the background (a list: in order): a neighbour that is down must not
        stall the receiving of everyone else's frames for a send timeout."""
        task = asyncio.create_task(self._transmit(dest, msg) if isinstance(msg, Message)
                                   else self._in_order(dest, msg))
        self._hellos.add(task)
        task.add_done_callback(self._hellos.discard)
        return task

    async def receive_loop(self) -> None:
        """Until cancelled: decode, check and hand over every frame that arrives."""
        async for frame in self.transport.incoming():
            msg = self._accept(frame)
            if msg is None:
                continue
            for m in await self._admit(msg):
                self.heard.add(m.sender)
                self.heard_round[m.sender] = max(self.heard_round.get(m.sender, 0), m.round)
                if m.kind != "hello":
                    await self.on_message(m)
            self.notify()

    def notify(self) -> None:
        self._changed.set()

    async def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait (at most `timeout` s) until `done()` holds; re-checked after each arrival."""
        end = time.monotonic() + timeout
        while not done():
            left = end - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.5))
        return True

    # start-up --------------------------------------------------------------------------
    def _hello(self, round_: int, ack: int = 0, echo: int | None = None) -> Message:
        """A challenge (ack 0: `send` adds our session), or the answer to one (echoing it)."""
        return Message(kind="hello", run=self.run, sender=self.node, round=round_,
                       meta={"ack": ack, **({"echo": echo} if echo is not None else {})})

    async def handshake(self, targets: Iterable[int], *, round_: int, timeout: float) -> set[int]:
        """Say hello until every target has answered or `timeout` passes; returns the silent."""
        targets = set(targets)
        end = time.monotonic() + timeout
        while not targets <= self.heard and time.monotonic() < end:
            await asyncio.gather(*(self.send(t, self._hello(round_))
                                   for t in targets - self.heard))
            await self.wait_until(lambda: targets <= self.heard, 0.5)
        return targets - self.heard


def _reason(message: str) -> str:
    """A short, stable counter key for a rejection ('bad HMAC tag', 'shape', ...)."""
    text = message.removeprefix("wire: ")
    if text.startswith("frame belongs to run"):  # names the sender's run id: not a stable key
        return "run id"
    if "does not match its key" in text:
        return "sender does not match its key"
    for key in ("HMAC", "signature", "unsigned", "signed frame", "run id", "shape", "dtype",
                "non-finite", "too large", "magic",
                "version", "missing", "unexpected", "msgpack", "truncated", "kind"):
        if key.lower() in text.lower():
            return key
    return text[:40]
