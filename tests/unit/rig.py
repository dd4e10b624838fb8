"""Around the stored database: the files, the raw rows, hand edits and the `referral-bot`
maintenance commands with their config file. The bot under test (`Rig`, `rig_at`) is the
one unit harness in tests/unit/harness.py, re-exported here for the storage tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot.world import CONFIG_TEMPLATE
from storage.engine import Store
from storage.keyring import Keyring
from tests.engines import config_lines, dump, edit_by_hand, location, sql
from tests.keys import KEYRING, TEST_KEY
from tests.unit.harness import BOT, DM, MANAGER, NURSE, START, TEAM_ROOM, WORKER, Rig, rig_at

__all__ = [
    "DM",
    "NURSE",
    "START",
    "TEAM",
    "Rig",
    "cli",
    "dump",
    "edit_by_hand",
    "file_bytes",
    "opened",
    "rig_at",
    "sql",
    "write_config",
]

TEAM = TEAM_ROOM


def write_config(base: Path, *, key: str = TEST_KEY, extra: str = "") -> Path:
    """A config whose data_dir is `base/data`, as the maintenance commands read it (the
    template `bot/world.py` writes for a whole local set-up), with `extra` sections."""
    secrets = base / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    (secrets / "bot-password").write_text("unused-password")
    (secrets / "store-key").write_text("store-key-" + "s" * 32)
    (secrets / "database-key").write_text(key)
    path = base / "config.toml"
    config = CONFIG_TEMPLATE.format(
        url="http://127.0.0.1:1",
        bot_user=BOT,
        server_name="example.org",
        team_room=TEAM,
        worker=WORKER,
        manager=MANAGER,
        log_level="WARNING",
    )
    # On PostgreSQL its `database` is the one `base/data/referrals.db` stands for.
    database = config_lines(base / "data" / "referrals.db")
    config = config.replace("[storage]\n", f"[storage]\n{database}", 1)
    path.write_text(f"{config}\n{extra}", encoding="utf-8")
    return path


@asynccontextmanager
async def opened(db_path: Path, keyring: Keyring = KEYRING, **kw: Any) -> AsyncIterator[Store]:
    """A store that is closed even when the test fails (an open aiosqlite connection keeps
    a thread alive and would hang the test run)."""
    store = await Store.open(location(db_path), keyring, **kw)
    try:
        yield store
    finally:
        await store.close()


def file_bytes(folder: Path) -> dict[Path, bytes]:
    """Every file under a folder, as the bytes `grep` would search."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


async def cli(*args: str | Path) -> int:
    """`referral-bot ARGS` in a thread (it runs its own event loop), as an operator would."""
    from bot.cli import main

    return await asyncio.to_thread(main, [str(a) for a in args])
