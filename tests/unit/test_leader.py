"""Active/standby on PostgreSQL (issue 13, part 3): one leader among processes opening the
same database, the others waiting; a process that lost the lead writes nothing more.
Real PostgreSQL sessions; the leader's session ended by the server as an operator (or a
network cut) would: `pg_terminate_backend`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage.engine import NotLeader, Store
from storage.sql import PostgresConnection
from tests.engines import location, sql
from tests.keys import KEYRING

# PostgreSQL only (SQLite: one process, held off by a lock file).
pytestmark = [
    pytest.mark.usefixtures("engine"),
    pytest.mark.parametrize("engine", ["postgresql"], indirect=True),
]


def backend_pid(store: Store) -> int:
    db = store._db
    assert isinstance(db, PostgresConnection)
    return int(db.raw.get_server_pid())


async def test_a_second_process_waits_as_standby_and_leads_with_the_next_epoch_when_the_first_stops(
    tmp_path: Path,
) -> None:
    where = location(tmp_path / "r.db")
    leader = await Store.open(where, KEYRING)
    assert leader.epoch is not None
    first = leader.epoch
    waits: list[int] = []
    standby = asyncio.create_task(
        Store.open(where, KEYRING, standby=lambda: waits.append(1), failover_s=2.0)
    )
    await asyncio.sleep(1.5)
    assert not standby.done() and len(waits) >= 3, "it waits, trying again"
    async with leader.transaction() as tx:  # the leader writes on, undisturbed
        await tx.set_kv("k", "from the first leader")
    await leader.close()
    second = await asyncio.wait_for(standby, 5)
    try:
        assert second.epoch == first + 1
        assert sql(where, "SELECT epoch FROM leader") == [(first + 1,)]
        async with second.transaction() as tx:
            assert await tx.get_kv("k") == "from the first leader"
    finally:
        await second.close()


async def test_a_leader_whose_epoch_moved_on_writes_nothing_and_stops(tmp_path: Path) -> None:
    where = location(tmp_path / "r.db")
    store = await Store.open(where, KEYRING)
    try:
        # What a new leader's first transaction does (as if this one had lost its lock).
        sql(where, "UPDATE leader SET epoch = epoch + 1")
        with pytest.raises(NotLeader):
            async with store.transaction() as tx:
                await tx.set_kv("stale", "written by a stale leader")
        assert store.lost.is_set(), "the bot stops (bot/app.py waits on `lost`)"
        assert sql(where, "SELECT COUNT(*) FROM kv WHERE key = 'stale'") == [(0,)]
    finally:
        await store.close()


async def test_a_terminated_session_stops_the_leader_before_the_standby_takes_over(
    tmp_path: Path,
) -> None:
    where = location(tmp_path / "r.db")
    leader = await Store.open(where, KEYRING)
    took_over: list[float] = []
    loop = asyncio.get_running_loop()

    async def stand_by() -> Store:
        store = await Store.open(where, KEYRING, standby=lambda: None, failover_s=2.0)
        took_over.append(loop.time())
        return store

    standby = asyncio.create_task(stand_by())
    lost_at: list[float] = []
    watch = asyncio.create_task(leader.lost.wait())
    watch.add_done_callback(lambda _t: lost_at.append(loop.time()))
    try:
        await asyncio.sleep(0.5)
        sql(where, f"SELECT pg_terminate_backend({backend_pid(leader)})")
        second = await asyncio.wait_for(standby, 10)
        try:
            await asyncio.wait_for(watch, 1)
            assert lost_at and took_over and lost_at[0] < took_over[0], (lost_at, took_over)
            with pytest.raises(Exception):  # noqa: B017 - the session is gone: nothing is written
                async with leader.transaction() as tx:
                    await tx.set_kv("stale", "written after the session ended")
            assert sql(where, "SELECT COUNT(*) FROM kv WHERE key = 'stale'") == [(0,)]
            assert second.epoch is not None and second.epoch >= 2
        finally:
            await second.close()
    finally:
        await leader.close()


async def test_the_heartbeat_notices_a_lost_session_while_nothing_is_written(
    tmp_path: Path,
) -> None:
    where = location(tmp_path / "r.db")
    store = await Store.open(where, KEYRING)
    try:
        watcher = asyncio.create_task(store.watch_session(2.0))
        sql(where, "UPDATE leader SET epoch = epoch + 1")  # another process leads now
        await asyncio.wait_for(watcher, 5)
        assert store.lost.is_set()
    finally:
        await store.close()


async def test_without_standby_a_second_process_is_refused(tmp_path: Path) -> None:
    from storage.engine import DatabaseInUse

    where = location(tmp_path / "r.db")
    store = await Store.open(where, KEYRING)
    try:
        with pytest.raises(DatabaseInUse):
            await Store.open(where, KEYRING)
    finally:
        await store.close()
