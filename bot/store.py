"""The SQLite store. Every SQL statement of the bot lives in this module.

One aiosqlite connection, WAL, `synchronous=FULL` (an acknowledged referral must survive
a power cut), and a lock so that a transaction is never interleaved with another
coroutine's statements. Work happens in `transaction()` blocks: a use case either
commits whole (record, running-record entries, outgoing messages, inbox row marked done)
or not at all.
"""

from __future__ import annotations

import asyncio
import json
import os
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


OPEN_STATES = ("received", "claimed")


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
    state: str  # received (unclaimed), claimed, decided
    decision_due: datetime
    form: dict[str, Any]
    claimed_by: str | None = None
    rag: str | None = None
    outcome: str | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    pending_reclassification: dict[str, Any] | None = None
    channel: str = "matrix"
    written_followup_due: datetime | None = None
    written_followup_at: datetime | None = None
    followup_flagged_at: datetime | None = None
    child_key: str | None = None
    agency: str | None = None
    last_reminder_at: datetime | None = None
    reminder_count: int = 0

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True)
class Meeting:
    id: int
    referral_id: int
    event_id: str
    room_id: str | None
    chair: str
    called_by: str
    scheduled: str | None
    state: str  # creating, open, closed
    created_at: datetime
    closed_at: datetime | None
    close_note: str | None


@dataclass(frozen=True)
class Participant:
    user_id: str
    agency: str | None
    role: str  # chair, referrer, lead, invited
    status: str  # to_invite, invited, joined, declined, left


@dataclass(frozen=True)
class MeetingItem:
    id: int
    number: int | None
    kind: str
    author: str
    agency: str | None
    at: datetime
    text: str
    owner: str | None
    due: str | None  # ISO date
    done_at: datetime | None
    done_by: str | None
    reminded_at: datetime | None
    overdue_told_at: datetime | None


@dataclass(frozen=True)
class RoomJob:
    id: int
    kind: str
    meeting_id: int
    user_id: str | None
    attempts: int


def _meeting(r: aiosqlite.Row) -> Meeting:
    return Meeting(
        id=r["id"],
        referral_id=r["referral_id"],
        event_id=r["event_id"],
        room_id=r["room_id"],
        chair=r["chair"],
        called_by=r["called_by"],
        scheduled=r["scheduled"],
        state=r["state"],
        created_at=datetime.fromisoformat(r["created_at"]),
        closed_at=_dt(r["closed_at"]),
        close_note=r["close_note"],
    )


def _item(r: aiosqlite.Row) -> MeetingItem:
    return MeetingItem(
        id=r["id"],
        number=r["number"],
        kind=r["kind"],
        author=r["author"],
        agency=r["agency"],
        at=datetime.fromisoformat(r["at"]),
        text=r["text"],
        owner=r["owner"],
        due=r["due"],
        done_at=_dt(r["done_at"]),
        done_by=r["done_by"],
        reminded_at=_dt(r["reminded_at"]),
        overdue_told_at=_dt(r["overdue_told_at"]),
    )


@dataclass(frozen=True)
class RecordEntry:
    id: int
    referral_id: int
    at: datetime
    actor: str
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class OutboxRow:
    id: int
    txn_id: str
    message: OutgoingMessage
    referral_id: int | None
    purpose: str
    attempts: int


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _referral(row: aiosqlite.Row) -> Referral:
    pending = row["pending_reclassification"]
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
        claimed_by=row["claimed_by"],
        rag=row["rag"],
        outcome=row["outcome"],
        decided_by=row["decided_by"],
        decided_at=_dt(row["decided_at"]),
        pending_reclassification=json.loads(pending) if pending else None,
        channel=row["channel"],
        written_followup_due=_dt(row["written_followup_due"]),
        written_followup_at=_dt(row["written_followup_at"]),
        followup_flagged_at=_dt(row["followup_flagged_at"]),
        child_key=row["child_key"],
        agency=row["agency"],
        last_reminder_at=_dt(row["last_reminder_at"]),
        reminder_count=row["reminder_count"],
    )


