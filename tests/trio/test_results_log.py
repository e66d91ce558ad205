"""Receipts and the results log (issue 29), against a real server on both engines: a kept
result's receipt verifies offline with the published keys and nothing else does; its entry is
in the log and proven by the server's signed checkpoints; every change to what a board shows
is an entry; an erasure leaves the log valid and nameless."""

from __future__ import annotations

import base64
import contextlib
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from scoreserver.core import merkle
from scoreserver.ops.cli import main as cli_main
from scoreserver.server.app import Server
from scoreserver.store.connect import open_database
from scoreserver.store.engine import transaction
from scoreserver.wire import receipts
from scoreserver.wire.receipts import PublishedKey, VerifyError
from scoreserver.wire.tokens import KeyRing, b64decode, b64encode, key_id

from .. import databases
from ..conftest import add_game, connect, http, make_config, running_server
from .test_consoles import admin as admin_login
from .test_end_to_end import new_player, play_quick, submit_http
from .test_moderation import run_cli

pytestmark = pytest.mark.engines


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


async def keys_of(api: httpx.AsyncClient) -> list[PublishedKey]:
    return receipts.keys_from_json((await api.get("/api/keys")).json())


async def kept_result(server: Server, name: str, n: int) -> dict[str, Any]:
    player = await new_player(server, name)
    async with connect(server) as client:
        await client.login(player)
        game = await play_quick(client, n, player["user_id"])
    body = {k: game[k] for k in ("start_token", "end_token", "points")}
    result = await submit_http(server, body, player["token"])
    assert result["saved"], result
    return {**result, "player": player, "game": game}


async def test_a_receipt_verifies_offline_and_its_entry_is_proven_by_a_checkpoint(
    server: Server,
) -> None:
    with trio.fail_after(60):
        kept = await kept_result(server, "Rhea", 3)
        async with http(server) as api:
            keys = await keys_of(api)
            receipt = receipts.verify_receipt(kept["receipt"], keys)
            assert (receipt.score, receipt.name, receipt.game_id) == (3, "Rhea", "quick")
            assert receipt.user_id == kept["player"]["user_id"]
            assert receipt.session_id.hex() == kept["game"]["session_id"]
            assert receipt.log_index == kept["log_index"]
            tokens = [p["token"] for p in kept["game"]["points"]]
            assert receipt.points_digest == receipts.points_digest(tokens)
            note = (await api.get("/api/log/checkpoint")).text
            checkpoint = receipts.verify_checkpoint(note, keys)
            assert checkpoint.size > receipt.log_index
            proof = (
                await api.get(
                    "/api/log/proof",
                    params={"index": receipt.log_index, "size": checkpoint.size},
                )
            ).json()
            entry = (
                await api.get(
                    "/api/log/entries",
                    params={"start": receipt.log_index, "end": receipt.log_index + 1},
                )
            ).json()["entries"][0]
        leaf = receipts.entry_leaf(entry["entry"])
        assert merkle.verify_inclusion(
            leaf,
            receipt.log_index,
            checkpoint.size,
            [unb64(p) for p in proof["proof"]],
            checkpoint.root,
        )
        fields = json.loads(entry["entry"])
        assert fields["kind"] == "result"
        assert fields["session"] == receipt.session_id.hex()
        assert fields["score"] == 3
        assert fields["player"] == receipt.player
        assert fields["points"] == receipt.points_digest.hex()
        assert "Rhea" not in entry["entry"]


async def test_every_single_byte_change_of_a_receipt_is_refused(server: Server) -> None:
    with trio.fail_after(60):
        kept = await kept_result(server, "Bytes", 2)
        async with http(server) as api:
            keys = await keys_of(api)
        raw = b64decode(kept["receipt"])
        reasons = set()
        for i in range(len(raw)):
            changed = bytearray(raw)
            changed[i] ^= 0x01
            with pytest.raises(VerifyError) as refused:
                receipts.verify_receipt(b64encode(bytes(changed)), keys)
            reasons.add(str(refused.value).split(" (")[0])
        assert reasons  # each refusal says why, in words
        assert all(reason for reason in reasons)
        with pytest.raises(VerifyError, match="not a receipt"):
            receipts.verify_receipt(kept["receipt"][:-4], keys)
        with pytest.raises(VerifyError, match="another kind"):
            receipts.verify_receipt(kept["game"]["start_token"], keys)


