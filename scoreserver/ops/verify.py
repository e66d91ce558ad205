"""The command line's checks of scores (docs/verification.md): `verify` (a receipt, a
checkpoint or a board snapshot, offline with a keys file or against a server), `log verify`
(the database against its own log and checkpoints), `log watch` (a server's checkpoints,
each consistent with the last) and `boards snapshot` (a signed copy of a board).

Each check prints what it established, one fact a line, and exits 0; or prints what failed,
naming the entry, row or signature, and exits 1.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from scoreserver.core import merkle
from scoreserver.server.results_log import ResultsLog
from scoreserver.store import Store
from scoreserver.wire import receipts
from scoreserver.wire.receipts import Checkpoint, PublishedKey, VerifyError
from scoreserver.wire.tokens import KeyRing, load_or_create_key, public_from_raw

HTTP_TIMEOUT_S = 10.0


def n_entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


class Server:
    """A server's public routes (`--server URL`)."""

    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=HTTP_TIMEOUT_S)

    def close(self) -> None:
        self.client.close()

    def get(self, path: str, **params: Any) -> httpx.Response:
        try:
            reply = self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise VerifyError(f"cannot reach the server ({exc})") from None
        if reply.status_code != 200:
            raise VerifyError(f"{path} answered {reply.status_code}: {reply.text[:200]}")
        return reply

    def keys(self) -> list[PublishedKey]:
        return receipts.keys_from_json(self.get("/api/keys").json())

    def checkpoint(self, keys: list[PublishedKey]) -> Checkpoint:
        return receipts.verify_checkpoint(self.get("/api/log/checkpoint").text, keys)

    def entry(self, index: int) -> str:
        entries = self.get("/api/log/entries", start=index, end=index + 1).json()["entries"]
        if not entries or entries[0]["index"] != index:
            raise VerifyError(f"the server has no log entry {index}")
        return str(entries[0]["entry"])

    def included(self, leaf: bytes, index: int, checkpoint: Checkpoint) -> None:
        proof = self.get("/api/log/proof", index=index, size=checkpoint.size).json()["proof"]
        if not merkle.verify_inclusion(
            leaf, index, checkpoint.size, [unb64(p) for p in proof], checkpoint.root
        ):
            raise VerifyError(f"entry {index} is not in the log the checkpoint signs")

    def consistent(self, old: Checkpoint, new: Checkpoint) -> None:
        if old.origin != new.origin:
            raise VerifyError(f"another log ({new.origin}, not {old.origin})")
        if new.size < old.size:
            raise VerifyError(f"the log shrank from {old.size} to {new.size} entries")
        proof = self.get("/api/log/consistency", **{"from": old.size, "to": new.size})
        path = [unb64(p) for p in proof.json()["proof"]]
        if not merkle.verify_consistency(old.size, new.size, old.root, new.root, path):
            raise VerifyError(
                f"the log of {new.size} entries does not extend the one of {old.size}:"
                " its history was rewritten"
            )


def _keys(args: argparse.Namespace, server: Server | None) -> list[PublishedKey]:
    if args.keys is not None:
        try:
            return receipts.keys_from_json(json.loads(Path(args.keys).read_text()))
        except (OSError, ValueError) as exc:
            raise VerifyError(f"cannot read the keys in {args.keys} ({exc})") from None
    if server is not None:
        return server.keys()
    raise VerifyError("give the keys: --keys FILE (saved from GET /api/keys) or --server URL")


