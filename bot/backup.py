"""`referral-bot backup` and `referral-bot restore`: a consistent copy of what the bot keeps
on disk, and putting it back without overwriting newer records by accident.

A backup folder holds every SQLite database under `data_dir` (the bot's `referrals.db` and
matrix-nio's E2EE store in `e2ee/`), each copied with SQLite's online backup API (a
consistent snapshot even while the bot writes), every other file of `data_dir`
(`credentials.json`, `cross_signing.json`), and `manifest.json` last: each file's SHA-256
and the database's high-water marks (highest inbox, referral and running-record IDs).
The secrets (`store_key`, `database_key`) are NOT in it: keep them apart from backups.

With PostgreSQL (`storage.database`) the bot's tables, and with them the device's
credentials, its cross-signing keys and matrix-nio's E2EE store (bot/device_files.py,
bot/crypto_store_pg.py), are backed up with PostgreSQL's own tools (`pg_dump`, or base
backups with WAL archiving for point-in-time recovery; see the README); this command then
records the tables' marks and copies whatever `data_dir` holds (normally nothing).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.maintenance import Outcome, _keyring, database_location
from schemas.config import Config, ConfigError
from storage.engine import Postgres, Store, release_file_lock, take_file_lock

MANIFEST = "manifest.json"
FORMAT = 1
# What is never copied: SQLite's side files (the backup API copies their content into the
# database) and lock files.
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".lock")
_MARKS = {
    "inbox_seq": "SELECT COALESCE(MAX(seq), 0) FROM inbox",
    "referral_id": "SELECT COALESCE(MAX(id), 0) FROM referrals",
    "record_entry_id": "SELECT COALESCE(MAX(id), 0) FROM record_entries",
    "referrals": "SELECT COUNT(*) FROM referrals",
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _files(data_dir: Path) -> list[Path]:
    return sorted(
        p for p in data_dir.rglob("*") if p.is_file() and not p.name.endswith(_SKIP_SUFFIXES)
    )


def _private_copy_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _sqlite_backup(source: Path, target: Path) -> None:
    """SQLite's online backup API: a consistent copy even while another process writes."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            # One self-contained file: no WAL beside the copy.
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


async def _marks(config: Config) -> dict[str, int] | None:
    """The database's high-water marks, or None if there is no database yet."""
    where = database_location(config)
    if isinstance(where, Path) and not where.exists():
        return None
    keyring = _keyring(config.storage.database_key.read(), "storage.database_key")
    store = await Store.open(where, keyring, exclusive=False)
    try:
        async with store.snapshot() as tx:
            marks = {}
            for name, query in _MARKS.items():
                async with tx._db.execute(query) as cur:
                    row = await cur.fetchone()
                marks[name] = int(row[0]) if row else 0
            return marks
    finally:
        await store.close()


def _sqlite_marks(path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {name: int(db.execute(query).fetchone()[0]) for name, query in _MARKS.items()}
    finally:
        db.close()


# -- backup ------------------------------------------------------------------------------


async def backup(config: Config, out_dir: Path) -> Outcome:
    out = Outcome()
    data_dir = config.storage.data_dir
    where = database_location(config)
    # On PostgreSQL the device (credentials, cross-signing keys, E2EE store) is in the
    # database too: data_dir may be empty or missing, and pg_dump covers everything.
    if not data_dir.is_dir() and not isinstance(where, Postgres):
        raise ConfigError([f"there is no data directory at {data_dir}"])
    if out_dir.exists() and any(out_dir.iterdir()):
        out.code = 2
        out.say(f"{out_dir} is not empty: give a new folder for each backup")
        return out
    os.umask(0o077)
    _private_copy_dir(out_dir)
    files: dict[str, dict[str, Any]] = {}
    sources = await asyncio.to_thread(_files, data_dir) if data_dir.is_dir() else []
    for source in sources:
        rel = source.relative_to(data_dir)
        target = out_dir / "data" / rel
        _private_copy_dir(target.parent)
        if _is_sqlite(source):
            await asyncio.to_thread(_sqlite_backup, source, target)
            kind = "sqlite"
        else:
            await asyncio.to_thread(shutil.copyfile, source, target)
            os.chmod(target, 0o600)
            kind = "file"
        files[str(rel)] = {"kind": kind, "sha256": await asyncio.to_thread(_sha256, target)}
    if isinstance(where, Postgres):
        marks = await _marks(config)
        engine = "postgresql"
    else:
        copy = out_dir / "data" / where.relative_to(data_dir)
        marks = await asyncio.to_thread(_sqlite_marks, copy) if copy.exists() else None
        engine = "sqlite"
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine": engine,
        "marks": marks,
        "files": files,
    }
    # Written last: a folder without a manifest is an unfinished backup.
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    out.say(f"Backed up {len(files)} file(s) from {data_dir} to {out_dir}.")
    if marks is not None:
        out.say(f"{marks['referrals']} referral(s); highest inbox row {marks['inbox_seq']}.")
    if engine == "postgresql":
        out.say(
            "The bot's tables, its device's credentials and cross-signing keys and the E2EE "
            "store are in PostgreSQL: back them up with pg_dump (or base backups and WAL "
            "archiving) at the same time; see the README."
        )
    out.say("The keys (storage.store_key, storage.database_key) are not in the backup.")
    return out


