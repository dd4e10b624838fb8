"""Strategy meetings: the meeting, its participants, its notes and actions, and the room
jobs (create the room, invite, make moderator) that the job worker carries out."""

from __future__ import annotations

from datetime import datetime

from schemas.records import Meeting, MeetingItem, Participant, RoomJob
from storage.base import TxBase
from storage.fields import ctx_close_note, ctx_item, iso, parse_dt
from storage.keyring import Keyring
from storage.sql import LOCK_MEETING_ACTIONS, Row


def _meeting(r: Row, keyring: Keyring) -> Meeting:
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
        closed_at=parse_dt(r["closed_at"]),
        close_note=(
            keyring.decrypt(r["close_note"], ctx_close_note(r["id"])) if r["close_note"] else None
        ),
    )


def _item(r: Row, keyring: Keyring) -> MeetingItem:
    return MeetingItem(
        id=r["id"],
        number=r["number"],
        kind=r["kind"],
        author=r["author"],
        agency=r["agency"],
        at=datetime.fromisoformat(r["at"]),
        text=keyring.decrypt(r["text"], ctx_item(r["meeting_id"])),
        owner=r["owner"],
        due=r["due"],
        done_at=parse_dt(r["done_at"]),
        done_by=r["done_by"],
        reminded_at=parse_dt(r["reminded_at"]),
        overdue_told_at=parse_dt(r["overdue_told_at"]),
    )


class MeetingStore(TxBase):
    async def insert_meeting(
        self, *, referral_id: int, event_id: str, chair: str, called_by: str, scheduled: str | None
    ) -> int:
        cur = await self._db.execute(
            "INSERT INTO meetings (referral_id, event_id, chair, called_by, scheduled, state,"
            " created_at) VALUES (?, ?, ?, ?, ?, 'creating', ?)",
            (referral_id, event_id, chair, called_by, scheduled, iso(self.now)),
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
                iso(self.now),
                None if note is None else self._keyring.encrypt(note, ctx_close_note(meeting_id)),
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
            await self._db.xact_lock(LOCK_MEETING_ACTIONS, meeting_id)
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
                iso(self.now),
                self._keyring.encrypt(text, ctx_item(meeting_id)),
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
            (iso(self.now), by, meeting_id, number),
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
            (iso(self.now), item_id),
        )

    async def add_room_job(self, kind: str, meeting_id: int, user_id: str | None = None) -> None:
        await self._db.execute(
            "INSERT INTO room_jobs (kind, meeting_id, user_id, created_at) VALUES (?, ?, ?, ?)",
            (kind, meeting_id, user_id, iso(self.now)),
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
            (iso(self.now), job_id),
        )

    async def room_job_failed(self, job_id: int, error: str) -> None:
        await self._db.execute(
            "UPDATE room_jobs SET attempts = attempts + 1, last_error = ? WHERE id = ?",
            (error[:500], job_id),
        )
