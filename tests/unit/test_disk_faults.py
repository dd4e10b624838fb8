"""The database refuses writes (disk full): nothing is acknowledged that was not stored,
nobody is told "nothing was recorded", and the bot catches up by itself once there is
room again. Real SQLite, made full with `max_page_count`.

SQLite only, except the last test: a full disk is staged with SQLite's `max_page_count`
(tests/disk.py); a PostgreSQL server cannot be made to run out of disk from a unit test.
On PostgreSQL the same code reads the server's SQLSTATE (disk_full, io_error,
read_only_sql_transaction); the last test checks that its other errors never count."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from schemas.messages import InboxItem
from storage import disk_faults
from storage.disk_faults import WriteFaults, fault_reason
from storage.engine import Postgres
from tests.disk import free_space, limit_pages
from tests.engines import location, on_postgres
from tests.forms import referral
from tests.unit.rig import DM, NURSE, START, opened, rig_at, sql


@pytest.fixture(autouse=True)
def quick_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disk_faults, "PROBE_EVERY_S", 0.1)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_sqlite_errors_that_mean_no_room_to_write(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 1")
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    db.close()
    ro = sqlite3.connect(f"file:{tmp_path / 'x.db'}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as readonly:
        ro.execute("INSERT INTO t VALUES (1)")
    ro.close()
    assert fault_reason(full.value) == "disk full"
    assert fault_reason(readonly.value) == "read-only"
    # A bug is not a disk fault: a handler error must still be answered as one.
    assert fault_reason(sqlite3.IntegrityError("UNIQUE constraint failed")) is None
    assert fault_reason(ValueError("bad input")) is None


async def test_referrals_wait_while_the_disk_is_full_then_are_taken_once(tmp_path: Path) -> None:
    async with rig_at(tmp_path / "r.db") as rig:
        ids = [f"$full{n}" for n in range(5)]
        ts = int(START.timestamp() * 1000)
        async with rig.store.transaction() as tx:
            await tx.add_inbox(
                [InboxItem(e, DM, NURSE, ts, True, "pending", {"body": referral()}) for e in ids]
            )
        await limit_pages(rig.store, 0)
        rig.pipeline.kick_rooms({DM})
        await until(lambda: rig.store.faults.reason == "disk full")
        await asyncio.sleep(0.5)  # several probes and retries fail meanwhile

        # What fitted in the pages already there was stored and acknowledged; nothing
        # else was acknowledged, nobody was told "nothing was recorded", the rest waits.
        stored = {e for (e,) in sql(rig.store.path, "SELECT event_id FROM referrals")}
        acked = {m.reply_to for _, m in rig.messenger.sent if m.room_id == DM}
        assert acked <= stored
        assert len(stored) < 5
        pending = sql(rig.store.path, "SELECT COUNT(*) FROM inbox WHERE state = 'pending'")
        assert pending == [(5 - len(stored),)]
        assert not any("NOTHING" in m.body for _, m in rig.messenger.sent)
        assert rig.store.faults.refused > 1

        await free_space(rig.store)
        await until(lambda: rig.store.faults.reason is None)
        await until(lambda: len([m for _, m in rig.messenger.sent if m.room_id == DM]) == 5)
        await rig.pipeline.wait_idle()

    acks = [m for _, m in rig.messenger.sent if m.room_id == DM]
    assert sorted(m.reply_to or "" for m in acks) == sorted(ids)
    assert all("CHILD PROTECTION REFERRAL" in m.body for m in acks)
    assert not any("NOTHING" in m.body for _, m in rig.messenger.sent)
    refs = sql(tmp_path / "r.db", "SELECT ref FROM referrals ORDER BY ref")
    assert [r for (r,) in refs] == [f"REF-2026-{n:06d}" for n in range(1, 6)]


async def test_a_failing_commit_does_not_leave_the_connection_in_a_transaction(
    tmp_path: Path,
) -> None:
    async with rig_at(tmp_path / "r.db") as rig:
        await limit_pages(rig.store, 0)
        with pytest.raises(sqlite3.OperationalError):
            async with rig.store.transaction() as tx:
                await tx.set_kv("big", "x" * 200_000)
        await free_space(rig.store)
        async with rig.store.transaction() as tx:  # BEGIN works again
            await tx.set_kv("small", "1")


async def test_the_fault_is_logged_once_a_minute_not_per_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = 0

    async def probe() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise sqlite3.OperationalError("database or disk is full")

    faults = WriteFaults(probe)
    recovered = asyncio.Event()

    async def on_recovered() -> None:
        recovered.set()

    faults.on_recovered.append(on_recovered)
    with caplog.at_level(logging.WARNING, logger="storage.disk_faults"):
        for _ in range(200):
            assert faults.note(sqlite3.OperationalError("database or disk is full"))
        assert faults.reason == "disk full"
        await faults.wait_writable(5.0)
        assert recovered.is_set() and faults.reason is None
    # Only this module's lines: the session's event loop may still carry another test's
    # bot winding down, whose log lines are not about this fault.
    lines = [r.getMessage() for r in caplog.records if r.name == "storage.disk_faults"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("database not writable (disk full)")
    assert lines[1].startswith("database writable again")
    await faults.close()


async def test_postgresql_errors_are_not_disk_faults_unless_they_say_so(
    tmp_path: Path, engine: str
) -> None:
    """Real errors from the session's PostgreSQL: a constraint, a syntax error and a closed
    session are not disk faults (a failed transaction leaves the store writable); a write
    refused as read-only is one, and so are disk_full and io_error by their SQLSTATE."""
    if not on_postgres():
        pytest.skip("PostgreSQL's errors (SQLite's are the tests above)")
    import asyncpg

    async with opened(tmp_path / "r.db") as store:
        with pytest.raises(asyncpg.UniqueViolationError) as duplicate:
            async with store.transaction() as tx:
                await tx._db.execute("INSERT INTO kv (key, value) VALUES ('a', '1')")
                await tx._db.execute("INSERT INTO kv (key, value) VALUES ('a', '2')")
        assert not store.faults.active
        async with store.transaction() as tx:  # still writable
            await tx.set_kv("b", "1")
    where = location(tmp_path / "r.db")
    assert isinstance(where, Postgres)
    conn = await asyncpg.connect(where.dsn)
    try:
        with pytest.raises(asyncpg.PostgresSyntaxError) as syntax:
            await conn.execute("SELEC 1")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError) as readonly:
            async with conn.transaction(readonly=True):
                await conn.execute("INSERT INTO kv (key, value) VALUES ('c', '1')")
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InterfaceError) as closed:
        await conn.execute("SELECT 1")
    assert fault_reason(duplicate.value) is None
    assert fault_reason(syntax.value) is None
    assert fault_reason(closed.value) is None
    assert fault_reason(readonly.value) == "read-only"
    assert fault_reason(asyncpg.exceptions.DiskFullError("no space left")) == "disk full"
    assert fault_reason(asyncpg.exceptions.PostgresIOError("could not write")) == "I/O error"
