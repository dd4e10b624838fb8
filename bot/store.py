"""The SQLite store. Every SQL statement of the bot lives in this module.

One aiosqlite connection, WAL, `synchronous=FULL` (an acknowledged referral must survive
a power cut), and a lock so that a transaction is never interleaved with another
coroutine's statements. Work happens in `transaction()` blocks: a use case either
commits whole (record, running-record entries, outgoing messages, inbox row marked done)
or not at all.

What is stored (docs/SECURITY.md): every column that can hold personal data
(`referrals.form`, `record_entries.detail`, `outbox.content`, `inbox.payload`) is
encrypted here with the `Keyring`, bound to its row, so callers only ever see plain
values and nothing personal reaches the file in clear. Each running-record entry carries
a keyed hash chained to the previous entry of the same referral.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiosqlite
from cryptography.exceptions import InvalidTag

from bot.keyring import Keyring
from bot.migrations import LATEST_VERSION, MIGRATIONS
from bot.store_drafts import DraftStore
from handlers.ports import Incoming, OutgoingMessage

# A value encrypted with the database key, so that a wrong key is refused at start rather
# than on the first referral.
KEY_CHECK = "database_key_check"
KEY_CHECK_TEXT = "referral-bot database key check"
# Set by migration step 3: rows written before field encryption still have to be sealed.
SEAL_FLAG = "legacy_rows_to_seal"
SYSTEM_ACTOR = "referral-bot"


class WrongDatabaseKey(Exception):
    """The configured database key is not the one this database was encrypted with."""


class DatabaseInUse(Exception):
    """Another process (a running bot) holds the database."""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


def _dumps(data: Any) -> str:
    # ensure_ascii keeps lone surrogates and other odd text storable as valid UTF-8.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


# Encryption contexts: each ciphertext is bound to its column and its row, so a value
# copied into another row (or column) does not decrypt.
def _ctx_form(event_id: str) -> str:
    return f"referrals.form:{event_id}"


def _ctx_detail(referral_id: int) -> str:
    return f"record_entries.detail:{referral_id}"


def _ctx_content(txn_id: str) -> str:
    return f"outbox.content:{txn_id}"


def _ctx_payload(event_id: str) -> str:
    return f"inbox.payload:{event_id}"


def child_key_of(keyring: Keyring, form: dict[str, Any]) -> str | None:
    """The keyed hash of the child's name and date of birth in a stored form."""
    child = form.get("child")
    if not isinstance(child, dict) or not isinstance(child.get("full_name"), str):
        return None
    born = child.get("date_of_birth")
    try:
        born_date = date.fromisoformat(born) if isinstance(born, str) else None
    except ValueError:
        born_date = None
    return keyring.child_key(child["full_name"], born_date)


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


def _meeting(r: aiosqlite.Row, keyring: Keyring) -> Meeting:
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
        close_note=(
            keyring.decrypt(r["close_note"], _ctx_close_note(r["id"])) if r["close_note"] else None
        ),
    )