async def test_a_receipt_of_another_deployment_or_dated_after_its_key_retired_is_refused(
    server: Server,
) -> None:
    with trio.fail_after(60):
        kept = await kept_result(server, "Other", 2)
        async with http(server) as api:
            keys = await keys_of(api)
        receipt, _, _ = receipts.read_receipt(kept["receipt"])
        # Another deployment's key ring signs the same claims: its key is not ours.
        other = KeyRing(Ed25519PrivateKey.generate())
        forged = receipts.make_receipt(
            other,
            session_id=receipt.session_id,
            user_id=receipt.user_id,
            game_id=receipt.game_id,
            saved_at=receipt.saved_at,
            score=999,
            started_at=receipt.started_at,
            ended_at=receipt.ended_at,
            log_index=receipt.log_index,
            points_digest=receipt.points_digest,
            salt=receipt.salt,
            name=receipt.name,
        )
        with pytest.raises(VerifyError, match="do not include"):
            receipts.verify_receipt(forged, keys)
        # Our key, retired before the receipt's date.
        retired = [
            PublishedKey(k.kid, k.public_key, k.created_at, receipt.saved_at - 1) for k in keys
        ]
        with pytest.raises(VerifyError, match="retired"):
            receipts.verify_receipt(kept["receipt"], retired)
        assert key_id(other.signing_key.public_key()) not in {k.kid for k in keys}


