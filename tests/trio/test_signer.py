"""Point tokens signed in the child process: correct, in order, and never lost.

Real child processes, so no autojump_clock; every test is capped with fail_after.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import scoreserver
from scoreserver.children import python_module
from scoreserver.server import signer_child as _signer_child
from scoreserver.server.app import make_signer, signer_for, usable_cores
from scoreserver.server.signer import InlineSigner, ProcessSigner
from scoreserver.wire.tokens import KeyRing, Purpose

from ..conftest import (
    add_game,
    child_processes,
    connect,
    http,
    make_config,
    register,
    running_server,
)

SESSION = os.urandom(16)
NOW = 1_700_000_000_000


def point_body(keys: KeyRing, seq: int) -> bytes:
    return keys.body(Purpose.POINT, SESSION, 7, "demo", NOW + seq, seq)


async def sign_many(signer: ProcessSigner, keys: KeyRing, seqs: range) -> dict[int, str]:
    tokens: dict[int, str] = {}

    async def one(seq: int) -> None:
        tokens[seq] = await signer.sign(keys, point_body(keys, seq))

    async with trio.open_nursery() as nursery:
        for seq in seqs:
            nursery.start_soon(one, seq)
    return tokens


def assert_tokens(keys: KeyRing, tokens: dict[int, str]) -> None:
    for seq, token in tokens.items():
        claims = keys.verify(token, Purpose.POINT, NOW)
        assert (claims.seq, claims.issued_at) == (seq, NOW + seq)


async def test_concurrent_signatures_each_match_their_own_body() -> None:
    keys = KeyRing(Ed25519PrivateKey.generate())
    signer = ProcessSigner()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(signer.run)
            assert signer.live
            tokens = await sign_many(signer, keys, range(1, 301))
            nursery.cancel_scope.cancel()
    assert len(tokens) == 300
    assert_tokens(keys, tokens)
    stats = signer.stats()
    assert stats["signed"] == 300 and stats["signed_on_loop"] == 0
    assert 1 <= signer.batches < 300  # they went in batches, not one write each


class StepCounter(trio.abc.Instrument):
    """Counts the scheduler's steps of each task, by the task's name."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1


async def test_a_lone_request_costs_the_helper_tasks_one_step_each() -> None:
    """At moderate load a batch is one point: the request is written in one step of the write
    loop and its answer read in one step of the read loop (no trio yield before a write the
    pipe takes whole, or a read that finds data). Each step is ~50 us of the event loop's
    time (docs/performance.md); with trio's pipe calls it was two steps each."""
    keys = KeyRing(Ed25519PrivateKey.generate())
    signer = ProcessSigner()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(signer.run)
            await signer.sign(keys, point_body(keys, 1))  # the key goes over; the child is up
            await trio.testing.wait_all_tasks_blocked()
            counter = StepCounter()
            trio.lowlevel.add_instrument(counter)
            try:
                for seq in range(2, 12):
                    token = await signer.sign(keys, point_body(keys, seq))
                    assert_tokens(keys, {seq: token})
                    await trio.testing.wait_all_tasks_blocked()
            finally:
                trio.lowlevel.remove_instrument(counter)
            nursery.cancel_scope.cancel()
    helper = {name: n for name, n in counter.steps.items() if "ProcessSigner" in name}
    for loop in ("_write_loop", "_read_loop"):
        assert sum(n for name, n in helper.items() if loop in name) == 10, helper


async def test_a_rotated_key_is_loaded_into_the_child_and_used_from_then_on() -> None:
    old, new = KeyRing(Ed25519PrivateKey.generate()), KeyRing(Ed25519PrivateKey.generate())
    signer = ProcessSigner()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(signer.run)
            before = await sign_many(signer, old, range(1, 21))
            after = await sign_many(signer, new, range(21, 41))
            again = await signer.sign(old, point_body(old, 99))
            nursery.cancel_scope.cancel()
    assert_tokens(old, before)
    assert_tokens(new, after)
    assert_tokens(old, {99: again})
    with pytest.raises(Exception, match="unknown key id"):
        new.verify(before[1], Purpose.POINT, NOW)


async def test_a_killed_child_costs_speed_not_tokens() -> None:
    keys = KeyRing(Ed25519PrivateKey.generate())
    signer = ProcessSigner()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(signer.run)
            first = await sign_many(signer, keys, range(1, 11))
            child = child_processes("signer_child")
            assert len(child) == 1
            os.kill(child[0], signal.SIGKILL)
            # Signatures asked for while and after the child dies are all made, here.
            rest = await sign_many(signer, keys, range(11, 61))
            while signer.live:
                await trio.sleep(0.01)
            late = await sign_many(signer, keys, range(61, 71))
            nursery.cancel_scope.cancel()
    assert_tokens(keys, first | rest | late)
    assert signer.stats()["signed_on_loop"] >= 10
    assert signer.stats()["mode"] != "process"


async def test_a_child_that_cannot_start_leaves_signing_on_the_loop() -> None:
    keys = KeyRing(Ed25519PrivateKey.generate())
    signer = ProcessSigner(command=["/nonexistent/python"])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(signer.run)
            tokens = await sign_many(signer, keys, range(1, 6))
            nursery.cancel_scope.cancel()
    assert not signer.live
    assert_tokens(keys, tokens)


