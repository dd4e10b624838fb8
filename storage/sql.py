"""One small SQL interface over both engines, so the domain modules write each statement once.

The domain modules (kv, inbox, referrals …) talk to `Connection` in SQLite's dialect with
`?` placeholders, exactly as they would to aiosqlite: `await conn.execute(sql, args)`, or
`async with conn.execute(sql, args) as cur` and then `fetchone()`, `fetchall()`,
`async for`, `rowcount`, `lastrowid`; rows are read by column name or position.

`SqliteConnection` passes every statement through unchanged. `PostgresConnection` rewrites
the little that differs (`translate`): `?` becomes `$1, $2 …`; `INSERT OR IGNORE` becomes
`INSERT … ON CONFLICT DO NOTHING`; an INSERT into a table with a generated key gets
`RETURNING` that key, which becomes `lastrowid`; SQLite's index hint `INDEXED BY name` is
dropped (PostgreSQL's planner chooses). Everything else the modules write is
common SQL. Where the engines really differ (the append-only guard, serialising a
read-then-insert across connections) the connection has a method, not an `if` in a module.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Coroutine, Generator, Sequence
from functools import lru_cache
from types import TracebackType
from typing import Any, Protocol

import aiosqlite


class Row(Protocol):
    """A result row: by column name or by position (sqlite3.Row, asyncpg.Record)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Any: ...

    def __len__(self) -> int: ...


class Cursor(ABC):
    rowcount: int = -1
    lastrowid: int | None = None

    @abstractmethod
    async def fetchone(self) -> Row | None: ...

    @abstractmethod
    async def fetchall(self) -> list[Row]: ...

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[Row]: ...

    async def close(self) -> None:
        return None


class Executing:
    """What `Connection.execute` returns: await it for the cursor, or use it with
    `async with` (the cursor is closed at the end of the block), like aiosqlite."""

    def __init__(self, run: Coroutine[Any, Any, Cursor]) -> None:
        self._run = run
        self._cursor: Cursor | None = None

    def __await__(self) -> Generator[Any, None, Cursor]:
        return self._run.__await__()

    async def __aenter__(self) -> Cursor:
        self._cursor = await self._run
        return self._cursor

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._cursor is not None:
            await self._cursor.close()


class Connection(ABC):
    """One database connection, as the domain modules see it."""

    dialect: str

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Executing:
        return Executing(self._execute(sql, tuple(params)))

    @abstractmethod
    async def _execute(self, sql: str, params: tuple[Any, ...]) -> Cursor: ...

    async def stream(self, sql: str, params: Sequence[Any] = ()) -> AsyncIterator[Row]:
        """The rows of a query one by one, never all in memory at once (a whole table
        read by `verify`). SQLite's cursor already steps through the rows."""
        async with self.execute(sql, params) as cur:
            async for row in cur:
                yield row

    @abstractmethod
    async def xact_lock(self, space: int, key: int) -> None:
        """Hold a lock on (space, key) until this transaction ends, so that a read followed
        by an insert that depends on it (the next REF number, the next hash in a chain) is
        never interleaved with the same read-then-insert on another connection."""

    @abstractmethod
    async def lift_append_only(self, table: str) -> None:
        """Lift `table`'s append-only guard until `restore_append_only`, inside the open
        transaction: no other connection ever sees the table unguarded."""

    @abstractmethod
    async def restore_append_only(self, table: str) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    def hours_between(self, earlier: str, later: str) -> str:
        """SQL for the hours from one stored UTC ISO time column to another (a float)."""

    @abstractmethod
    def months_before(self, column: str, months: int) -> str:
        """SQL for the stored UTC ISO time `months` months before `column`, as text in the
        same format (`storage.fields.iso`), so it compares with stored times as text."""


# Lock spaces for `xact_lock`.
LOCK_REF_NUMBER = 1
LOCK_RECORD_CHAIN = 2
LOCK_MEETING_ACTIONS = 3


# -- SQLite -------------------------------------------------------------------------------


class _SqliteCursor(Cursor):
    def __init__(self, cur: aiosqlite.Cursor) -> None:
        self._cur = cur
        self.rowcount = cur.rowcount
        self.lastrowid = cur.lastrowid

    async def fetchone(self) -> Row | None:
        row: Row | None = await self._cur.fetchone()
        return row

    async def fetchall(self) -> list[Row]:
        return list(await self._cur.fetchall())

    async def __aiter__(self) -> AsyncIterator[Row]:
        async for row in self._cur:
            yield row

    async def close(self) -> None:
        await self._cur.close()


class SqliteConnection(Connection):
    """aiosqlite, statements unchanged. One writer at a time is SQLite's own guarantee
    (`BEGIN IMMEDIATE`), so `xact_lock` has nothing to add."""

    dialect = "sqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.raw = db
        self._lifted: list[tuple[str, str]] = []

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> Cursor:
        return _SqliteCursor(await self.raw.execute(sql, params))

    async def xact_lock(self, space: int, key: int) -> None:
        return None

    async def lift_append_only(self, table: str) -> None:
        # The triggers are dropped and recreated from their own stored SQL.
        async with self.raw.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?"
            " ORDER BY name",
            (table,),
        ) as cur:
            triggers = [(str(r[0]), str(r[1])) for r in await cur.fetchall()]
        self._lifted = triggers  # what a rolled-back lift left here is stale
        for name, _ in triggers:
            await self.raw.execute(f'DROP TRIGGER "{name}"')

    async def restore_append_only(self, table: str) -> None:
        for _, sql in self._lifted:
            await self.raw.execute(sql)
        self._lifted = []

    async def close(self) -> None:
        await self.raw.close()

    def hours_between(self, earlier: str, later: str) -> str:
        return f"(julianday({later}) - julianday({earlier})) * 24.0"

    def months_before(self, column: str, months: int) -> str:
        return f"strftime('%Y-%m-%dT%H:%M:%f', {column}, '-{int(months)} months') || '+00:00'"