def _read_input(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise VerifyError(f"cannot read {name} ({exc})") from None


def cmd_verify(args: argparse.Namespace) -> int:
    """`scoreserver verify FILE|-`: what the receipt, checkpoint or snapshot proves."""
    say: Callable[[str], None] = print
    server = Server(args.server) if args.server else None
    try:
        text = _read_input(args.file)
        keys = _keys(args, server)
        stripped = text.strip()
        if stripped.startswith("{"):
            _verify_snapshot(json.loads(stripped), keys, server, say)
        elif "\n\n\u2014 " in text:
            _verify_checkpoint(text, keys, server, say)
        else:
            _verify_receipt(stripped, keys, server, say)
    except (VerifyError, ValueError) as exc:
        print(f"scoreserver: does not verify: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.close()
    return 0


def _verify_receipt(
    token: str, keys: list[PublishedKey], server: Server | None, say: Callable[[str], None]
) -> None:
    receipt = receipts.verify_receipt(token, keys)
    say(f"receipt: signed by key {receipt.kid.hex()} of this deployment")
    say(
        f"  {receipt.name} (player {receipt.user_id}) scored {receipt.score} in"
        f" {receipt.game_id}, session {receipt.session_id.hex()}"
    )
    say(f"  played {_when(receipt.started_at)} to {_when(receipt.ended_at)}")
    say(f"  saved {_when(receipt.saved_at)} as entry {receipt.log_index} of the results log")
    if server is None:
        say("  (offline: its place in the log is not checked; --server URL checks it)")
        return
    checkpoint = server.checkpoint(keys)
    text = server.entry(receipt.log_index)
    fields = json.loads(text)
    wanted = {
        "kind": "result",
        "session": receipt.session_id.hex(),
        "game": receipt.game_id,
        "score": receipt.score,
        "player": receipt.player,
        "points": receipt.points_digest.hex(),
    }
    for key, value in wanted.items():
        if fields.get(key) != value:
            raise VerifyError(
                f"log entry {receipt.log_index} says {key} {fields.get(key)!r},"
                f" the receipt {value!r}"
            )
    server.included(receipts.entry_leaf(text), receipt.log_index, checkpoint)
    say(
        f"  in the log: entry {receipt.log_index} matches, included in the signed checkpoint"
        f" of {n_entries(checkpoint.size)} ({checkpoint.origin})"
    )
    later = [
        json.loads(e["entry"])
        for e in server.get(
            "/api/log/entries", start=receipt.log_index + 1, end=checkpoint.size
        ).json()["entries"]
    ]
    changes = [
        e["kind"]
        for e in later
        if e.get("session") == receipt.session_id.hex() or e.get("player") == receipt.player
    ]
    if changes:
        say(f"  since then (first 1,000 entries): {', '.join(changes)}")


def _verify_checkpoint(
    note: str, keys: list[PublishedKey], server: Server | None, say: Callable[[str], None]
) -> None:
    checkpoint = receipts.verify_checkpoint(note, keys)
    say(f"checkpoint: {checkpoint.origin}, {n_entries(checkpoint.size)}, signed by this deployment")
    say(f"  root {checkpoint.root.hex()}")
    if server is not None:
        latest = server.checkpoint(keys)
        server.consistent(checkpoint, latest)
        say(f"  the server's log of {n_entries(latest.size)} extends it (consistency proof)")


def _verify_snapshot(
    document: dict[str, Any],
    keys: list[PublishedKey],
    server: Server | None,
    say: Callable[[str], None],
) -> None:
    checkpoint = receipts.verify_snapshot(document, keys)
    entries = document.get("entries") or []
    say(
        f"board snapshot: {document.get('title')} ({document.get('game_id')}),"
        f" {document.get('window')}, taken {_when(int(document['taken_at']))}, signed by key"
        f" {document.get('kid')}"
    )
    say(f"  at checkpoint {checkpoint.size} of {checkpoint.origin}")
    for entry in entries:
        say(f"  {entry.get('rank'):>4}  {entry.get('score'):>8}  {entry.get('name')}")
    if server is None:
        return
    latest = server.checkpoint(keys)
    server.consistent(checkpoint, latest)
    for entry in entries:
        index = entry.get("log_index")
        if index is None:
            raise VerifyError(f"{entry.get('name')}'s result names no log entry")
        text = server.entry(index)
        fields = json.loads(text)
        if (fields.get("session"), fields.get("score")) != (
            entry.get("session_id"),
            entry.get("score"),
        ):
            raise VerifyError(f"log entry {index} is not {entry.get('name')}'s result")
        server.included(receipts.entry_leaf(text), index, checkpoint)
    say(f"  every result on it is in the log, and the server's log of {latest.size} extends it")


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


# --- log verify -----------------------------------------------------------------------------


async def cmd_log_verify(args: argparse.Namespace, store: Store) -> int:
    """Recompute the log from the database and check it against every stored checkpoint and
    the results it records."""
    problems = await audit_log(store)
    if problems:
        for problem in problems:
            print(f"scoreserver: log verify: {problem}", file=sys.stderr)
        return 1
    size = await store.log_size()
    checkpoints = await store.log_checkpoints()
    print(f"ok: {n_entries(size)}, {len(checkpoints)} checkpoints, every result as the log says")
    return 0


async def audit_log(store: Store) -> list[str]:
    problems: list[str] = []
    size = await store.log_size()
    entries: list[str] = []
    while len(entries) < size:
        rows = await store.log_entries(len(entries), size)
        if not rows or rows[0][0] != len(entries):
            problems.append(f"entry {len(entries)} is missing (deleted?)")
            break
        entries += [body for _, body in rows]
    tree = merkle.Tree([receipts.entry_leaf(e) for e in entries])
    _, history = await store.key_history()
    keys = [
        PublishedKey(
            bytes.fromhex(k["kid"]),
            public_from_raw(k["public_key"]),
            k["created_at"],
            k["retired_at"],
        )
        for k in history
    ]
    good = 0  # the largest size whose signed root the entries still give
    for stored in await store.log_checkpoints():  # by size
        try:
            checkpoint = receipts.verify_checkpoint(stored["note"], keys)
        except VerifyError as exc:
            problems.append(f"checkpoint {stored['size']}: {exc}")
            continue
        if checkpoint.size != stored["size"] or checkpoint.root != stored["root"]:
            problems.append(f"checkpoint {stored['size']}: its row and its note disagree")
        if checkpoint.size > len(tree):
            problems.append(
                f"checkpoint {checkpoint.size}: the log has only {len(tree)} entries"
                " (entries were deleted)"
            )
        elif tree.root(checkpoint.size) == checkpoint.root:
            good = max(good, checkpoint.size)
        else:
            which = (
                f"entry {good}"
                if checkpoint.size - good == 1
                else f"one of entries {good}..{checkpoint.size - 1}"
            )
            problems.append(
                f"checkpoint {checkpoint.size}: the entries differ from what it signed"
                f" ({which} was changed)"
            )
    audit = await store.log_audit_rows()
    scores, salts = audit["scores"], audit["salts"]
    logged: dict[str, int] = {}
    hidden: dict[str, bool] = {}
    for index, text in enumerate(entries):
        fields = json.loads(text)
        if fields.get("kind") in ("hidden", "restored"):
            hidden[fields.get("session")] = fields["kind"] == "hidden"
        if fields.get("kind") != "result":
            continue
        session = fields.get("session")
        logged[session] = index
        row = scores.get(session)
        if row is None:
            problems.append(f"entry {index}: the result of session {session} is not in scores")
            continue
        if (row["score"], row["game"]) != (fields.get("score"), fields.get("game")):
            problems.append(
                f"entry {index}: session {session} scored {fields.get('score')} in"
                f" {fields.get('game')}; scores says {row['score']} in {row['game']}"
            )
        salt = salts.get(row["user_id"])
        if salt is not None and receipts.player_commitment(salt, row["user_id"]) != fields.get(
            "player"
        ):
            problems.append(f"entry {index}: session {session} belongs to another player")
        if row["log_index"] != index:
            problems.append(f"entry {index}: scores names entry {row['log_index']} for {session}")
    for session, row in scores.items():
        if session not in logged:
            problems.append(f"scores row of session {session} ({row['score']}) is in no entry")
    return problems


# --- log watch ------------------------------------------------------------------------------


def cmd_log_watch(args: argparse.Namespace) -> int:
    """Follow a server's checkpoints: each must be signed by a key the server published and
    extend the last one seen (kept in --state between runs)."""
    server = Server(args.url)
    try:
        return _watch(args, server)
    finally:
        server.close()


def _watch(args: argparse.Namespace, server: Server) -> int:
    state_path = Path(args.state)
    try:
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
    except (OSError, ValueError) as exc:
        print(f"scoreserver: cannot read {state_path} ({exc})", file=sys.stderr)
        return 1
    while True:
        try:
            keys = server.keys()
            latest = server.checkpoint(keys)
            if state.get("note"):
                last, _ = receipts.read_checkpoint(state["note"])
                server.consistent(last, latest)
            state = {"url": args.url, "note": latest.note}
            state_path.write_text(json.dumps(state))
            print(f"ok: {latest.origin}, {n_entries(latest.size)}, consistent with the last seen")
        except VerifyError as exc:
            print(f"scoreserver: log watch: {exc}", file=sys.stderr)
            return 1
        if args.once:
            return 0
        time.sleep(args.interval)


# --- boards snapshot ------------------------------------------------------------------------


class _Clock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)


class _Host:
    def __init__(self, store: Store, keys: KeyRing):
        self.store = store
        self.keys = keys
        self.clock = _Clock()


async def cmd_boards_snapshot(args: argparse.Namespace, store: Store) -> int:
    game = await store.game(args.game_id)
    if game is None:
        print(f"scoreserver: not found: no game {args.game_id!r}", file=sys.stderr)
        return 1
    keys = KeyRing(load_or_create_key(Path(args.key)))
    host = _Host(store, keys)
    out = trio.Path(args.out)
    if await out.exists():
        print(f"scoreserver: error: {out} exists; the snapshot is not written", file=sys.stderr)
        return 1
    document = await ResultsLog(host).snapshot(  # type: ignore[arg-type]
        args.game_id, window=args.window, limit=args.limit, title=game.title
    )
    text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    await out.write_text(text, encoding="utf-8")
    print(f"{out}: {len(document['entries'])} places of {args.game_id}, signed")
    return 0
