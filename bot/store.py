"""The SQLite store. Every SQL statement of the bot lives in this module.

One aiosqlite connection, WAL, `synchronous=FULL` (an acknowledged referral must survive
a power cut), and a lock so that a transaction is never interleaved with another
coroutine's statements. Work happens in `transaction()` blocks: a use case either
commits whole (record, running-record entries, outgoing messages, inbox row marked done)
or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from bot.migrations import LATEST_VERSION, MIGRATIONS
from handlers.ports import Incoming, OutgoingMessage


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


def _dumps(data: Any) -> str:
    # ensure_ascii keeps lone surrogates and other odd text storable as valid UTF-8.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class InboxItem:
    """A timeline event to store before the sync token moves on."""

    event_id: str
    room_id: str
    sender: str
    origin_ts: int
    room_encrypted: bool
    # 'pending' with a payload {body, withheld} or 'undecrypted' with the raw event JSON.
    state: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class UndecryptedItem:
    seq: int
    room_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class Referral:
    id: int
    ref: str
    event_id: str
    room_id: str
    sender: str
    received_at: datetime
    declared_type: str
    declared_by: str
    current_type: str
    immediate_danger: bool
    state: str
    decision_due: datetime
    form: dict[str, Any]


@dataclass(frozen=True)
class RecordEntry:
    id: int
    referral_id: int
    at: datetime
    actor: str
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class OpsCounts:
    """Counts for /metrics: no personal data, only numbers by type and state."""

    referrals: dict[tuple[str, str], int]  # (current_type, state) -> count
    decisions_overdue: int
    undecrypted: int
    outbox_depth: int


@dataclass(frozen=True)
class OutboxRow:
    id: int
    txn_id: str
    message: OutgoingMessage
    referral_id: int | None
    purpose: str
    attempts: int


def _referral(row: aiosqlite.Row) -> Referral:
    return Referral(
        id=row["id"],
        ref=row["ref"],
        event_id=row["event_id"],
        room_id=row["room_id"],
        sender=row["sender"],
        received_at=datetime.fromisoformat(row["received_at"]),
        declared_type=row["declared_type"],
        declared_by=row["declared_by"],
        current_type=row["current_type"],
        immediate_danger=bool(row["immediate_danger"]),
        state=row["state"],
        decision_due=datetime.fromisoformat(row["decision_due"]),
        form=json.loads(row["form"]),
    )


class Tx:
    """Statements inside one open transaction. Obtain it from `Store.transaction()`."""

    def __init__(self, db: aiosqlite.Connection, now: datetime) -> None:
        self._db = db
        self.now = now
        # Rooms that got a new outgoing message in this transaction.
        self.touched_rooms: set[str] = set()

    # -- key/value ---------------------------------------------------------------------

    async def get_kv(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_kv(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- inbox -------------------------------------------------------------------------

    async def add_inbox(self, items: Iterable[InboxItem]) -> set[str]:
        """Store events not seen before; return the rooms that got new pending work."""
        rooms: set[str] = set()
        for item in items:
            cur = await self._db.execute(
                "INSERT OR IGNORE INTO inbox (event_id, room_id, sender, origin_ts,"
                " room_encrypted, state, payload, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.event_id,
                    item.room_id,
                    item.sender,
                    item.origin_ts,
                    int(item.room_encrypted),
                    item.state,
                    _dumps(item.payload),
                    _iso(self.now),
                ),
            )
            if cur.rowcount and item.state == "pending":
                rooms.add(item.room_id)
        return rooms

    async def known_event(self, event_id: str) -> bool:
        async with self._db.execute("SELECT 1 FROM inbox WHERE event_id = ?", (event_id,)) as cur:
            return await cur.fetchone() is not None

    async def next_pending(self, room_id: str) -> Incoming | None:
        async with self._db.execute(
            "SELECT seq, event_id, room_id, sender, origin_ts, room_encrypted, payload"
            " FROM inbox WHERE state = 'pending' AND room_id = ? ORDER BY seq LIMIT 1",
            (room_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        payload = json.loads(row["payload"])
        return Incoming(
            seq=row["seq"],
            event_id=row["event_id"],
            room_id=row["room_id"],
            sender=row["sender"],
            origin_ts=row["origin_ts"],
            room_encrypted=bool(row["room_encrypted"]),
            body=str(payload.get("body", "")),
            withheld=bool(payload.get("withheld", False)),
        )

    async def rooms_with_pending(self) -> list[str]:
        async with self._db.execute(
            "SELECT DISTINCT room_id FROM inbox WHERE state = 'pending'"
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def mark_handled(self, seq: int) -> None:
        """Mark an inbox event done and forget its text."""
        await self._db.execute(
            "UPDATE inbox SET state = 'done', payload = NULL, handled_at = ? WHERE seq = ?",
            (_iso(self.now), seq),
        )

    async def undecrypted(self, limit: int = 200) -> list[UndecryptedItem]:
        async with self._db.execute(
            "SELECT seq, room_id, payload FROM inbox WHERE state = 'undecrypted'"
            " ORDER BY seq LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [UndecryptedItem(r["seq"], r["room_id"], json.loads(r["payload"])) for r in rows]

    async def set_decrypted(self, seq: int, payload: dict[str, Any]) -> None:
        await self._db.execute(
            "UPDATE inbox SET state = 'pending', payload = ?"
            " WHERE seq = ? AND state = 'undecrypted'",
            (_dumps(payload), seq),
        )

    # -- referrals ---------------------------------------------------------------------

    async def next_year_seq(self, year: int) -> int:
        async with self._db.execute(
            "SELECT COALESCE(MAX(year_seq), 0) + 1 FROM referrals WHERE year = ?", (year,)
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def insert_referral(
        self,
        *,
        ref: str,
        year: int,
        year_seq: int,
        event_id: str,
        room_id: str,
        sender: str,
        received_at: datetime,
        declared_type: str,
        immediate_danger: bool,
        decision_due: datetime,
        form: dict[str, Any],
    ) -> int:
        cur = await self._db.execute(
            "INSERT INTO referrals (ref, year, year_seq, event_id, room_id, sender, received_at,"
            " declared_type, declared_by, current_type, immediate_danger, state, decision_due,"
            " form) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'received', ?, ?)",
            (
                ref,
                year,
                year_seq,
                event_id,
                room_id,
                sender,
                _iso(received_at),
                declared_type,
                sender,
                declared_type,
                int(immediate_danger),
                _iso(decision_due),
                _dumps(form),
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    async def referral_by_event(self, event_id: str) -> Referral | None:
        async with self._db.execute(
            "SELECT * FROM referrals WHERE event_id = ?", (event_id,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else _referral(row)

    async def referral_by_ref(self, ref: str) -> Referral | None:
        async with self._db.execute("SELECT * FROM referrals WHERE ref = ?", (ref,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _referral(row)

    async def referral_count(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM referrals") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def append_record(
        self, referral_id: int, actor: str, kind: str, detail: dict[str, Any] | None = None
    ) -> None:
        await self._db.execute(
            "INSERT INTO record_entries (referral_id, at, actor, kind, detail)"
            " VALUES (?, ?, ?, ?, ?)",
            (referral_id, _iso(self.now), actor, kind, _dumps(detail or {})),
        )

    async def record_of(self, referral_id: int) -> list[RecordEntry]:
        async with self._db.execute(
            "SELECT * FROM record_entries WHERE referral_id = ? ORDER BY id", (referral_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [
            RecordEntry(
                id=r["id"],
                referral_id=r["referral_id"],
                at=datetime.fromisoformat(r["at"]),
                actor=r["actor"],
                kind=r["kind"],
                detail=json.loads(r["detail"]),
            )
            for r in rows
        ]

    # -- outbox ------------------------------------------------------------------------

    async def enqueue(
        self,
        message: OutgoingMessage,
        *,
        txn_id: str,
        purpose: str,
        referral_id: int | None = None,
    ) -> None:
        await self._db.execute(
            "INSERT OR IGNORE INTO outbox (txn_id, room_id, content, sensitive, referral_id,"
            " purpose, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                txn_id,
                message.room_id,
                _dumps(message.to_json()),
                int(message.sensitive),
                referral_id,
                purpose,
                _iso(self.now),
            ),
        )
        self.touched_rooms.add(message.room_id)

    async def unsent(self, room_id: str | None = None, limit: int = 50) -> list[OutboxRow]:
        sql = "SELECT * FROM outbox WHERE sent_at IS NULL"
        args: tuple[Any, ...] = ()
        if room_id is not None:
            sql += " AND room_id = ?"
            args = (room_id,)
        sql += " ORDER BY id LIMIT ?"
        async with self._db.execute(sql, (*args, limit)) as cur:
            rows = await cur.fetchall()
        return [
            OutboxRow(
                id=r["id"],
                txn_id=r["txn_id"],
                message=OutgoingMessage.from_json(json.loads(r["content"])),
                referral_id=r["referral_id"],
                purpose=r["purpose"],
                attempts=r["attempts"],
            )
            for r in rows
        ]

    async def ack_unsent(self, referral_id: int) -> bool:
        """Whether the referral's acknowledgement is still waiting in the outbox."""
        async with self._db.execute(
            "SELECT 1 FROM outbox WHERE referral_id = ? AND purpose = 'ack' AND sent_at IS NULL",
            (referral_id,),
        ) as cur:
            return await cur.fetchone() is not None

    async def rooms_with_unsent(self) -> list[str]:
        async with self._db.execute(
            "SELECT DISTINCT room_id FROM outbox WHERE sent_at IS NULL"
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def mark_sent(self, row: OutboxRow, event_id: str) -> None:
        await self._db.execute(
            "UPDATE outbox SET sent_at = ?, sent_event_id = ?, attempts = attempts + 1,"
            " last_error = NULL WHERE id = ?",
            (_iso(self.now), event_id, row.id),
        )
        if row.referral_id is not None:
            await self.append_record(
                row.referral_id,
                "referral-bot",
                f"{row.purpose}_sent",
                {"event_id": event_id, "room_id": row.message.room_id},
            )

    async def mark_refused(self, row: OutboxRow, reason: str) -> None:
        """Give up on a message that must not be sent; the running record says so."""
        await self._db.execute(
            "UPDATE outbox SET sent_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
            (_iso(self.now), f"refused: {reason}"[:500], row.id),
        )
        if row.referral_id is not None:
            await self.append_record(
                row.referral_id, "referral-bot", f"{row.purpose}_refused", {"reason": reason}
            )

    async def mark_failed(self, row: OutboxRow, error: str) -> None:
        await self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
            (error[:500], row.id),
        )

    async def outbox_depth(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- operations --------------------------------------------------------------------

    async def referral_received_at(self, referral_id: int) -> datetime | None:
        async with self._db.execute(
            "SELECT received_at FROM referrals WHERE id = ?", (referral_id,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else datetime.fromisoformat(row[0])

    async def ops_counts(self) -> OpsCounts:
        async with self._db.execute(
            "SELECT current_type, state, COUNT(*) FROM referrals GROUP BY current_type, state"
        ) as cur:
            referrals = {(r[0], r[1]): int(r[2]) for r in await cur.fetchall()}
        # decision_due is stored as UTC ISO text in one format, so text order is time order.
        async with self._db.execute(
            "SELECT COUNT(*) FROM referrals WHERE state = 'received' AND decision_due < ?",
            (_iso(self.now),),
        ) as cur:
            overdue = await cur.fetchone()
        async with self._db.execute(
            "SELECT COUNT(*) FROM inbox WHERE state = 'undecrypted'"
        ) as cur:
            undecrypted = await cur.fetchone()
        return OpsCounts(
            referrals=referrals,
            decisions_overdue=int(overdue[0]) if overdue else 0,
            undecrypted=int(undecrypted[0]) if undecrypted else 0,
            outbox_depth=await self.outbox_depth(),
        )


class Store:
    """Owns the database file. Open with `await Store.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()
        self.clock = _now
        self._reader: aiosqlite.Connection | None = None
        self._read_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = not path.exists()
        db = await aiosqlite.connect(path, isolation_level=None)
        if fresh:
            os.chmod(path, 0o600)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute("PRAGMA busy_timeout = 5000")
        store = cls(db, path)
        try:
            await store.migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        async with self._read_lock:
            if self._reader is not None:
                await self._reader.close()
                self._reader = None
        async with self._lock:
            await self._db.close()

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def migrate(self, target: int = LATEST_VERSION) -> None:
        async with self._lock:
            current = await self.schema_version()
            if current > LATEST_VERSION:
                raise RuntimeError(
                    f"database schema {current} is newer than this bot ({LATEST_VERSION})"
                )
            for version, script in MIGRATIONS:
                if current < version <= target:
                    await self._db.execute("BEGIN IMMEDIATE")
                    try:
                        for statement in _split_sql(script):
                            await self._db.execute(statement)
                        await self._db.execute(f"PRAGMA user_version = {version:d}")
                    except BaseException:
                        await self._db.execute("ROLLBACK")
                        raise
                    await self._db.execute("COMMIT")

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Tx]:
        """A read-only snapshot on a second connection, for slow reads such as /metrics:
        with WAL it neither waits for nor blocks the writer. Writing through it fails."""
        async with self._read_lock:
            if self._reader is None:
                self._reader = await aiosqlite.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None
                )
                self._reader.row_factory = aiosqlite.Row
                await self._reader.execute("PRAGMA busy_timeout = 5000")
            await self._reader.execute("BEGIN")
            try:
                yield Tx(self._reader, self.clock())
            finally:
                await self._reader.execute("ROLLBACK")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One write transaction; commits on success, rolls back on any exception."""
        async with self._lock:
            try:
                # BEGIN inside the try: a task cancelled while awaiting it (shutdown) has
                # still queued it on the connection, and must not leave it open.
                await self._db.execute("BEGIN IMMEDIATE")
                yield Tx(self._db, self.clock())
            except BaseException:
                with contextlib.suppress(sqlite3.OperationalError):  # BEGIN itself failed
                    await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements; triggers keep their inner semicolons."""
    statements: list[str] = []
    buf: list[str] = []
    in_trigger = False
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        buf.append(line)
        upper = stripped.upper()
        if upper.startswith("CREATE TRIGGER"):
            in_trigger = True
        if in_trigger:
            if upper.endswith("END;"):
                statements.append("\n".join(buf))
                buf, in_trigger = [], False
        elif stripped.endswith(";"):
            statements.append("\n".join(buf))
            buf = []
    if buf:
        statements.append("\n".join(buf))
    return statements