class Tx:
    """Statements inside one open transaction. Obtain it from `Store.transaction()`."""

    def __init__(self, db: aiosqlite.Connection, now: datetime) -> None:
        self._db = db
        self.now = now
        # Rooms that got a new outgoing message in this transaction.
        self.touched_rooms: set[str] = set()
        self._touched_before: set[str] = set()
        self.room_jobs_added = False

    # -- savepoints: undo part of a transaction (a refused command) ----------------------

    async def savepoint(self) -> None:
        await self._db.execute("SAVEPOINT command")
        self._touched_before = set(self.touched_rooms)

    async def rollback_to_savepoint(self) -> None:
        await self._db.execute("ROLLBACK TO SAVEPOINT command")
        await self._db.execute("RELEASE SAVEPOINT command")
        self.touched_rooms = self._touched_before

    async def release_savepoint(self) -> None:
        await self._db.execute("RELEASE SAVEPOINT command")

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

    async def kv_with_prefix(self, prefix: str) -> list[tuple[str, str]]:
        async with self._db.execute(
            "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        ) as cur:
            return [(str(r[0]), str(r[1])) for r in await cur.fetchall()]

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
            private=bool(payload.get("private", False)),
            membership=payload.get("membership"),
            target=payload.get("target"),
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
        declared_by: str | None = None,
        rag: str | None = None,
        channel: str = "matrix",
        written_followup_due: datetime | None = None,
        child_key: str | None = None,
        agency: str | None = None,
    ) -> int:
        cur = await self._db.execute(
            "INSERT INTO referrals (ref, year, year_seq, event_id, room_id, sender, received_at,"
            " declared_type, declared_by, current_type, immediate_danger, state, decision_due,"
            " form, rag, channel, written_followup_due, child_key, agency)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'received', ?, ?, ?, ?, ?, ?, ?)",
            (
                ref,
                year,
                year_seq,
                event_id,
                room_id,
                sender,
                _iso(received_at),
                declared_type,
                declared_by or sender,
                declared_type,
                int(immediate_danger),
                _iso(decision_due),
                _dumps(form),
                rag,
                channel,
                None if written_followup_due is None else _iso(written_followup_due),
                child_key,
                agency,
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

    async def open_referrals(self) -> list[Referral]:
        """Unclaimed and claimed-but-undecided referrals, oldest first."""
        async with self._db.execute(
            "SELECT * FROM referrals WHERE state IN ('received', 'claimed')"
            " ORDER BY received_at, id"
        ) as cur:
            return [_referral(r) for r in await cur.fetchall()]

    async def referrals_of_child(self, referral: Referral) -> list[Referral]:
        """Every record about the same child: same keyed hash, plus links made by hand,
        minus unlinks made by hand. Oldest first; includes `referral` itself."""
        ids: set[int] = {referral.id}
        if referral.child_key:
            async with self._db.execute(
                "SELECT id FROM referrals WHERE child_key = ?", (referral.child_key,)
            ) as cur:
                ids.update(r[0] for r in await cur.fetchall())
        async with self._db.execute(
            "SELECT low_id, high_id, linked FROM referral_links WHERE low_id = ? OR high_id = ?",
            (referral.id, referral.id),
        ) as cur:
            for low, high, linked in await cur.fetchall():
                other = high if low == referral.id else low
                if linked:
                    ids.add(other)
                else:
                    ids.discard(other)
        marks = ",".join("?" * len(ids))
        async with self._db.execute(
            f"SELECT * FROM referrals WHERE id IN ({marks}) ORDER BY received_at, id",  # noqa: S608
            tuple(ids),
        ) as cur:
            return [_referral(r) for r in await cur.fetchall()]

    async def set_link(self, a: int, b: int, *, linked: bool, by: str) -> None:
        low, high = sorted((a, b))
        await self._db.execute(
            "INSERT INTO referral_links (low_id, high_id, linked, by_user, at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (low_id, high_id) DO UPDATE SET"
            " linked = excluded.linked, by_user = excluded.by_user, at = excluded.at",
            (low, high, int(linked), by, _iso(self.now)),
        )

    async def claim(self, referral_id: int, worker: str) -> bool:
        """Claim an unclaimed open referral. False if someone else got there first."""
        cur = await self._db.execute(
            "UPDATE referrals SET claimed_by = ?, claimed_at = ?, state = 'claimed'"
            " WHERE id = ? AND state = 'received' AND claimed_by IS NULL",
            (worker, _iso(self.now), referral_id),
        )
        return cur.rowcount == 1

    async def assign(self, referral_id: int, worker: str) -> None:
        await self._db.execute(
            "UPDATE referrals SET claimed_by = ?, claimed_at = ?, state = 'claimed'"
            " WHERE id = ? AND state IN ('received', 'claimed')",
            (worker, _iso(self.now), referral_id),
        )

    async def release(self, referral_id: int) -> None:
        await self._db.execute(
            "UPDATE referrals SET claimed_by = NULL, claimed_at = NULL, state = 'received'"
            " WHERE id = ? AND state = 'claimed'",
            (referral_id,),
        )

    async def set_rag(self, referral_id: int, rag: str, due: datetime) -> None:
        await self._db.execute(
            "UPDATE referrals SET rag = ?, decision_due = ?, last_reminder_at = NULL WHERE id = ?",
            (rag, _iso(due), referral_id),
        )

    async def decide(self, referral_id: int, outcome: str, by: str) -> None:
        await self._db.execute(
            "UPDATE referrals SET state = 'decided', outcome = ?, decided_by = ?, decided_at = ?"
            " WHERE id = ?",
            (outcome, by, _iso(self.now), referral_id),
        )

    async def set_current_type(self, referral_id: int, new_type: str) -> None:
        """Change the working classification; the declared type is never overwritten."""
        await self._db.execute(
            "UPDATE referrals SET current_type = ?, pending_reclassification = NULL WHERE id = ?",
            (new_type, referral_id),
        )

    async def set_pending_reclassification(
        self, referral_id: int, pending: dict[str, Any] | None
    ) -> None:
        await self._db.execute(
            "UPDATE referrals SET pending_reclassification = ? WHERE id = ?",
            (None if pending is None else _dumps(pending), referral_id),
        )

    async def mark_reminded(self, referral_id: int) -> None:
        await self._db.execute(
            "UPDATE referrals SET last_reminder_at = ?, reminder_count = reminder_count + 1"
            " WHERE id = ?",
            (_iso(self.now), referral_id),
        )

    async def written_followup_received(self, referral_id: int) -> None:
        await self._db.execute(
            "UPDATE referrals SET written_followup_at = ? WHERE id = ?",
            (_iso(self.now), referral_id),
        )

    async def flag_followup(self, referral_id: int) -> None:
        await self._db.execute(
            "UPDATE referrals SET followup_flagged_at = ? WHERE id = ?",
            (_iso(self.now), referral_id),
        )

    async def followups_overdue(self) -> list[Referral]:
        async with self._db.execute(
            "SELECT * FROM referrals WHERE channel = 'phone' AND written_followup_at IS NULL"
            " AND written_followup_due <= ? AND followup_flagged_at IS NULL",
            (_iso(self.now),),
        ) as cur:
            return [_referral(r) for r in await cur.fetchall()]

    # -- strategy meetings -----------------------------------------------------------------

    async def referral_by_id(self, referral_id: int) -> Referral | None:
        async with self._db.execute("SELECT * FROM referrals WHERE id = ?", (referral_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _referral(row)

    async def insert_meeting(
        self, *, referral_id: int, event_id: str, chair: str, called_by: str, scheduled: str | None
    ) -> int:
        cur = await self._db.execute(
            "INSERT INTO meetings (referral_id, event_id, chair, called_by, scheduled, state,"
            " created_at) VALUES (?, ?, ?, ?, ?, 'creating', ?)",
            (referral_id, event_id, chair, called_by, scheduled, _iso(self.now)),
        )
        assert cur.lastrowid is not None
        await self.add_room_job("create_meeting", cur.lastrowid)
        return cur.lastrowid

    async def meeting(self, meeting_id: int) -> Meeting | None:
        async with self._db.execute("SELECT * FROM meetings WHERE id = ?", (meeting_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _meeting(row)

    async def meeting_by_room(self, room_id: str) -> Meeting | None:
        async with self._db.execute("SELECT * FROM meetings WHERE room_id = ?", (room_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _meeting(row)

    async def meetings_of(self, referral_id: int) -> list[Meeting]:
        async with self._db.execute(
            "SELECT * FROM meetings WHERE referral_id = ? ORDER BY id", (referral_id,)
        ) as cur:
            return [_meeting(r) for r in await cur.fetchall()]

    async def open_meetings(self) -> list[Meeting]:
        async with self._db.execute("SELECT * FROM meetings WHERE state = 'open'") as cur:
            return [_meeting(r) for r in await cur.fetchall()]

    async def set_meeting_room(self, meeting_id: int, room_id: str) -> None:
        await self._db.execute(
            "UPDATE meetings SET room_id = ?, state = 'open' WHERE id = ? AND room_id IS NULL",
            (room_id, meeting_id),
        )

    async def set_chair(self, meeting_id: int, chair: str) -> None:
        await self._db.execute("UPDATE meetings SET chair = ? WHERE id = ?", (chair, meeting_id))

    async def close_meeting(self, meeting_id: int, note: str | None) -> None:
        await self._db.execute(
            "UPDATE meetings SET state = 'closed', closed_at = ?, close_note = ? WHERE id = ?",
            (_iso(self.now), note, meeting_id),
        )

    async def add_participant(
        self, meeting_id: int, user_id: str, *, agency: str | None, role: str, status: str
    ) -> bool:
        """Add someone to a meeting; False if they were already on it."""
        cur = await self._db.execute(
            "INSERT OR IGNORE INTO meeting_participants (meeting_id, user_id, agency, role, status)"
            " VALUES (?, ?, ?, ?, ?)",
            (meeting_id, user_id, agency, role, status),
        )
        return cur.rowcount == 1

    async def set_participant_status(self, meeting_id: int, user_id: str, status: str) -> bool:
        cur = await self._db.execute(
            "UPDATE meeting_participants SET status = ? WHERE meeting_id = ? AND user_id = ?"
            " AND status != ?",
            (status, meeting_id, user_id, status),
        )
        return cur.rowcount == 1

    async def participants(self, meeting_id: int) -> list[Participant]:
        async with self._db.execute(
            "SELECT user_id, agency, role, status FROM meeting_participants WHERE meeting_id = ?"
            " ORDER BY rowid",
            (meeting_id,),
        ) as cur:
            return [Participant(*r) for r in await cur.fetchall()]

    async def add_item(
        self,
        meeting_id: int,
        kind: str,
        author: str,
        text: str,
        *,
        agency: str | None = None,
        owner: str | None = None,
        due: str | None = None,
    ) -> MeetingItem:
        number = None
        if kind == "action":
            async with self._db.execute(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM meeting_items"
                " WHERE meeting_id = ? AND kind = 'action'",
                (meeting_id,),
            ) as cur:
                row = await cur.fetchone()
            number = int(row[0]) if row else 1
        cur = await self._db.execute(
            "INSERT INTO meeting_items (meeting_id, number, kind, author, agency, at, text, owner,"
            " due) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (meeting_id, number, kind, author, agency, _iso(self.now), text, owner, due),
        )
        async with self._db.execute(
            "SELECT * FROM meeting_items WHERE id = ?", (cur.lastrowid,)
        ) as c2:
            row = await c2.fetchone()
        assert row is not None
        return _item(row)

    async def items(self, meeting_id: int) -> list[MeetingItem]:
        async with self._db.execute(
            "SELECT * FROM meeting_items WHERE meeting_id = ? ORDER BY id", (meeting_id,)
        ) as cur:
            return [_item(r) for r in await cur.fetchall()]

    async def complete_action(self, meeting_id: int, number: int, by: str) -> bool:
        cur = await self._db.execute(
            "UPDATE meeting_items SET done_at = ?, done_by = ? WHERE meeting_id = ?"
            " AND kind = 'action' AND number = ? AND done_at IS NULL",
            (_iso(self.now), by, meeting_id, number),
        )
        return cur.rowcount == 1

    async def open_actions(self) -> list[tuple[Meeting, MeetingItem]]:
        async with self._db.execute(
            "SELECT m.*, i.id AS item_id FROM meeting_items i"
            " JOIN meetings m ON m.id = i.meeting_id"
            " WHERE i.kind = 'action' AND i.done_at IS NULL AND m.state = 'closed'"
            " ORDER BY i.id"
        ) as cur:
            rows = await cur.fetchall()
        result = []
        for r in rows:
            async with self._db.execute(
                "SELECT * FROM meeting_items WHERE id = ?", (r["item_id"],)
            ) as cur2:
                item_row = await cur2.fetchone()
            assert item_row is not None
            result.append((_meeting(r), _item(item_row)))
        return result

    async def mark_action_reminded(self, item_id: int, *, overdue: bool) -> None:
        column = "overdue_told_at" if overdue else "reminded_at"
        await self._db.execute(
            f"UPDATE meeting_items SET {column} = ? WHERE id = ?",  # noqa: S608
            (_iso(self.now), item_id),
        )

    async def add_room_job(self, kind: str, meeting_id: int, user_id: str | None = None) -> None:
        await self._db.execute(
            "INSERT INTO room_jobs (kind, meeting_id, user_id, created_at) VALUES (?, ?, ?, ?)",
            (kind, meeting_id, user_id, _iso(self.now)),
        )
        self.room_jobs_added = True

    async def pending_room_jobs(self) -> list[RoomJob]:
        async with self._db.execute(
            "SELECT id, kind, meeting_id, user_id, attempts FROM room_jobs"
            " WHERE done_at IS NULL ORDER BY id"
        ) as cur:
            return [RoomJob(*r) for r in await cur.fetchall()]

    async def room_job_done(self, job_id: int) -> None:
        await self._db.execute(
            "UPDATE room_jobs SET done_at = ?, attempts = attempts + 1 WHERE id = ?",
            (_iso(self.now), job_id),
        )

    async def room_job_failed(self, job_id: int, error: str) -> None:
        await self._db.execute(
            "UPDATE room_jobs SET attempts = attempts + 1, last_error = ? WHERE id = ?",
            (error[:500], job_id),
        )

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


class Store:
    """Owns the database file. Open with `await Store.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()
        self.clock = _now

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
        await store.migrate()
        return store

    async def close(self) -> None:
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
    async def transaction(self) -> AsyncIterator[Tx]:
        """One write transaction; commits on success, rolls back on any exception."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(self._db, self.clock())
            except BaseException:
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
