"""The inbox: every timeline event the bot must act on, stored before the sync token moves
on, handed to a room's worker in order, and its text forgotten once handled."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from schemas.messages import InboxItem, Incoming, UndecryptedItem
from storage.base import TxBase
from storage.fields import ctx_payload, dumps, iso, parse_dt


class InboxStore(TxBase):
    async def add_inbox(self, items: Iterable[InboxItem]) -> set[str]:
        """Store events not seen before; return the rooms that got new pending work (their
        workers are also started once the transaction commits)."""
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
                    self._keyring.encrypt(dumps(item.payload), ctx_payload(item.event_id)),
                    iso(self.now),
                ),
            )
            if cur.rowcount and item.state == "pending":
                rooms.add(item.room_id)
        self.inbox_rooms |= rooms
        return rooms

    async def known_event(self, event_id: str) -> bool:
        async with self._db.execute("SELECT 1 FROM inbox WHERE event_id = ?", (event_id,)) as cur:
            return await cur.fetchone() is not None

    async def next_pending(self, room_id: str) -> Incoming | None:
        async with self._db.execute(
            "SELECT seq, event_id, room_id, sender, origin_ts, room_encrypted, payload,"
            " decrypted_at FROM inbox WHERE state = 'pending' AND room_id = ?"
            " ORDER BY seq LIMIT 1",
            (room_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        payload = json.loads(self._keyring.decrypt(row["payload"], ctx_payload(row["event_id"])))
        overtaken_by = 0
        if row["decrypted_at"] is not None:
            async with self._db.execute(
                "SELECT COUNT(*) FROM inbox WHERE state = 'done' AND room_id = ? AND seq > ?",
                (room_id, row["seq"]),
            ) as cur:
                counted = await cur.fetchone()
            overtaken_by = int(counted[0]) if counted else 0
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
            thread_root=payload.get("thread_root"),
            related=bool(payload.get("related", False)),
            decrypted_at=parse_dt(row["decrypted_at"]),
            overtaken_by=overtaken_by,
            media=payload.get("media"),
            media_clear=bool(payload.get("media_clear", False)),
            media_bad=bool(payload.get("media_bad", False)),
            in_reply_to=payload.get("in_reply_to"),
            poll_of=payload.get("poll_of"),
            poll_answers=tuple(str(a) for a in payload.get("poll_answers", ())),
        )

    async def waiting_for_key_until(self, room_id: str, seq: int, wait_s: float) -> datetime | None:
        """Until when the room's message `seq` must wait for an earlier message of the same
        room whose room key has not arrived (stored less than `wait_s` ago); None: go on."""
        async with self._db.execute(
            "SELECT MAX(received_at) FROM inbox WHERE state = 'undecrypted' AND room_id = ?"
            " AND seq < ?",
            (room_id, seq),
        ) as cur:
            row = await cur.fetchone()
        if row is None or row[0] is None:
            return None
        until = datetime.fromisoformat(row[0]) + timedelta(seconds=wait_s)
        return until if until > self.now else None

    async def rooms_with_pending(self) -> list[str]:
        async with self._db.execute(
            "SELECT DISTINCT room_id FROM inbox WHERE state = 'pending'"
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def mark_handled(self, seq: int) -> None:
        """Mark an inbox event done and forget its text."""
        await self._db.execute(
            "UPDATE inbox SET state = 'done', payload = NULL, handled_at = ? WHERE seq = ?",
            (iso(self.now), seq),
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
                json.loads(self._keyring.decrypt(r["payload"], ctx_payload(r["event_id"]))),
            )
            for r in rows
        ]

    async def set_decrypted(self, seq: int, payload: dict[str, Any]) -> None:
        async with self._db.execute(
            "SELECT event_id, room_id FROM inbox WHERE seq = ?", (seq,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return
        cur = await self._db.execute(
            "UPDATE inbox SET state = 'pending', payload = ?, decrypted_at = ?"
            " WHERE seq = ? AND state = 'undecrypted'",
            (
                self._keyring.encrypt(dumps(payload), ctx_payload(row["event_id"])),
                iso(self.now),
                seq,
            ),
        )
        if cur.rowcount:
            self.inbox_rooms.add(row["room_id"])
