"""A networked peer's defences on literal inputs: replay protection, the round look-ahead,
and checkpoints that survive damage and a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gossipser.errors import ConfigError, TransportError
from gossipser.gossip.message import Message, ModelSpec
from gossipser.gossip.wire import decode, encode
from gossipser.net.node import NetNode
from gossipser.net.replay import REPLAY_WINDOW_US, ReplayGuard
from gossipser.net.runtime import Checkpoint, _ahead
from gossipser.net.transport import MemoryHub, MemoryTransport, TransportConfig

NOW = 1_800_000_000_000_000  # microseconds


def test_a_sequence_number_is_accepted_once():
    g = ReplayGuard(max_age_s=300)
    assert g.check(1, NOW, NOW) is None
    assert g.check(1, NOW, NOW) == "replayed"
    assert g.check(2, NOW, NOW) is None  # numbers are per sender


def test_frames_may_overtake_each_other_within_the_window_only():
    g = ReplayGuard(max_age_s=300)
    assert g.check(1, NOW + 10, NOW) is None
    assert g.check(1, NOW + 5, NOW) is None  # overtaken, never seen: kept
    assert g.check(1, NOW + 5, NOW) == "replayed"
    assert g.check(1, NOW + 10 + REPLAY_WINDOW_US, NOW) is None
    assert g.check(1, NOW + 9, NOW) == "replayed"  # below the window now


def test_old_or_missing_numbers_are_refused():
    g = ReplayGuard(max_age_s=300)
    assert g.check(1, NOW - 301 * 10**6, NOW) == "stale"
    assert g.check(1, NOW - 299 * 10**6, NOW) is None
    assert g.check(1, None, NOW) == "no sequence number"
    assert g.check(1, "12", NOW) == "no sequence number"
    assert g.check(1, True, NOW) == "no sequence number"


def test_the_highest_numbers_survive_a_checkpoint():
    g = ReplayGuard(max_age_s=300)
    for seq in (NOW, NOW + 7):
        g.check(3, seq, NOW)
    state = g.state()
    assert state == {"3": NOW + 7}
    restarted = ReplayGuard(max_age_s=300)
    restarted.restore(state)
    assert restarted.check(3, NOW, NOW) == "replayed"
    assert restarted.check(3, NOW + 7, NOW) == "replayed"
    assert restarted.check(3, NOW + 8, NOW) is None


def test_the_seen_set_stays_small():
    g = ReplayGuard(max_age_s=10**6)
    step = REPLAY_WINDOW_US // 10
    for k in range(1000):
        assert g.check(1, NOW + k * step, NOW) is None
    assert len(g.seen[1]) <= 75


def _node(heard: dict[int, int]):
    return SimpleNamespace(heard_round=heard)


def test_one_neighbour_alone_never_moves_a_peer_ahead():
    assert _ahead(_node({1: 10**9, 3: 0}), {1, 3}) == 0
    assert _ahead(_node({1: 50, 3: 48}), {1, 3}) == 48
    assert _ahead(_node({1: 50, 2: 7, 3: 49, 4: 0}), {1, 2, 3, 4}) == 7
    assert _ahead(_node({1: 50, 2: 49, 3: 49, 4: 0}), {1, 2, 3, 4}) == 49
    assert _ahead(_node({1: 50, 2: 40}), {1, 2, 3}) == 40
    assert _ahead(_node({}), set()) == 0


def _save(ckpt: Checkpoint, r: int) -> bool:
    return ckpt.save(params={"w": np.full(3, float(r), np.float32)},
                     extra={"opt": np.arange(r)}, header={"round": r, "rows": [r] * r})


def test_a_damaged_checkpoint_resumes_from_the_one_before(tmp_path: Path):
    ckpt = Checkpoint(tmp_path / "checkpoint.npz", "run-a")
    for r in (1, 2, 3):
        assert _save(ckpt, r)
    data = ckpt.path.read_bytes()
    ckpt.path.write_bytes(data[: len(data) // 2])  # cut in half
    params, extra, header = Checkpoint(ckpt.path, "run-a").load()
    assert header["round"] == 2 and header["rows"] == [2, 2]
    np.testing.assert_array_equal(params["w"], [2, 2, 2])
    np.testing.assert_array_equal(extra["opt"], [0, 1])
    fresh = Checkpoint(ckpt.path, "run-a")
    fresh.load()
    assert len(fresh.notes) == 1 and "resuming from checkpoint.prev.npz, round 2" in \
        fresh.notes[0]
    assert Checkpoint(ckpt.path, "run-b").load() is None  # another run's: start afresh


def test_two_damaged_checkpoints_are_one_line(tmp_path: Path):
    ckpt = Checkpoint(tmp_path / "checkpoint.npz", "run-a")
    ckpt.path.write_bytes(b"PK\x03\x04 not a zip")
    ckpt.prev.write_bytes(b"")
    with pytest.raises(ConfigError) as err:
        ckpt.load()
    assert "\n" not in str(err.value) and "delete them" in str(err.value)


def test_a_checkpoint_that_cannot_be_written_is_a_note_not_a_crash(tmp_path: Path):
    ckpt = Checkpoint(tmp_path / "gone" / "checkpoint.npz", "run-a")  # no such folder
    assert not _save(ckpt, 1)
    assert len(ckpt.notes) == 1 and "checkpoint not saved" in ckpt.notes[0]


# sessions: learnt by challenge and answer, so a frame of an earlier launch cannot pass ------


class Pair:
    """Two NetNodes (0 and 1) on an in-memory hub; node 1 can be relaunched (new session)."""

    RUN = "sessions"
    PARAMS = {"w": np.arange(3, dtype=np.float32)}

    def __init__(self) -> None:
        self.hub = MemoryHub()
        self.got: dict[int, list[Message]] = {0: [], 1: []}
        self.stack = contextlib.AsyncExitStack()
        self.nodes: dict[int, NetNode] = {}
        self.launched: list[NetNode] = []
        self.loops: dict[int, asyncio.Task] = {}

    async def launch(self, node: int, *, listen: bool = True) -> NetNode:
        transport = MemoryTransport(TransportConfig(kind="memory", node=node), hub=self.hub)
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(transport)

        async def keep(msg: Message, node=node) -> None:
            self.got[node].append(msg)

        net = NetNode(node=node, transport=transport, secret=b"s", run=self.RUN,
                      spec=ModelSpec.from_params(self.PARAMS), allowed=[1 - node],
                      on_message=keep)
        if listen:
            self.loops[node] = asyncio.create_task(net.receive_loop())
        self.nodes[node] = net
        self.launched.append(net)
        self.stack.push_async_callback(stack.aclose)
        return net

    def model(self, sender: int, round_: int = 1) -> Message:
        return Message(kind="model", run=self.RUN, sender=sender, round=round_,
                       params=self.PARAMS)

    async def stop(self, node: int) -> None:
        task = self.loops.pop(node, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for node in list(self.loops):
            await self.stop(node)
        for net in self.launched:
            await net.close()
        await self.stack.aclose()


@pytest.fixture
async def pair():
    p = Pair()
    yield p
    await p.close()


def captured(node: NetNode) -> list[bytes]:
    """From now on, what `node` sends is kept in the returned list instead of delivered."""
    kept: list[bytes] = []

    async def keep(dest: int, frame: bytes) -> None:
        kept.append(frame)

    node.transport.send = keep
    return kept


async def recorded_frame_of_an_earlier_launch(pair: Pair, receiver: NetNode) -> bytes:
    """What node 1 sent `receiver` in a launch before this one (a frame an eavesdropper
    kept)."""
    earlier = await pair.launch(1, listen=False)
    sent = captured(earlier)
    earlier.sessions[0] = receiver.session  # it had learnt the receiver's session
    await earlier.send(0, pair.model(1))
    pair.hub.detach(1)
    return sent[0]


async def test_a_frame_of_an_earlier_launch_is_dropped_even_before_the_handshake(pair: Pair):
    receiver = await pair.launch(0)
    old = await recorded_frame_of_an_earlier_launch(pair, receiver)
    assert decode(old, secret=b"s").kind == "model"
    await receiver.transport.incoming().put(old)  # replayed before anyone said hello
    await pair.settle()
    assert pair.got[0] == []  # it waits: its session is not known yet
    sender = await pair.launch(1)  # node 1's real launch
    assert await sender.handshake([0], round_=1, timeout=5) == set()
    await pair.settle()
    assert pair.got[0] == []
    assert receiver.rejected == Counter({"foreign session": 1})
    assert receiver.sessions[1] == sender.session != decode(old, secret=b"s").meta["session"]
    await sender.send(0, pair.model(1, round_=2))  # the real launch's frames go through
    await pair.settle()
    assert [m.round for m in pair.got[0]] == [2]
    assert receiver.rejected == Counter({"foreign session": 1})


async def test_frames_sent_before_the_answer_wait_and_are_delivered_in_order(pair: Pair):
    receiver = await pair.launch(0)
    sender = await pair.launch(1)
    # node 1 speaks first, without a handshake: node 0 challenges it and holds the frames
    for r in (1, 2, 3):
        await sender.send(0, pair.model(1, round_=r))
    await pair.settle()
    assert [m.round for m in pair.got[0]] == [1, 2, 3]
    assert receiver.rejected == Counter() and sender.rejected == Counter()
    assert receiver.sessions == {1: sender.session} and receiver.heard == {1}
    assert sender.sessions == {0: receiver.session} and not sender.outbox.get(0)


async def test_nothing_but_a_hello_goes_to_a_node_whose_session_is_unknown(pair: Pair):
    sender = await pair.launch(1)
    sent = captured(sender)
    assert await sender.send(0, pair.model(1))  # held, and a challenge goes out
    assert [decode(f, secret=b"s").kind for f in sent] == ["hello"]
    assert [m.round for m in sender.outbox[0]] == [1]
    pair.hub.detach(1)
    lonely = await pair.launch(1)  # node 0 is not up: unreachable, and nothing is held
    assert not await lonely.send(0, pair.model(1))
    assert not lonely.outbox.get(0)
    assert not await lonely.send(0, pair.model(1, round_=2))  # tried again, not assumed held


async def test_messages_sent_while_a_challenge_is_retried_all_learn_it_failed(pair: Pair):
    node = await pair.launch(1)

    async def slow_failure(dest: int, frame: bytes) -> None:  # TCP retrying a dead peer
        await asyncio.sleep(0.1)
        raise TransportError("connection refused")

    node.transport.send = slow_failure
    sent = await asyncio.gather(node.send(0, pair.model(1)), node.send(0, pair.model(1, 2)))
    assert sent == [False, False] and not node.outbox.get(0)
    assert 0 not in node.challenged  # the next message asks again at once


async def test_a_frame_sent_to_a_previous_launch_cannot_be_replayed_after_a_restart(
        pair: Pair):
    first = await pair.launch(0)
    sender = await pair.launch(1)
    assert await sender.handshake([0], round_=1, timeout=5) == set()
    await pair.settle()
    # node 1 sends node 0 a frame after node 0's last checkpoint; an eavesdropper keeps it
    real = sender.transport.send
    kept = captured(sender)
    await sender.send(0, pair.model(1, round_=5))
    sender.transport.send = real
    assert decode(kept[0], secret=b"s").meta["for"] == first.session
    # node 0 restarts (a new session) and the kept frame is replayed to it
    await pair.stop(0)
    pair.hub.detach(0)
    second = await pair.launch(0)
    await second.transport.incoming().put(kept[0])
    await pair.settle()
    assert second.rejected == Counter({"not for this launch": 1})
    # the replay made node 0 challenge node 1, which learnt the new session from it and sent
    # its latest message again: a new frame (its own number, this launch's session)
    assert sender.sessions[0] == second.session != first.session
    (again,) = pair.got[0]
    assert again.round == 5 and again.meta["for"] == second.session
    assert again.meta["seq"] > decode(kept[0], secret=b"s").meta["seq"]
    await sender.send(0, pair.model(1, round_=6))
    await pair.settle()
    assert [m.round for m in pair.got[0]] == [5, 6]
    assert second.rejected == Counter({"not for this launch": 1})


async def test_frames_sent_across_a_restart_reach_the_new_launch(pair: Pair):
    first = await pair.launch(0)
    sender = await pair.launch(1)
    assert await sender.handshake([0], round_=1, timeout=5) == set()
    await pair.settle()
    # node 0 crashes; node 1's message of round 3 goes to the old launch and is lost
    await pair.stop(0)
    pair.hub.detach(0)
    assert not await sender.send(0, pair.model(1, round_=3))
    second = await pair.launch(0)
    second.round = 3  # resumed from its checkpoint at round 3
    # its hello tells node 1 that it restarted: node 1 forgets the old session at once, so
    # what it sends meanwhile waits for the answer instead of naming the old launch
    assert await second.handshake([1], round_=3, timeout=5) == set()
    await sender.send(0, pair.model(1, round_=4))
    await pair.settle()
    assert [m.round for m in pair.got[0]] == [3, 4]  # round 3 sent again, then round 4
    assert second.rejected == Counter() and first.session != second.session


async def test_a_replayed_hello_cannot_set_a_session_and_a_restart_is_learnt(pair: Pair):
    receiver = await pair.launch(0)
    first = await pair.launch(1)
    assert await first.handshake([0], round_=1, timeout=5) == set()
    await pair.settle()
    assert receiver.sessions[1] == first.session
    # a hello of node 1's first launch, replayed: answered, but the session stays
    hello = encode(dataclasses.replace(first._hello(1), meta={
        "ack": 0, "seq": first._seq + 7, "to": 0, "session": 12345}), secret=b"s")
    await receiver.transport.incoming().put(hello)
    await pair.settle()
    assert receiver.sessions[1] == first.session
    # an answer to a challenge node 0 never made is dropped
    forged_ack = encode(dataclasses.replace(first._hello(1, ack=1, echo=999), meta={
        "ack": 1, "echo": 999, "seq": first._seq + 9, "to": 0, "session": 12345}),
        secret=b"s")
    await receiver.transport.incoming().put(forged_ack)
    await pair.settle()
    assert receiver.sessions[1] == first.session
    assert receiver.rejected == Counter({"stale handshake": 1})
    # node 1 restarts: a new session, learnt from its answer; its frames go through
    await pair.stop(1)
    pair.hub.detach(1)
    second = await pair.launch(1)
    assert await second.handshake([0], round_=1, timeout=5) == set()
    await second.send(0, pair.model(1, round_=4))
    await pair.settle()
    assert receiver.sessions[1] == second.session != first.session
    assert [m.round for m in pair.got[0]] == [4]


def lose_first_hello(node: NetNode) -> list[bytes]:
    """Make `node`'s transport lose the first hello it sends; returns what was lost."""
    real, lost = node.transport.send, []

    async def lossy(dest: int, frame: bytes) -> None:
        if not lost and decode(frame, secret=b"s").kind == "hello":
            lost.append(frame)
            return
        await real(dest, frame)

    node.transport.send = lossy
    return lost