async def test_what_changes_a_board_is_logged_and_an_erasure_leaves_the_log_valid_and_nameless(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(90):
        kept = await kept_result(server, "Vesna", 3)
        session = kept["game"]["session_id"]
        log = server.service.results_log
        first = await log.checkpoint()
        run_cli(server, "scores", "hide", session, "--note", "n", monkeypatch=monkeypatch)
        run_cli(server, "scores", "restore", session, "--note", "n", monkeypatch=monkeypatch)
        run_cli(
            server, "users", "ban", "Vesna", "--days", "1", "--note", "n", monkeypatch=monkeypatch
        )
        run_cli(server, "users", "unban", "Vesna", "--note", "n", monkeypatch=monkeypatch)
        async with http(server) as api:
            # The ban ended the player's logins: they log in again to erase their account.
            login = await api.post(
                "/api/login", json={"name": "Vesna", "password": "hunter2hunter2"}
            )
            erased = await api.request(
                "DELETE",
                "/api/me",
                json={"password": "hunter2hunter2"},
                headers={"authorization": f"Bearer {login.json()['token']}"},
            )
            assert erased.status_code == 200, erased.text
            keys = await keys_of(api)
            last = receipts.verify_checkpoint((await api.get("/api/log/checkpoint")).text, keys)
            entries = (await api.get("/api/log/entries", params={"start": 0})).json()["entries"]
            consistency = (
                await api.get(
                    "/api/log/consistency", params={"from": first["size"], "to": last.size}
                )
            ).json()
        kinds = [json.loads(e["entry"])["kind"] for e in entries]
        assert kinds[-6:] == ["result", "hidden", "restored", "banned", "unbanned", "erased"]
        assert all("Vesna" not in e["entry"] for e in entries)
        tree = merkle.Tree([receipts.entry_leaf(e["entry"]) for e in entries])
        assert tree.root(last.size) == last.root
        assert merkle.verify_consistency(
            first["size"],
            last.size,
            first["root"],
            last.root,
            [unb64(p) for p in consistency["proof"]],
        )
        # The erased player's entries can no longer be tied to the account: no salt is left.
        salts = await server.service.store.log_audit_rows()
        assert kept["player"]["user_id"] not in salts["salts"]


async def test_bad_log_queries_get_400_and_the_server_serves_on(server: Server) -> None:
    with trio.fail_after(60):
        await kept_result(server, "Quinn", 1)
        async with http(server) as api:
            size = receipts.read_checkpoint((await api.get("/api/log/checkpoint")).text)[0].size
            for path, params in (
                ("/api/log/proof", {"index": size}),
                ("/api/log/proof", {"index": -1}),
                ("/api/log/proof", {"index": 0, "size": size + 1}),
                ("/api/log/proof", {"index": "x"}),
                ("/api/log/proof", {"index": 2**63}),
                ("/api/log/proof", {}),
                ("/api/log/consistency", {"from": size + 1}),
                ("/api/log/consistency", {"from": 0, "to": size + 5}),
                ("/api/log/consistency", {}),
                ("/api/log/entries", {"start": 5, "end": 2}),
                ("/api/log/entries", {"start": "\u0661"}),
            ):
                reply = await api.get(path, params=params)
                assert reply.status_code == 400, (path, params, reply.text)
                assert reply.json()["error"] == "bad_request"
            assert (await api.get("/api/log/proof", params={"index": 0})).status_code == 200
            assert (await api.get("/healthz")).status_code == 200


# --- the command line: verify, log verify, log watch, boards snapshot ----------------------


async def cli(*args: str) -> tuple[int, str, str]:
    """`scoreserver ARGS` on a thread of its own (it may call this test's server)."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return cli_main(list(args))

    code = await trio.to_thread.run_sync(run)
    return code, out.getvalue(), err.getvalue()


async def test_verify_checks_a_receipt_offline_and_against_the_server(
    server: Server, tmp_path: Path
) -> None:
    with trio.fail_after(90):
        kept = await kept_result(server, "Cato", 2)
        async with http(server) as api:
            (tmp_path / "keys.json").write_text((await api.get("/api/keys")).text)
        good = tmp_path / "receipt.txt"
        good.write_text(kept["receipt"] + "\n")
        code, out, err = await cli("verify", str(good), "--keys", str(tmp_path / "keys.json"))
        assert code == 0, err
        assert "Cato" in out and "scored 2" in out and "offline" in out
        code, out, err = await cli("verify", str(good), "--server", server.http_url)
        assert code == 0, err
        assert f"entry {kept['log_index']} matches, included in the signed checkpoint" in out
        raw = bytearray(b64decode(kept["receipt"]))
        raw[60] ^= 0x04  # inside the signed claims
        bad = tmp_path / "changed.txt"
        bad.write_text(b64encode(bytes(raw)))
        code, _, err = await cli("verify", str(bad), "--keys", str(tmp_path / "keys.json"))
        assert code == 1
        assert "does not verify" in err and "changed" in err
        code, _, err = await cli("verify", str(good))
        assert code == 1 and "--keys FILE" in err
        note = tmp_path / "checkpoint.txt"
        async with http(server) as api:
            note.write_text((await api.get("/api/log/checkpoint")).text)
        await kept_result(server, "Dora", 1)  # the log grows past the saved checkpoint
        await server.service.results_log.checkpoint()
        code, out, err = await cli("verify", str(note), "--server", server.http_url)
        assert code == 0, err
        assert "extends it" in out


async def test_log_verify_names_every_edit_made_behind_the_servers_back(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(90):
        first = await kept_result(server, "Edda", 3)
        second = await kept_result(server, "Fenn", 2)
        await server.service.results_log.checkpoint()
        code, out, err = run_cli(server, "log", "verify", monkeypatch=monkeypatch)
        assert code == 0, err
        assert out.startswith("ok:")
        db = server.config.db_path
        session = first["game"]["session_id"]

        # A score edited with sqlite3 / psql.
        databases.sql(db, "UPDATE scores SET score = 999 WHERE session_id = ?", (session,))
        code, _, err = run_cli(server, "log", "verify", monkeypatch=monkeypatch)
        assert code == 1
        assert f"session {session} scored 3" in err and "scores says 999" in err
        databases.sql(db, "UPDATE scores SET score = 3 WHERE session_id = ?", (session,))

        # A result's row deleted.
        other = second["game"]["session_id"]
        row = databases.sql(db, "SELECT * FROM scores WHERE session_id = ?", (other,))[0]
        databases.sql(db, "DELETE FROM scores WHERE session_id = ?", (other,))
        code, _, err = run_cli(server, "log", "verify", monkeypatch=monkeypatch)
        assert code == 1
        assert f"the result of session {other} is not in scores" in err
        marks = ", ".join("?" for _ in row)
        databases.sql(db, f"INSERT INTO scores VALUES ({marks})", tuple(row))

        # An entry rewritten: the signed checkpoint no longer matches, and says which.
        index = first["log_index"]
        body = databases.sql(db, "SELECT body FROM log_entries WHERE idx = ?", (index,))[0][0]
        forged = body.replace('"score":3', '"score":30')
        databases.sql(db, "UPDATE log_entries SET body = ? WHERE idx = ?", (forged, index))
        code, _, err = run_cli(server, "log", "verify", monkeypatch=monkeypatch)
        assert code == 1
        assert "the entries differ from what it signed" in err
        assert f"entry {index}" in err or f"entries {index}" in err or ".." in err
        databases.sql(db, "UPDATE log_entries SET body = ? WHERE idx = ?", (body, index))

        # The last entry deleted.
        last = databases.sql(db, "SELECT MAX(idx) FROM log_entries")[0][0]
        saved = databases.sql(
            db, "SELECT idx, body, created_at FROM log_entries WHERE idx = ?", (last,)
        )[0]
        databases.sql(db, "DELETE FROM log_entries WHERE idx = ?", (last,))
        code, _, err = run_cli(server, "log", "verify", monkeypatch=monkeypatch)
        assert code == 1 and "entries were deleted" in err
        databases.sql(db, "INSERT INTO log_entries VALUES (?, ?, ?)", tuple(saved))

        # A checkpoint signed by a key the deployment never published.
        stranger = Ed25519PrivateKey.generate()
        tree_size = last + 1
        root = server.service.results_log.tree.root(tree_size)
        origin = await server.service.results_log.origin()
        note = receipts.sign_checkpoint(origin, tree_size + 1000, root, stranger)
        databases.sql(
            db,
            "INSERT INTO log_checkpoints (size, root, note, created_at) VALUES (?, ?, ?, 0)",
            (tree_size + 1000, root, note),
        )
        code, _, err = run_cli(server, "log", "verify", monkeypatch=monkeypatch)
        assert code == 1 and "never published" in err
        databases.sql(db, "DELETE FROM log_checkpoints WHERE size = ?", (tree_size + 1000,))
        code, _, err = run_cli(server, "log", "verify", monkeypatch=monkeypatch)
        assert code == 0, err


async def test_log_watch_catches_a_history_rewritten_with_its_tree_rebuilt(
    server: Server, tmp_path: Path
) -> None:
    with trio.fail_after(90):
        kept = await kept_result(server, "Gale", 4)
        await kept_result(server, "Hana", 1)
        state = tmp_path / "watch.json"
        code, out, err = await cli("log", "watch", server.http_url, "--state", str(state), "--once")
        assert code == 0, err
        await kept_result(server, "Ines", 2)
        code, out, err = await cli("log", "watch", server.http_url, "--state", str(state), "--once")
        assert code == 0, err
        # Someone with the database rewrites an entry, drops the checkpoints that would
        # contradict it, and lets the server sign the rebuilt tree (as after a restart).
        db = server.config.db_path
        index = kept["log_index"]
        body = databases.sql(db, "SELECT body FROM log_entries WHERE idx = ?", (index,))[0][0]
        databases.sql(
            db,
            "UPDATE log_entries SET body = ? WHERE idx = ?",
            (body.replace('"score":4', '"score":40'), index),
        )
        databases.sql(db, "DELETE FROM log_checkpoints")
        server.service.results_log.tree = merkle.Tree()
        await kept_result(server, "Jo", 1)
        await server.service.results_log.checkpoint()
        code, _, err = await cli("log", "watch", server.http_url, "--state", str(state), "--once")
        assert code == 1
        assert "history was rewritten" in err


async def test_a_board_snapshot_verifies_and_a_changed_one_does_not(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(90):
        await kept_result(server, "Kai", 3)
        await kept_result(server, "Lin", 2)
        out_file = tmp_path / "board.json"
        code, out, err = run_cli(
            server,
            "boards",
            "snapshot",
            "quick",
            "--out",
            str(out_file),
            "--key",
            str(server.config.key_path),
            monkeypatch=monkeypatch,
        )
        assert code == 0, err
        document = json.loads(out_file.read_text())
        assert [(e["name"], e["score"]) for e in document["entries"]] == [("Kai", 3), ("Lin", 2)]
        assert all(isinstance(e["log_index"], int) for e in document["entries"])
        code, out, err = await cli("verify", str(out_file), "--server", server.http_url)
        assert code == 0, err
        assert "every result on it is in the log" in out
        document["entries"][1]["score"] = 5
        changed = tmp_path / "changed.json"
        changed.write_text(json.dumps(document))
        code, _, err = await cli("verify", str(changed), "--server", server.http_url)
        assert code == 1 and "the snapshot was changed" in err


async def test_results_saved_before_the_log_become_its_first_entries_on_upgrade(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Schema 6 on a database of schema 5 with results: each becomes an entry, oldest first,
    and `log verify` passes (both engines)."""
    with trio.fail_after(90):
        first = await kept_result(server, "Mira", 2)
        second = await kept_result(server, "Noor", 3)
    db = server.config.db_path
    conn = open_database(db)
    postgres = conn.dialect == "postgres"
    with transaction(conn):
        databases.undo_schema_6(conn)
        if postgres:
            conn.execute("UPDATE scoreserver_schema SET version = 5")
        else:
            conn.execute("PRAGMA user_version = 5")
    conn.close()
    upgraded = open_database(db)
    rows = upgraded.execute("SELECT idx, body FROM log_entries ORDER BY idx").fetchall()
    upgraded.close()
    sessions = [json.loads(body)["session"] for _, body in rows]
    assert sessions == [first["game"]["session_id"], second["game"]["session_id"]]
    assert [json.loads(body)["score"] for _, body in rows] == [2, 3]
    code, out, err = run_cli(server, "log", "verify", monkeypatch=monkeypatch)
    assert code == 0, err


async def test_admin_downloads_a_signed_snapshot_and_strangers_cannot(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(90):
        await kept_result(server, "Olga", 4)
        async with http(server) as api:
            auth = await admin_login(server, api, monkeypatch)
            refused = await api.get("/api/admin/snapshot/quick")
            assert refused.status_code == 401
            reply = await api.get(
                "/api/admin/snapshot/quick", headers=auth, params={"window": "day"}
            )
            assert reply.status_code == 200, reply.text
            assert "attachment" in reply.headers["content-disposition"]
            keys = await keys_of(api)
            for bad in ({"window": "year"},):
                wrong = await api.get("/api/admin/snapshot/quick", headers=auth, params=bad)
                assert wrong.status_code == 400, wrong.text
            missing = await api.get("/api/admin/snapshot/nope", headers=auth)
            assert missing.status_code == 404, missing.text
        document = reply.json()
        assert document["window"] == "day"
        assert [(e["name"], e["score"]) for e in document["entries"]] == [("Olga", 4)]
        receipts.verify_snapshot(document, keys)


async def test_a_receipt_verifies_with_no_server_running(tmp_path: Path) -> None:
    """Saved with the server up, checked after it stopped: the keys file is all it needs."""
    add_game(tmp_path / "test.db", "quick", duration_ms=1000, submission_window_ms=60_000)
    config = make_config(tmp_path)
    with trio.fail_after(90):
        async with running_server(config) as server:
            kept = await kept_result(server, "Pavo", 2)
            async with http(server) as api:
                (tmp_path / "keys.json").write_text((await api.get("/api/keys")).text)
    (tmp_path / "receipt.txt").write_text(kept["receipt"])
    code, out, err = await cli(
        "verify", str(tmp_path / "receipt.txt"), "--keys", str(tmp_path / "keys.json")
    )
    assert code == 0, err
    assert "Pavo (player" in out and "scored 2 in quick" in out


async def test_hostile_log_queries_sent_at_once_get_400_and_the_log_still_proves(
    server: Server,
) -> None:
    """Every /api/log route's parameters with hostile values (2**63, -1, huge, empty, binary,
    deep), all sent at once: 400 (or 200 for an empty value, which means the default), never
    a 500; then a real proof still verifies (default configuration, both engines)."""
    with trio.fail_after(90):
        kept = await kept_result(server, "Rafa", 2)
        hostile = [str(2**63), "-1", "9" * 5000, "", "\x01\x02", "[" * 300, "1e3", "0x10", " 1"]
        requests = [
            (path, {name: value})
            for path, name in (
                ("/api/log/proof", "index"),
                ("/api/log/proof", "size"),
                ("/api/log/consistency", "from"),
                ("/api/log/consistency", "to"),
                ("/api/log/entries", "start"),
                ("/api/log/entries", "end"),
            )
            for value in hostile
        ]
        answers: list[httpx.Response] = []
        async with http(server) as api:

            async def ask(path: str, params: dict[str, str]) -> None:
                answers.append(await api.get(path, params=params))

            async with trio.open_nursery() as nursery:
                for path, params in requests:
                    nursery.start_soon(ask, path, params)
            assert len(answers) == len(requests)
            assert {r.status_code for r in answers} <= {200, 400}, {r.status_code for r in answers}
            assert all(
                r.json().get("error") == "bad_request" for r in answers if r.status_code == 400
            )
            keys = await keys_of(api)
            note = (await api.get("/api/log/checkpoint")).text
            checkpoint = receipts.verify_checkpoint(note, keys)
            proof = (await api.get("/api/log/proof", params={"index": kept["log_index"]})).json()
        assert merkle.verify_inclusion(
            server.service.results_log.tree.leaf(kept["log_index"]),
            kept["log_index"],
            checkpoint.size,
            [unb64(p) for p in proof["proof"]],
            checkpoint.root,
        )