def _item(r: aiosqlite.Row, keyring: Keyring) -> MeetingItem:
    return MeetingItem(
        id=r["id"],
        number=r["number"],
        kind=r["kind"],
        author=r["author"],
        agency=r["agency"],
        at=datetime.fromisoformat(r["at"]),
        text=keyring.decrypt(r["text"], _ctx_item(r["meeting_id"])),
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
    # Set when the row goes out in one message with others (Tx.set_batch).
    batch: str | None = None


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _ctx_pending(referral_id: int) -> str:
    return f"referrals.pending_reclassification:{referral_id}"


def _ctx_item(meeting_id: int) -> str:
    return f"meeting_items.text:{meeting_id}"


def _ctx_close_note(meeting_id: int) -> str:
    return f"meetings.close_note:{meeting_id}"


def _referral(row: aiosqlite.Row, keyring: Keyring) -> Referral:
    pending = row["pending_reclassification"]
    if pending:
        pending = keyring.decrypt(pending, _ctx_pending(row["id"]))
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
        form=json.loads(keyring.decrypt(row["form"], _ctx_form(row["event_id"]))),
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


class Tx(DraftStore):
    """Statements inside one open transaction. Obtain it from `Store.transaction()`."""

    def __init__(self, db: aiosqlite.Connection, now: datetime, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring
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
                    self._keyring.encrypt(_dumps(item.payload), _ctx_payload(item.event_id)),
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
        payload = json.loads(self._keyring.decrypt(row["payload"], _ctx_payload(row["event_id"])))
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
            edit_of=payload.get("edit_of"),
            command=bool(payload.get("command", False)),
            redacts=payload.get("redacts"),
            poll_of=payload.get("poll_of"),
            poll_answers=tuple(str(a) for a in payload.get("poll_answers", ())),
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
            "SELECT seq, event_id, room_id, payload FROM inbox WHERE state = 'undecrypted'"
            " ORDER BY seq LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            UndecryptedItem(
                r["seq"],
                r["room_id"],
                json.loads(self._keyring.decrypt(r["payload"], _ctx_payload(r["event_id"]))),
            )
            for r in rows
        ]

    async def set_decrypted(self, seq: int, payload: dict[str, Any]) -> None:
        async with self._db.execute("SELECT event_id FROM inbox WHERE seq = ?", (seq,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return
        await self._db.execute(
            "UPDATE inbox SET state = 'pending', payload = ?"
            " WHERE seq = ? AND state = 'undecrypted'",
            (self._keyring.encrypt(_dumps(payload), _ctx_payload(row["event_id"])), seq),
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
        agency: str | None = None,
    ) -> int:
        """Insert a referral; its child_key is computed here from the form."""
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
                self._keyring.encrypt(_dumps(form), _ctx_form(event_id)),
                rag,
                channel,
                None if written_followup_due is None else _iso(written_followup_due),
                child_key_of(self._keyring, form),
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
        return None if row is None else _referral(row, self._keyring)

    async def referral_by_ref(self, ref: str) -> Referral | None:
        async with self._db.execute("SELECT * FROM referrals WHERE ref = ?", (ref,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _referral(row, self._keyring)

    async def open_referrals(self) -> list[Referral]:
        """Unclaimed and claimed-but-undecided referrals, oldest first."""
        async with self._db.execute(
            "SELECT * FROM referrals WHERE state IN ('received', 'claimed')"
            " ORDER BY received_at, id"
        ) as cur:
            return [_referral(r, self._keyring) for r in await cur.fetchall()]

    async def due_for_reminder(
        self, due_before: datetime, reminded_before: datetime
    ) -> list[Referral]:
        """Open referrals whose deadline is before `due_before` and that were not reminded
        about since `reminded_before`, oldest first. Only these rows are read and
        decrypted (through the `referrals_open_due` index), so a deadline check costs
        the same with ten open referrals as with thousands. Times are stored as UTC ISO
        text in one format, so text order is time order."""
        async with self._db.execute(
            "SELECT * FROM referrals WHERE state IN ('received', 'claimed')"
            " AND decision_due < ? AND (last_reminder_at IS NULL OR last_reminder_at < ?)"
            " ORDER BY received_at, id",
            (_iso(due_before), _iso(reminded_before)),
        ) as cur:
            return [_referral(r, self._keyring) for r in await cur.fetchall()]

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
            return [_referral(r, self._keyring) for r in await cur.fetchall()]

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
            (
                None
                if pending is None
                else self._keyring.encrypt(_dumps(pending), _ctx_pending(referral_id)),
                referral_id,
            ),
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
            return [_referral(r, self._keyring) for r in await cur.fetchall()]

    # -- strategy meetings -----------------------------------------------------------------

    async def referral_by_id(self, referral_id: int) -> Referral | None:
        async with self._db.execute("SELECT * FROM referrals WHERE id = ?", (referral_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _referral(row, self._keyring)

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
        return None if row is None else _meeting(row, self._keyring)

    async def meeting_by_room(self, room_id: str) -> Meeting | None:
        async with self._db.execute("SELECT * FROM meetings WHERE room_id = ?", (room_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _meeting(row, self._keyring)

    async def meetings_of(self, referral_id: int) -> list[Meeting]:
        async with self._db.execute(
            "SELECT * FROM meetings WHERE referral_id = ? ORDER BY id", (referral_id,)
        ) as cur:
            return [_meeting(r, self._keyring) for r in await cur.fetchall()]

    async def open_meetings(self) -> list[Meeting]:
        async with self._db.execute("SELECT * FROM meetings WHERE state = 'open'") as cur:
            return [_meeting(r, self._keyring) for r in await cur.fetchall()]

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
            (
                _iso(self.now),
                None if note is None else self._keyring.encrypt(note, _ctx_close_note(meeting_id)),
                meeting_id,
            ),
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
            (
                meeting_id,
                number,
                kind,
                author,
                agency,
                _iso(self.now),
                self._keyring.encrypt(text, _ctx_item(meeting_id)),
                owner,
                due,
            ),
        )
        async with self._db.execute(
            "SELECT * FROM meeting_items WHERE id = ?", (cur.lastrowid,)
        ) as c2:
            row = await c2.fetchone()
        assert row is not None
        return _item(row, self._keyring)

    async def items(self, meeting_id: int) -> list[MeetingItem]:
        async with self._db.execute(
            "SELECT * FROM meeting_items WHERE meeting_id = ? ORDER BY id", (meeting_id,)
        ) as cur:
            return [_item(r, self._keyring) for r in await cur.fetchall()]

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
            result.append((_meeting(r, self._keyring), _item(item_row, self._keyring)))
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
        """Add an entry to a referral's running record, chained to the entry before it."""
        async with self._db.execute(
            "SELECT hash FROM record_entries WHERE referral_id = ? ORDER BY id DESC LIMIT 1",
            (referral_id,),
        ) as cur:
            last = await cur.fetchone()
        prev_hash = "" if last is None else str(last[0])
        at = _iso(self.now)
        text = _dumps(detail or {})
        await self._db.execute(
            "INSERT INTO record_entries (referral_id, at, actor, kind, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                referral_id,
                at,
                actor,
                kind,
                self._keyring.encrypt(text, _ctx_detail(referral_id)),
                prev_hash,
                self._keyring.chain_hash(prev_hash, referral_id, at, actor, kind, text),
            ),
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
                detail=json.loads(self._keyring.decrypt(r["detail"], _ctx_detail(referral_id))),
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
                self._keyring.encrypt(_dumps(message.to_json()), _ctx_content(txn_id)),
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
                message=OutgoingMessage.from_json(
                    json.loads(self._keyring.decrypt(r["content"], _ctx_content(r["txn_id"])))
                ),
                referral_id=r["referral_id"],
                purpose=r["purpose"],
                attempts=r["attempts"],
                batch=r["batch"],
            )
            for r in rows
        ]

    async def set_batch(self, rows: list[OutboxRow], batch: str) -> None:
        """Fix which unsent rows go out together, under one transaction ID, before sending."""
        for row in rows:
            await self._db.execute(
                "UPDATE outbox SET batch = ? WHERE id = ? AND sent_at IS NULL AND batch IS NULL",
                (batch, row.id),
            )

    async def ack_unsent(self, referral_id: int | None = None) -> bool:
        """Whether the referral's acknowledgement (None: any acknowledgement) is still
        waiting in the outbox."""
        sql = "SELECT 1 FROM outbox WHERE sent_at IS NULL AND purpose = 'ack'"
        args: tuple[int, ...] = ()
        if referral_id is not None:
            sql += " AND referral_id = ?"
            args = (referral_id,)
        async with self._db.execute(sql + " LIMIT 1", args) as cur:
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
                SYSTEM_ACTOR,
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
                row.referral_id, SYSTEM_ACTOR, f"{row.purpose}_refused", {"reason": reason}
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
            "SELECT COUNT(*) FROM referrals WHERE state IN ('received', 'claimed')"
            " AND decision_due < ?",
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

    # -- maintenance: verify, rotate-key, purge (bot/maintenance.py) -------------------

    @asynccontextmanager
    async def append_only_lifted(self) -> AsyncIterator[None]:
        """Lift the running record's append-only triggers for the rest of this transaction.

        Only key rotation, retention purges and sealing old rows use this. The triggers are
        dropped and recreated from their own stored SQL inside the open transaction, so no
        other connection ever sees the table unguarded, and a failure rolls the drop back.
        """
        async with self._db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
            " AND tbl_name = 'record_entries' ORDER BY name"
        ) as cur:
            triggers = [(str(r[0]), str(r[1])) for r in await cur.fetchall()]
        for name, _ in triggers:
            await self._db.execute(f'DROP TRIGGER "{name}"')
        yield
        for _, sql in triggers:
            await self._db.execute(sql)

    async def check_chains(self) -> ChainReport:
        """Check every referral: form readable, child key right, running record unbroken.

        Per referral the first problem found is reported (a broken chain makes every later
        entry of it unverifiable anyway).
        """
        keyring = self._keyring
        report = ChainReport()
        heads: dict[int, _ChainState] = {}
        async with self._db.execute(
            "SELECT id, ref, event_id, declared_type, declared_by, form, child_key"
            " FROM referrals ORDER BY id"
        ) as cur:
            async for r in cur:
                report.referrals += 1
                state = _ChainState(
                    ref=r["ref"],
                    expect={
                        "event_id": r["event_id"],
                        "declared_type": r["declared_type"],
                        "declared_by": r["declared_by"],
                    },
                )
                heads[r["id"]] = state
                try:
                    form = json.loads(keyring.decrypt(r["form"], _ctx_form(r["event_id"])))
                except (InvalidTag, ValueError):
                    state.broken = True
                    report.breaks.append(
                        ChainBreak(
                            r["ref"],
                            None,
                            "its form cannot be decrypted: changed by hand, "
                            "copied from another row, or encrypted with another key",
                        )
                    )
                    continue
                if r["child_key"] != child_key_of(keyring, form):
                    state.broken = True
                    report.breaks.append(
                        ChainBreak(r["ref"], None, "child_key does not match the child's details")
                    )
        async with self._db.execute(
            "SELECT id, referral_id, at, actor, kind, detail, prev_hash, hash"
            " FROM record_entries ORDER BY referral_id, id"
        ) as cur:
            async for e in cur:
                report.entries += 1
                if e["referral_id"] not in heads:  # foreign keys are off in a sqlite3 shell
                    orphan = _ChainState(f"referral id {e['referral_id']}", {}, broken=True)
                    heads[e["referral_id"]] = orphan
                    report.breaks.append(
                        ChainBreak(
                            orphan.ref,
                            e["id"],
                            "it belongs to no referral (the referral was deleted by hand)",
                        )
                    )
                state = heads[e["referral_id"]]
                state.count += 1
                if state.broken:
                    continue
                problem = _entry_problem(keyring, state, e)
                if problem is not None:
                    state.broken = True
                    report.breaks.append(ChainBreak(state.ref, e["id"], problem))
                else:
                    state.last_hash = str(e["hash"])
        for state in heads.values():
            if state.count == 0 and not state.broken:
                report.breaks.append(ChainBreak(state.ref, None, "it has no running record"))
        return report

    async def reencrypt_all(self, old: Keyring, new: Keyring) -> dict[str, int]:
        """Re-encrypt every encrypted field and re-chain every running record with `new`.

        Call inside one transaction, after `check_chains()` with the old key found nothing
        broken: the chains are re-hashed with the new key, so a break left would be hidden.
        """
        counts = {"referrals": 0, "record_entries": 0, "outbox": 0, "inbox": 0}
        async with self._db.execute("SELECT id, event_id, form FROM referrals") as cur:
            referrals = list(await cur.fetchall())
        for r in referrals:
            text = old.decrypt(r["form"], _ctx_form(r["event_id"]))
            await self._db.execute(
                "UPDATE referrals SET form = ?, child_key = ? WHERE id = ?",
                (
                    new.encrypt(text, _ctx_form(r["event_id"])),
                    child_key_of(new, json.loads(text)),
                    r["id"],
                ),
            )
            counts["referrals"] += 1
        async with self.append_only_lifted():
            for r in referrals:
                counts["record_entries"] += await self._rechain(r["id"], old, new)
        async with self._db.execute("SELECT id, txn_id, content FROM outbox") as cur:
            outbox = list(await cur.fetchall())
        for o in outbox:
            text = old.decrypt(o["content"], _ctx_content(o["txn_id"]))
            await self._db.execute(
                "UPDATE outbox SET content = ? WHERE id = ?",
                (new.encrypt(text, _ctx_content(o["txn_id"])), o["id"]),
            )
            counts["outbox"] += 1
        async with self._db.execute(
            "SELECT seq, event_id, payload FROM inbox WHERE payload IS NOT NULL"
        ) as cur:
            inbox = list(await cur.fetchall())
        for i in inbox:
            text = old.decrypt(i["payload"], _ctx_payload(i["event_id"]))
            await self._db.execute(
                "UPDATE inbox SET payload = ? WHERE seq = ?",
                (new.encrypt(text, _ctx_payload(i["event_id"])), i["seq"]),
            )
            counts["inbox"] += 1
        counts["workflow"] = await self._reencrypt_workflow(old, new)
        counts["guided"] = await self._reencrypt_guided(old, new)
        await self.set_kv(KEY_CHECK, new.encrypt(KEY_CHECK_TEXT, KEY_CHECK))
        return counts

    async def _reencrypt_workflow(self, old: Keyring, new: Keyring) -> int:
        """Pending reclassification reasons, meeting notes and close notes."""
        done = 0
        async with self._db.execute(
            "SELECT id, pending_reclassification FROM referrals"
            " WHERE pending_reclassification IS NOT NULL"
        ) as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            text = old.decrypt(r[1], _ctx_pending(r[0]))
            await self._db.execute(
                "UPDATE referrals SET pending_reclassification = ? WHERE id = ?",
                (new.encrypt(text, _ctx_pending(r[0])), r[0]),
            )
            done += 1
        async with self._db.execute("SELECT id, meeting_id, text FROM meeting_items") as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            text = old.decrypt(r[2], _ctx_item(r[1]))
            await self._db.execute(
                "UPDATE meeting_items SET text = ? WHERE id = ?",
                (new.encrypt(text, _ctx_item(r[1])), r[0]),
            )
            done += 1
        async with self._db.execute(
            "SELECT id, close_note FROM meetings WHERE close_note IS NOT NULL"
        ) as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            text = old.decrypt(r[1], _ctx_close_note(r[0]))
            await self._db.execute(
                "UPDATE meetings SET close_note = ? WHERE id = ?",
                (new.encrypt(text, _ctx_close_note(r[0])), r[0]),
            )
            done += 1
        return done

    async def _rechain(self, referral_id: int, old: Keyring | None, new: Keyring) -> int:
        """Re-encrypt and re-hash one running record. `old=None`: details are plain JSON
        (rows written before field encryption). The append-only guard must be lifted."""
        async with self._db.execute(
            "SELECT id, at, actor, kind, detail FROM record_entries"
            " WHERE referral_id = ? ORDER BY id",
            (referral_id,),
        ) as cur:
            entries = list(await cur.fetchall())
        prev = ""
        ctx = _ctx_detail(referral_id)
        for e in entries:
            stored = str(e["detail"])
            if old is None:  # sealing: plain JSON, or already sealed with the current key
                text = new.decrypt(stored, ctx) if Keyring.is_encrypted(stored) else stored
            else:
                text = old.decrypt(stored, ctx)
            digest = new.chain_hash(prev, referral_id, e["at"], e["actor"], e["kind"], text)
            await self._db.execute(
                "UPDATE record_entries SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?",
                (new.encrypt(text, ctx), prev, digest, e["id"]),
            )
            prev = digest
        return len(entries)

    async def seal_legacy_rows(self) -> int:
        """Encrypt and chain rows written before field encryption (migration step 3)."""
        if await self.get_kv(SEAL_FLAG) is None:
            return 0
        sealed = 0
        keyring = self._keyring
        async with self._db.execute("SELECT id, event_id, form FROM referrals") as cur:
            referrals = list(await cur.fetchall())
        for r in referrals:
            form = str(r["form"])
            if Keyring.is_encrypted(form):
                continue
            await self._db.execute(
                "UPDATE referrals SET form = ?, child_key = ? WHERE id = ?",
                (
                    keyring.encrypt(form, _ctx_form(r["event_id"])),
                    child_key_of(keyring, json.loads(form)),
                    r["id"],
                ),
            )
            sealed += 1
        async with self._db.execute(
            "SELECT DISTINCT referral_id FROM record_entries WHERE hash IS NULL"
        ) as cur:
            unchained = [int(r[0]) for r in await cur.fetchall()]
        async with self.append_only_lifted():
            for referral_id in unchained:
                sealed += await self._rechain(referral_id, None, keyring)
        async with self._db.execute("SELECT id, txn_id, content FROM outbox") as cur:
            for o in list(await cur.fetchall()):
                if not Keyring.is_encrypted(str(o["content"])):
                    await self._db.execute(
                        "UPDATE outbox SET content = ? WHERE id = ?",
                        (keyring.encrypt(o["content"], _ctx_content(o["txn_id"])), o["id"]),
                    )
                    sealed += 1
        async with self._db.execute(
            "SELECT seq, event_id, payload FROM inbox WHERE payload IS NOT NULL"
        ) as cur:
            for i in list(await cur.fetchall()):
                if not Keyring.is_encrypted(str(i["payload"])):
                    await self._db.execute(
                        "UPDATE inbox SET payload = ? WHERE seq = ?",
                        (keyring.encrypt(i["payload"], _ctx_payload(i["event_id"])), i["seq"]),
                    )
                    sealed += 1
        await self._db.execute("DELETE FROM kv WHERE key = ?", (SEAL_FLAG,))
        return sealed

    async def purge_plan(self, cutoffs: PurgeCutoffs) -> PurgePlan:
        """What the retention rules would remove now. Nothing is changed."""
        plan = PurgePlan()
        for record_class, before in (
            ("contact", cutoffs.contact_before),
            ("child protection referral", cutoffs.child_protection_before),
        ):
            if before is None:
                continue
            async with self._db.execute(
                "SELECT id, ref, received_at FROM referrals"
                " WHERE current_type = ? AND received_at < ? ORDER BY id",
                (record_class, _iso(before)),
            ) as cur:
                plan.referrals.extend(
                    PurgedReferral(int(r["id"]), r["ref"], record_class, r["received_at"])
                    for r in await cur.fetchall()
                )
        async with self._db.execute(
            "SELECT COUNT(*) FROM inbox WHERE state = 'done' AND handled_at < ?",
            (_iso(cutoffs.inbox_before),),
        ) as cur:
            row = await cur.fetchone()
            plan.inbox_rows = int(row[0]) if row else 0
        going = {p.id for p in plan.referrals}
        async with self._db.execute(
            "SELECT referral_id FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
            (_iso(cutoffs.outbox_before),),
        ) as cur:
            plan.outbox_rows = sum(1 for r in await cur.fetchall() if r[0] not in going)
        return plan

    async def purge(self, cutoffs: PurgeCutoffs, rules: dict[str, str]) -> PurgePlan:
        """Remove what `purge_plan` lists: referrals with their running record and messages,
        handled inbox rows and sent messages. A line per referral goes to purged_referrals."""
        plan = await self.purge_plan(cutoffs)
        async with self.append_only_lifted():
            for p in plan.referrals:
                await self._db.execute("DELETE FROM outbox WHERE referral_id = ?", (p.id,))
                await self._db.execute("DELETE FROM record_entries WHERE referral_id = ?", (p.id,))
                await self._db.execute(
                    "DELETE FROM referral_links WHERE low_id = ? OR high_id = ?", (p.id, p.id)
                )
                for table in ("meeting_items", "meeting_participants", "room_jobs"):
                    await self._db.execute(
                        f"DELETE FROM {table} WHERE meeting_id IN"  # noqa: S608
                        " (SELECT id FROM meetings WHERE referral_id = ?)",
                        (p.id,),
                    )
                await self._db.execute("DELETE FROM meetings WHERE referral_id = ?", (p.id,))
                await self._db.execute("DELETE FROM referrals WHERE id = ?", (p.id,))
                await self._db.execute(
                    "INSERT INTO purged_referrals (ref, record_class, received_at, purged_at,"
                    " rule) VALUES (?, ?, ?, ?, ?)",
                    (p.ref, p.record_class, p.received_at, _iso(self.now), rules[p.record_class]),
                )
        await self._db.execute(
            "DELETE FROM inbox WHERE state = 'done' AND handled_at < ?",
            (_iso(cutoffs.inbox_before),),
        )
        await self._db.execute(
            "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
            (_iso(cutoffs.outbox_before),),
        )
        return plan


@dataclass
class _ChainState:
    ref: str
    expect: dict[str, str]
    last_hash: str = ""
    count: int = 0
    broken: bool = False


def _entry_problem(keyring: Keyring, state: _ChainState, e: aiosqlite.Row) -> str | None:
    if e["prev_hash"] != state.last_hash:
        return "it does not follow the entry before it (an entry was removed, inserted or moved)"
    try:
        text = keyring.decrypt(e["detail"], _ctx_detail(e["referral_id"]))
    except (InvalidTag, ValueError):
        return "its detail cannot be decrypted (changed by hand or copied from elsewhere)"
    expected = keyring.chain_hash(
        state.last_hash, e["referral_id"], e["at"], e["actor"], e["kind"], text
    )
    if e["hash"] != expected:
        return "its hash does not match its content (the entry was changed)"
    if state.count == 1:
        detail = json.loads(text)
        if (
            e["kind"] != "received"
            or not isinstance(detail, dict)
            or any(detail.get(k) != v for k, v in state.expect.items())
        ):
            return (
                "the referral's event, declared type or declared-by differ from "
                "its 'received' entry (the referral row was changed)"
            )
    return None


@dataclass(frozen=True)
class ChainBreak:
    ref: str
    entry_id: int | None  # None: the problem is in the referral row itself
    problem: str


@dataclass
class ChainReport:
    referrals: int = 0
    entries: int = 0
    breaks: list[ChainBreak] = field(default_factory=list)


@dataclass(frozen=True)
class PurgeCutoffs:
    """Anything older than these goes. None: that record class is kept for ever."""

    contact_before: datetime | None
    child_protection_before: datetime | None
    inbox_before: datetime
    outbox_before: datetime


@dataclass(frozen=True)
class PurgedReferral:
    id: int
    ref: str
    record_class: str
    received_at: str


@dataclass
class PurgePlan:
    referrals: list[PurgedReferral] = field(default_factory=list)
    inbox_rows: int = 0
    outbox_rows: int = 0


class Store:
    """Owns the database file. Open with `await Store.open(path, keyring)`.

    The bot (and `rotate-key`) open it `exclusive`: a lock file beside the database keeps
    a second bot, or a key rotation, away while a bot runs.
    """

    def __init__(
        self, db: aiosqlite.Connection, path: Path, keyring: Keyring, lock_fd: int | None
    ) -> None:
        self._db = db
        self.path = path
        self.keyring = keyring
        self._lock = asyncio.Lock()
        self._lock_fd = lock_fd
        self.clock = _now
        self._reader: aiosqlite.Connection | None = None
        self._read_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, keyring: Keyring, *, exclusive: bool = True) -> Store:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = _take_lock(path) if exclusive else None
        try:
            _private_file(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            _release_lock(lock_fd)
            raise
        store = cls(db, path, keyring, lock_fd)
        try:
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute("PRAGMA busy_timeout = 5000")
            # Deleted and overwritten content is zeroed, so purged or re-encrypted values
            # do not linger in free pages.
            await db.execute("PRAGMA secure_delete = ON")
            await store.migrate()
            await store._check_key()
            async with store.transaction() as tx:
                sealed = await tx.seal_legacy_rows()
            if sealed:
                await store.compact()
            store.fix_permissions()
        except BaseException:
            await store.close()
            raise
        return store

    async def _check_key(self) -> None:
        async with self.transaction() as tx:
            check = await tx.get_kv(KEY_CHECK)
            if check is None:
                await tx.set_kv(KEY_CHECK, self.keyring.encrypt(KEY_CHECK_TEXT, KEY_CHECK))
                return
        try:
            self.keyring.decrypt(check, KEY_CHECK)
        except (InvalidTag, ValueError):
            raise WrongDatabaseKey(
                f"storage.database_key does not decrypt {self.path}: it was encrypted with "
                "another key (after rotate-key, point the config at the new key)"
            ) from None

    def fix_permissions(self) -> None:
        """The database and SQLite's -wal and -shm files: owner only."""
        for suffix in ("", "-wal", "-shm"):
            f = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f, 0o600)

    async def compact(self, *, vacuum: bool = True) -> None:
        """Copy the WAL into the file and truncate it (and rebuild the file without free
        pages), so old page images (plain text before sealing, old ciphertext before a key
        rotation, purged rows) do not stay behind in either file. With `secure_delete` on,
        a checkpoint alone already overwrites freed content; VACUUM needs the bot stopped."""
        async with self._lock:
            await self._checkpoint()
            if vacuum:
                await self._db.execute("VACUUM")
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        # The pragma returns a row; reading it to the end finishes the statement.
        async with self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
            await cur.fetchall()

    async def close(self) -> None:
        async with self._read_lock:
            if self._reader is not None:
                await self._reader.close()
                self._reader = None
        async with self._lock:
            await self._db.close()
        _release_lock(self._lock_fd)
        self._lock_fd = None

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
                yield Tx(self._reader, self.clock(), self.keyring)
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
                yield Tx(self._db, self.clock(), self.keyring)
            except BaseException:
                with contextlib.suppress(sqlite3.OperationalError):  # BEGIN itself failed
                    await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Tx]:
        """A read-only view that does not hold up a running bot's writes (WAL snapshot)."""
        async with self._lock:
            await self._db.execute("BEGIN DEFERRED")
            try:
                yield Tx(self._db, self.clock(), self.keyring)
            finally:
                await self._db.execute("ROLLBACK")


def _private_file(path: Path) -> None:
    """Create the database file owner-only before SQLite opens it (no 0644 moment)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def _take_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(
            f"{path} is in use by another referral-bot process; stop the bot first"
        ) from None
    return fd


def _release_lock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


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
