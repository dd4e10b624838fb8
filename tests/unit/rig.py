"""The real store and pipeline with an in-memory messenger, plus a config file for the
`referral-bot` maintenance commands, for the tests of what is stored."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.pipeline import Pipeline
from handlers.settings import Settings
from schemas.messages import InboxItem
from storage.engine import Store
from storage.keyring import Keyring
from tests.engines import config_lines, dump, edit_by_hand, location, sql
from tests.keys import KEYRING, TEST_KEY
from tests.unit.memory_messenger import MemoryMessenger

DM = "!dm:example.org"
TEAM = "!team:example.org"
NURSE = "@nurse:example.org"
# Wednesday 25 November 2026, 10:00 UTC
START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

_ids = itertools.count(1)

# Raw SQL on the current engine's database (tests/engines.py), re-exported for the tests.
__all__ = ["dump", "edit_by_hand", "sql"]

CONFIG = """\
[homeserver]
url = "http://127.0.0.1:1"

[bot]
user_id = "@bot:example.org"
password = {{ file = "secrets/bot-password" }}

[storage]
data_dir = "data"
store_key = {{ file = "secrets/store-key" }}
database_key = {{ file = "secrets/database-key" }}
{database}
[access]
allowed_homeservers = ["example.org"]

[rooms]
advice_team = "{team}"
{extra}
"""


def write_config(base: Path, *, key: str = TEST_KEY, extra: str = "") -> Path:
    """A config whose data_dir is `base/data`, as the maintenance commands read it; on
    PostgreSQL its `database` is the one `base/data/referrals.db` stands for."""
    secrets = base / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "bot-password").write_text("unused-password")
    (secrets / "store-key").write_text("store-key-" + "s" * 32)
    (secrets / "database-key").write_text(key)
    path = base / "config.toml"
    database = config_lines(base / "data" / "referrals.db")
    path.write_text(CONFIG.format(team=TEAM, extra=extra, database=database), encoding="utf-8")
    return path


@dataclass
class Rig:
    store: Store
    messenger: MemoryMessenger
    pipeline: Pipeline

    @classmethod
    async def open(cls, db_path: Path, keyring: Keyring = KEYRING) -> Rig:
        store = await Store.open(location(db_path), keyring)
        messenger = MemoryMessenger(encrypted_rooms={DM, TEAM})
        pipeline = Pipeline(store, Settings("@bot:example.org", TEAM), messenger)
        return cls(store, messenger, pipeline)

    async def send(
        self,
        body: str,
        *,
        room: str = DM,
        sender: str = NURSE,
        at: datetime = START,
        event_id: str | None = None,
        encrypted: bool = True,
    ) -> str:
        event_id = event_id or f"$rig{next(_ids)}"
        payload = {"body": body} if encrypted else {"withheld": True}
        ts = int(at.timestamp() * 1000)
        async with self.store.transaction() as tx:
            rooms = await tx.add_inbox(
                [InboxItem(event_id, room, sender, ts, encrypted, "pending", payload)]
            )
        self.pipeline.kick_rooms(rooms)
        await self.pipeline.wait_idle()
        return event_id

    async def close(self) -> None:
        await self.pipeline.stop()
        await self.store.close()


@asynccontextmanager
async def opened(db_path: Path, keyring: Keyring = KEYRING, **kw: bool) -> AsyncIterator[Store]:
    """A store that is closed even when the test fails (an open aiosqlite connection keeps
    a thread alive and would hang the test run)."""
    store = await Store.open(location(db_path), keyring, **kw)
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def rig_at(db_path: Path, keyring: Keyring = KEYRING) -> AsyncIterator[Rig]:
    rig = await Rig.open(db_path, keyring)
    try:
        yield rig
    finally:
        await rig.close()


def file_bytes(folder: Path) -> dict[Path, bytes]:
    """Every file under a folder, as the bytes `grep` would search."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


async def cli(*args: str | Path) -> int:
    """`referral-bot ARGS` in a thread (it runs its own event loop), as an operator would."""
    from bot.cli import main

    return await asyncio.to_thread(main, [str(a) for a in args])
