"""Which storage engine a storage test runs on, and raw SQL on either, for the tests.

The storage-touching test modules use the `engine` fixture (tests/conftest.py), which
runs each of their tests once on SQLite and once on a throwaway PostgreSQL. The tests
name their database by a file path as before (`tmp_path / "r.db"`); `location()` turns
that path into the database the current engine uses: the file itself, or a schema of its
own (named after the path) in the session's PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from bot.devpostgres import DevPostgres
from storage.engine import Location, Postgres
from storage.sql import translate

DATABASE = "referral_bot_test"

# Set by the `engine` fixture while a test runs on PostgreSQL.
CURRENT: DevPostgres | None = None
_schemas: set[str] = set()

T = TypeVar("T")


def on_postgres() -> bool:
    return CURRENT is not None


def schema_for(db_path: Path) -> str:
    return "t_" + hashlib.sha256(str(db_path.absolute()).encode()).hexdigest()[:24]


def location(db_path: Path) -> Location:
    """The database a test's `db_path` stands for on the current engine."""
    if CURRENT is None:
        return db_path
    schema = schema_for(db_path)
    if schema not in _schemas:
        CURRENT.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}", DATABASE)
        _schemas.add(schema)
    return Postgres(CURRENT.dsn(DATABASE, search_path=schema))


def config_lines(db_path: Path) -> str:
    """`[storage]` keys that point a config at the current engine's database."""
    where = location(db_path)
    return "" if isinstance(where, Path) else f'database = "{where.dsn}"\n'


def _in_thread(run: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to the end on a loop of its own (tests call this from async code)."""

    async def main() -> T:
        return await run()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


def _resolve(db: Location) -> Location:
    """A test's database path (as on SQLite), or a store's `where`."""
    return location(db) if isinstance(db, Path) else db


def _pg(where: Location, work: Callable[[Any], Awaitable[T]]) -> T:
    import asyncpg

    assert isinstance(where, Postgres)

    async def run() -> T:
        conn = await asyncpg.connect(where.dsn)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return _in_thread(run)


def sql(db_path: Location, query: str, *args: object) -> list[tuple[object, ...]]:
    """One statement from outside the bot (a DBA's shell), in SQLite's dialect, on a
    test's database path or a store's `where`."""
    where = _resolve(db_path)
    if isinstance(where, Path):
        db = sqlite3.connect(where)
        try:
            rows = db.execute(query, args).fetchall()
            db.commit()
            return rows
        finally:
            db.close()
    text, _ = translate(query)

    async def work(conn: Any) -> list[tuple[object, ...]]:
        return [tuple(r) for r in await conn.fetch(text, *args)]

    return _pg(where, work)


def dump(db_path: Location) -> str:
    """Everything stored, as text: `sqlite3 .dump`, or every row of every table."""
    where = _resolve(db_path)
    if isinstance(where, Path):
        db = sqlite3.connect(where)
        try:
            return "\n".join(db.iterdump())
        finally:
            db.close()

    async def work(conn: Any) -> str:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema ="
            " current_schema() ORDER BY table_name"
        )
        out = []
        for t in tables:
            for r in await conn.fetch(f'SELECT * FROM "{t[0]}"'):  # noqa: S608
                out.append(f"{t[0]}: {tuple(r)!r}")
        return "\n".join(out)

    return _pg(where, work)


def edit_by_hand(db_path: Location, *statements: str) -> None:
    """What someone with the database and a SQL shell can do: lift the append-only
    triggers, change rows, put the triggers back."""
    where = _resolve(db_path)
    if isinstance(where, Path):
        db = sqlite3.connect(where)
        try:
            triggers = db.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                " AND tbl_name = 'record_entries'"
            ).fetchall()
            for name, _ in triggers:
                db.execute(f"DROP TRIGGER {name}")
            for statement in statements:
                db.execute(statement)
            for _, trigger_sql in triggers:
                db.execute(trigger_sql)
            db.commit()
        finally:
            db.close()
        return

    async def work(conn: Any) -> None:
        async with conn.transaction():
            # A superuser's way round every trigger and foreign key, for this transaction.
            await conn.execute("SET LOCAL session_replication_role = replica")
            for statement in statements:
                await conn.execute(translate(statement)[0])

    _pg(where, work)
