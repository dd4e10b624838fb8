"""What is stored, after a real run on a real homeserver: nothing readable, all private,
and an event delivered again is not handled again."""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import sqlite3
import stat
from collections.abc import Iterable
from pathlib import Path

import pytest

from bot.sync_loop import TOKEN_KEY
from bot.world import World
from schemas.messages import InboxItem
from storage.tx import Tx
from tests.forms import referral
from tests.integration.live import db_rows, running

pytestmark = pytest.mark.integration


def letters(n: int) -> str:
    """Random letters, so the strings below exist nowhere else."""
    return "".join(chr(ord("a") + b % 26) for b in secrets.token_bytes(n))


def readable(data_dir: Path, needles: list[str]) -> list[str]:
    """Which needles `grep -r` would find in any file under data_dir, in any case."""
    found = []
    for path in data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes().lower()
            found += [f"{n} in {path.name}" for n in needles if n.lower().encode() in data]
    return found


async def test_after_a_real_run_no_file_holds_a_name_or_free_text(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot")
    caplog.set_level(logging.DEBUG, logger="handlers")
    u = letters(8)
    fields = {
        "Child_name": f"Ysolde Farthing{u}",
        "Address": f"12 Quillmarsh{u} Row, ZX1 1XZ",
        "Description": f"Ysolde said the word {u}kettle to her teacher three times.",
        "Childs_views": f"Wants to keep the cat called Pim{u}.",
        "Referrer_name": f"Orla Wexcombe{u}",
    }
    needles = [f"Farthing{u}", f"Quillmarsh{u}", f"{u}kettle", f"Pim{u}", f"Wexcombe{u}", u]
    data_dir = world.config.storage.data_dir
    async with running(world):
        nurse = await world.add_user(f"nurse-{world.bot_user[1:5]}")
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        event_id = await nurse.send(dm, referral(**fields))
        ack = await nurse.wait_reply(event_id)
        assert "CHILD PROTECTION REFERRAL" in ack.body
        # While the bot runs: database, WAL, shared memory, E2EE store, credentials.
        assert (data_dir / "referrals.db-wal").exists()
        assert readable(data_dir, needles) == []

    assert readable(data_dir, needles) == []
    db = data_dir / "referrals.db"
    dumps = ["\n".join(sqlite3.connect(db).iterdump())]
    sqlite3_cli = shutil.which("sqlite3")
    if sqlite3_cli:
        proc = await asyncio.create_subprocess_exec(
            sqlite3_cli, str(db), ".dump", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        dumps.append(out.decode("utf-8", "replace"))
    for text in dumps:
        assert "CREATE TABLE referrals" in text
        assert [n for n in needles if n.lower() in text.lower()] == []
    # The stored form is still all there for the bot.
    [(child_key,)] = db_rows(world, "SELECT child_key FROM referrals")
    assert isinstance(child_key, str) and len(child_key) == 64
    assert [n for n in needles if n.lower() in caplog.text.lower()] == [], "personal data logged"

    # File permissions: the folder and everything in it private to the bot's user.
    for path in [data_dir, *data_dir.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"


async def test_events_delivered_again_after_a_restart_are_not_handled_again(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart that resumes from an older sync token (as after a crash before the token
    was saved) gets the same events from the homeserver again."""
    async with running(world) as app:
        hv = await world.add_user(f"hv-{world.bot_user[1:5]}")
        dm = await hv.create_room(invite=[world.bot_user], encrypted=True)
        await hv.wait_joined(dm, world.bot_user)
        assert app.sync is not None
        syncs = app.sync.syncs
        for _ in range(400):  # one sync after the join, so the token is past it
            if app.sync.syncs > syncs:
                break
            await asyncio.sleep(0.05)
        [(old_token,)] = db_rows(world, "SELECT value FROM kv WHERE key = ?", TOKEN_KEY)
        referral_event = await hv.send(dm, referral())
        help_event = await hv.send(dm, "!help")
        await hv.wait_reply(referral_event)
        await hv.wait_reply(help_event)

    db = sqlite3.connect(world.config.storage.data_dir / "referrals.db")
    db.execute("UPDATE kv SET value = ? WHERE key = ?", (old_token, TOKEN_KEY))
    db.commit()
    db.close()

    offered: list[str] = []
    add_inbox = Tx.add_inbox

    async def recording(self: Tx, items: Iterable[InboxItem]) -> set[str]:
        items = list(items)
        offered.extend(i.event_id for i in items)
        return await add_inbox(self, items)

    monkeypatch.setattr(Tx, "add_inbox", recording)
    async with running(world) as app:
        for _ in range(400):
            if {referral_event, help_event} <= set(offered):
                break
            await asyncio.sleep(0.05)
        assert {referral_event, help_event} <= set(offered), "not delivered again"
        assert app.pipeline is not None
        await app.pipeline.wait_idle()
        await asyncio.sleep(1.0)  # time for a second reply to arrive, if one were sent

    replies = [r.in_reply_to for r in hv.received if r.sender == world.bot_user]
    assert replies.count(referral_event) == 1 and replies.count(help_event) == 1
    assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(1,)]
    assert db_rows(world, "SELECT kind, COUNT(*) FROM record_entries GROUP BY kind") == sorted(
        [("received", 1), ("ack_sent", 1), ("team_summary_sent", 1)]
    )