async def test_a_child_that_exits_at_once_is_taken_over() -> None:
    keys = KeyRing(Ed25519PrivateKey.generate())
    signer = ProcessSigner(command=[sys.executable, "-c", "pass"])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(signer.run)
            tokens = await sign_many(signer, keys, range(1, 6))
            nursery.cancel_scope.cancel()
    assert_tokens(keys, tokens)
    assert signer.stats()["signed_on_loop"] == 5


def _run_child(frames: bytes) -> tuple[int, bytes]:
    """Feed `frames` to the child's loop through real pipes; its exit code and output."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, frames)
    os.close(in_w)
    code = _signer_child.serve(in_r, out_w)
    os.close(in_r)
    os.close(out_w)
    output = b""
    while chunk := os.read(out_r, 65536):
        output += chunk
    os.close(out_r)
    return code, output


def test_child_signs_frames_split_anywhere_and_rejects_unknown_ones() -> None:
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    frame = struct.Struct(">cBH")
    bodies = [b"a" * 60, b"b" * 75]
    stream = frame.pack(b"K", 3, 32) + raw
    stream += b"".join(frame.pack(b"S", 3, len(b)) + b for b in bodies)
    code, output = _run_child(stream)
    assert code == 0
    assert len(output) == 128
    for i, body in enumerate(bodies):
        key.public_key().verify(output[i * 64 : (i + 1) * 64], body)  # raises if wrong
    assert _run_child(frame.pack(b"S", 9, 1) + b"x")[0] == 2  # no key in that slot
    assert _run_child(frame.pack(b"Z", 0, 0))[0] == 2  # unknown kind


def test_the_child_answers_a_long_read_a_few_signatures_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ten requests in one read are answered in writes of ANSWER_EVERY signatures, in order:
    the first sessions of a scheduler pass do not wait for the last one's signatures."""
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    frame = struct.Struct(">cBH")
    bodies = [bytes([n]) * 40 for n in range(10)]
    stream = frame.pack(b"K", 0, 32) + raw
    stream += b"".join(frame.pack(b"S", 0, len(b)) + b for b in bodies)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, stream)
    os.close(in_w)
    writes: list[int] = []
    write = os.write

    def counted(fd: int, data: bytes | memoryview) -> int:
        writes.append(len(data))
        return write(fd, data)

    monkeypatch.setattr(_signer_child.os, "write", counted)
    assert _signer_child.serve(in_r, out_w) == 0
    monkeypatch.undo()
    os.close(in_r)
    os.close(out_w)
    output = os.read(out_r, 65536)
    os.close(out_r)
    every = _signer_child.ANSWER_EVERY
    assert 1 < every < len(bodies)
    assert writes == [every * 64] * (len(bodies) // every) + [len(bodies) % every * 64]
    assert len(output) == len(bodies) * 64
    for i, body in enumerate(bodies):
        key.public_key().verify(output[i * 64 : (i + 1) * 64], body)


def test_signer_modes() -> None:
    assert isinstance(make_signer("inline"), InlineSigner)
    assert isinstance(make_signer("process"), ProcessSigner)
    expected = ProcessSigner if usable_cores() > 1 else InlineSigner
    assert isinstance(make_signer("auto"), expected)
    # auto weighs the cores each event loop has: `--workers 2` on two cores signs inline.
    assert [
        signer_for(cores, loops) for cores, loops in [(2, 1), (2, 2), (1, 1), (8, 2), (4, 3)]
    ] == [
        "process",
        "inline",
        "inline",
        "process",
        "inline",
    ]
    many = ProcessSigner if usable_cores() >= 4 else InlineSigner
    assert isinstance(make_signer("auto", loops=2), many)
    with pytest.raises(ValueError, match="signer must be one of"):
        make_signer("gpu")


async def test_a_game_over_real_sockets_gets_its_point_tokens_from_the_child(tmp_path) -> None:
    add_game(tmp_path / "test.db", "quick", duration_ms=60_000)
    with trio.fail_after(20):
        async with running_server(make_config(tmp_path)) as srv:
            player = await register(srv, "signed")
            async with connect(srv) as client:
                await client.login(player)
                await client.enter("quick", player["user_id"])
                await client.start(int(time.time() * 1000))
                claims = await client.score(lambda: int(time.time() * 1000), 5, 0.01)
            async with http(srv) as api:
                stats = (await api.get("/api/stats")).json()
            keys = srv.service.keys
            for i, claim in enumerate(claims, 1):
                assert keys.verify(claim["token"], Purpose.POINT, NOW).seq == i
    assert stats["signer"]["mode"] == "process"
    assert stats["signer"]["signed"] == 5


def test_helper_processes_import_the_servers_own_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    command, env = python_module("scoreserver.server.signer_child")
    assert command == [sys.executable, "-m", "scoreserver.server.signer_child"]
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(Path(scoreserver.__file__).resolve().parent.parent), "/somewhere/else"]


async def test_many_bodies_in_one_request_come_back_in_order() -> None:
    keys = KeyRing(Ed25519PrivateKey.generate())
    signer = ProcessSigner()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(signer.run)
            bodies = [point_body(keys, seq) for seq in range(1, 33)]
            tokens, single = (
                await signer.sign_many(keys, bodies),
                await signer.sign(keys, point_body(keys, 40)),
            )
            nursery.cancel_scope.cancel()
    assert_tokens(keys, dict(zip(range(1, 33), tokens, strict=True)) | {40: single})
    assert await signer.sign_many(keys, []) == []
    assert signer.stats()["signed"] == 33