async def test_a_lost_challenge_is_sent_again_and_no_frame_is_lost(monkeypatch, pair: Pair):
    monkeypatch.setattr("gossipser.net.node.RECHALLENGE_S", 0.05)
    receiver = await pair.launch(0)
    sender = await pair.launch(1)
    lost = lose_first_hello(receiver)
    for r in (1, 2, 3):  # the first frame's challenge is lost; a later frame asks again
        await sender.send(0, pair.model(1, round_=r))
        await asyncio.sleep(0.1)
    await pair.settle()
    assert lost and [m.round for m in pair.got[0]] == [1, 2, 3]
    assert receiver.rejected == Counter() and receiver.sessions == {1: sender.session}


async def test_a_late_answer_of_a_previous_launch_cannot_undo_a_restart(pair: Pair):
    receiver = await pair.launch(0)
    first = await pair.launch(1, listen=False)
    receiver._challenge(1)  # node 0 asks node 1's first launch; its answer is delayed
    challenge = decode(await first.transport.incoming().__anext__(), secret=b"s")
    held = captured(first)
    await first.send(0, first._hello(0, ack=1, echo=challenge.meta["session"]))
    pair.hub.detach(1)
    second = await pair.launch(1)  # node 1 restarts and answers with its new session
    assert await second.handshake([0], round_=1, timeout=5) == set()
    await pair.settle()
    assert receiver.sessions[1] == second.session
    await receiver.transport.incoming().put(held[0])  # the old answer arrives at last
    await pair.settle()
    assert receiver.sessions[1] == second.session
    assert receiver.rejected == Counter({"stale handshake": 1})
    await second.send(0, pair.model(1, round_=2))
    await pair.settle()
    assert [m.round for m in pair.got[0]] == [2]