# -- restore -----------------------------------------------------------------------------


def _newer(current: dict[str, int], backed_up: dict[str, int]) -> list[str]:
    return [k for k in ("inbox_seq", "referral_id", "record_entry_id") if current[k] > backed_up[k]]


async def restore(config: Config, in_dir: Path, *, force: bool) -> Outcome:
    out = Outcome()
    try:
        manifest = json.loads((in_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        out.code = 2
        out.say(f"{in_dir} has no readable {MANIFEST}: not a (finished) backup")
        return out
    if manifest.get("format") != FORMAT:
        out.code = 2
        out.say(f"backup format {manifest.get('format')!r} is not one this bot reads")
        return out
    where = database_location(config)
    engine = "postgresql" if isinstance(where, Postgres) else "sqlite"
    if manifest["engine"] != engine:
        out.code = 2
        out.say(f"the backup is of a {manifest['engine']} set-up; this config uses {engine}")
        return out
    for rel, info in manifest["files"].items():
        path = in_dir / "data" / rel
        if not path.is_file() or await asyncio.to_thread(_sha256, path) != info["sha256"]:
            out.code = 2
            out.say(f"{rel} in the backup is missing or damaged (checksum): nothing restored")
            return out

    data_dir = config.storage.data_dir
    # Keep a bot (or another restore) away while the files are replaced: the lock file a
    # bot holds on SQLite; on PostgreSQL, the bot's session lock (held by opening the store).
    lock_fd = None
    if not isinstance(where, Postgres):
        _private_copy_dir(data_dir)
        lock_fd = take_file_lock(data_dir / "referrals.db")
    holder: Store | None = None
    try:
        if isinstance(where, Postgres):
            keyring = _keyring(config.storage.database_key.read(), "storage.database_key")
            holder = await Store.open(where, keyring, exclusive=True)
        current = await _marks(config)
        backed_up = manifest["marks"]
        if current is not None and backed_up is not None:
            newer = _newer(current, backed_up)
            if newer and not force:
                out.code = 1
                out.say(
                    "NOT restored: the current database holds newer records than the backup "
                    f"({', '.join(newer)}: {', '.join(str(current[k]) for k in newer)} > "
                    f"{', '.join(str(backed_up[k]) for k in newer)}). Referrals acknowledged "
                    "after the backup would be lost. Use --force to restore anyway."
                )
                return out
        for rel in manifest["files"]:
            target = data_dir / rel
            _private_copy_dir(target.parent)
            for suffix in ("-wal", "-shm", "-journal"):  # a stale WAL must not be replayed
                target.with_name(target.name + suffix).unlink(missing_ok=True)
            tmp = target.with_name(target.name + ".restoring")
            await asyncio.to_thread(shutil.copyfile, in_dir / "data" / rel, tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
    finally:
        if holder is not None:
            await holder.close()
        if lock_fd is not None:
            release_file_lock(lock_fd)

    when = manifest["created_at"]
    out.say(f"Restored {len(manifest['files'])} file(s) from the backup of {when}.")
    if engine == "postgresql":
        out.say(
            "Restore the bot's tables (with its device and E2EE store) in PostgreSQL from "
            "the dump of the same time."
        )
    else:
        keyring = _keyring(config.storage.database_key.read(), "storage.database_key")
        store = await Store.open(where, keyring)
        try:
            async with store.snapshot() as tx:
                report = await tx.check_chains()
        finally:
            await store.close()
        out.say(
            f"{report.referrals} referral(s), {report.entries} running-record entries: "
            + ("every chain intact." if not report.breaks else f"{len(report.breaks)} BROKEN")
        )
        if report.breaks:
            out.code = 1
    out.say(
        "Anything received after the backup is not in it. The bot syncs on from the "
        "restored sync token, so messages since then come in again: referrals among them "
        "get a new acknowledgement and a new REF number (possibly one given before to "
        "another referral); ones whose room keys arrived after the backup cannot be "
        "decrypted. Check the advice-team room's history since the backup (README)."
    )
    return out