# -- PostgreSQL ---------------------------------------------------------------------------

# Tables whose key the database generates: an INSERT into them returns it (`lastrowid`).
GENERATED_KEYS = {
    "inbox": "seq",
    "referrals": "id",
    "record_entries": "id",
    "outbox": "id",
    "meetings": "id",
    "meeting_items": "id",
    "room_jobs": "id",
    "drafts": "id",
    "attachment_jobs": "id",
    "attachments": "id",
    "leader": "id",  # one row, id 1 (no key is generated; RETURNING is harmless)
}

_INSERT = re.compile(r"^\s*INSERT\s+(OR\s+IGNORE\s+)?INTO\s+(\w+)", re.IGNORECASE)
_READS = ("SELECT", "WITH", "VALUES", "SHOW")
_INDEXED_BY = re.compile(r"\s+INDEXED\s+BY\s+\w+", re.IGNORECASE)


@lru_cache(maxsize=1024)
def translate(sql: str) -> tuple[str, str]:
    """SQLite-dialect SQL as the domain modules write it → (PostgreSQL SQL, how to run it):
    "rows" (a query), "key" (an INSERT returning its generated key) or "status"."""
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    text = _INDEXED_BY.sub("", "".join(out))
    insert = _INSERT.match(text)
    if insert is not None:
        if insert.group(1):
            text = text[: insert.start(1)] + text[insert.end(1) :] + " ON CONFLICT DO NOTHING"
        key = GENERATED_KEYS.get(insert.group(2).lower())
        if key is not None and " RETURNING " not in text.upper():
            return f"{text} RETURNING {key}", "key"
        return text, "status"
    first = text.lstrip().split(None, 1)[0].upper() if text.strip() else ""
    return text, ("rows" if first in _READS or " RETURNING " in text.upper() else "status")


class _ListCursor(Cursor):
    def __init__(self, rows: list[Row], rowcount: int = -1, lastrowid: int | None = None) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    async def fetchone(self) -> Row | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    async def fetchall(self) -> list[Row]:
        rest = self._rows[self._next :]
        self._next = len(self._rows)
        return rest

    async def __aiter__(self) -> AsyncIterator[Row]:
        while (row := await self.fetchone()) is not None:
            yield row


def _status_count(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


# Rows a PostgreSQL cursor fetches per round trip (`Connection.stream`).
STREAM_BATCH = 2000


class PostgresConnection(Connection):
    """asyncpg, statements translated (`translate`). Transactions run at READ COMMITTED;
    what must not interleave across connections takes `xact_lock` (an advisory lock held
    to the end of the transaction)."""

    dialect = "postgresql"

    def __init__(self, conn: Any) -> None:
        self.raw = conn  # asyncpg.Connection

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> Cursor:
        text, how = translate(sql)
        if how == "status":
            status = (
                await self.raw.execute(text, *params) if params else await self.raw.execute(text)
            )
            return _ListCursor([], _status_count(str(status)))
        rows: list[Row] = list(await self.raw.fetch(text, *params))
        if how == "key":
            return _ListCursor(rows, len(rows), int(rows[0][0]) if rows else None)
        return _ListCursor(rows, len(rows))

    async def stream(self, sql: str, params: Sequence[Any] = ()) -> AsyncIterator[Row]:
        """A server-side cursor (`STREAM_BATCH` rows at a time) inside the open
        transaction; outside one, the rows are fetched whole."""
        text, _ = translate(sql)
        if not self.raw.is_in_transaction():
            for row in await self.raw.fetch(text, *params):
                yield row
            return
        async for row in self.raw.cursor(text, *params, prefetch=STREAM_BATCH):
            yield row

    async def xact_lock(self, space: int, key: int) -> None:
        await self.raw.execute(
            "SELECT pg_advisory_xact_lock($1::int, $2::int)", space, key & 0x7FFFFFFF
        )

    async def lift_append_only(self, table: str) -> None:
        # Transactional DDL: the table is locked against other writers until commit,
        # and a rollback puts the triggers back.
        await self.raw.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER USER')

    async def restore_append_only(self, table: str) -> None:
        await self.raw.execute(f'ALTER TABLE "{table}" ENABLE TRIGGER USER')

    async def close(self) -> None:
        await self.raw.close()

    def hours_between(self, earlier: str, later: str) -> str:
        return (
            f"EXTRACT(EPOCH FROM (CAST({later} AS timestamptz) - CAST({earlier} AS timestamptz)))"
            " / 3600.0"
        )

    def months_before(self, column: str, months: int) -> str:
        return (
            f"to_char((CAST({column} AS timestamptz) - interval '{int(months)} months')"
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') || '+00:00'"
        )
