"""The outbox: messages to send, written in the same transaction as what they report, sent
once under a stable transaction ID; sent and refused messages go into the running record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.messages import OutboxRow, OutgoingMessage
from storage.fields import ctx_content, dumps, iso
from storage.record import SYSTEM_ACTOR, RecordStore


@dataclass(frozen=True)
class FailedSend:
    """An outbox message given up (Tx.mark_send_failed): IDs and the error, no content."""

    id: int
    room_id: str
    purpose: str
    ref: str | None
    error: str
    failed_at: datetime
    attempts: int


class OutboxStore(RecordStore):
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
                self._keyring.encrypt(dumps(message.to_json()), ctx_content(txn_id)),
                int(message.sensitive),
                referral_id,
                purpose,
                iso(self.now),
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
                    json.loads(self._keyring.decrypt(r["content"], ctx_content(r["txn_id"])))
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

    async def mark_sent(self, row: OutboxRow, event_id: str, *, shape: str | None = None) -> None:
        """`shape`: the fallback shape it went out in, if not as stored (bot/pipeline.py)."""
        await self._db.execute(
            "UPDATE outbox SET sent_at = ?, sent_event_id = ?, attempts = attempts + 1,"
            " last_error = NULL WHERE id = ?",
            (iso(self.now), event_id, row.id),
        )
        if row.referral_id is not None:
            detail = {"event_id": event_id, "room_id": row.message.room_id}
            if shape is not None:
                detail["shape"] = shape
            await self.append_record(row.referral_id, SYSTEM_ACTOR, f"{row.purpose}_sent", detail)

    async def set_thread_root(self, referral_id: int, thread_root: str | None) -> None:
        """Send the referral's later updates to this thread (None: as replies)."""
        await self._db.execute(
            "UPDATE referrals SET thread_root = ? WHERE id = ?", (thread_root, referral_id)
        )

    async def mark_send_failed(self, row: OutboxRow, code: str) -> None:
        """Give up on a message the homeserver refuses for good: it leaves the queue (so
        the room's later messages go on), keeps `code` (HTTP status and errcode, no
        content), and the referral's running record notes it."""
        await self._db.execute(
            "UPDATE outbox SET sent_at = ?, failed_at = ?, attempts = attempts + 1,"
            " last_error = ? WHERE id = ?",
            (iso(self.now), iso(self.now), code[:200], row.id),
        )
        if row.referral_id is not None:
            await self.append_record(
                row.referral_id,
                SYSTEM_ACTOR,
                f"{row.purpose}_send_failed",
                {"error": code, "outbox": row.id, "room_id": row.message.room_id},
            )

    async def failed_sends(self) -> list[FailedSend]:
        """Messages given up after the homeserver refused them, newest first."""
        async with self._db.execute(
            "SELECT o.id, o.room_id, o.purpose, r.ref, o.last_error, o.failed_at, o.attempts"
            " FROM outbox o LEFT JOIN referrals r ON r.id = o.referral_id"
            " WHERE o.failed_at IS NOT NULL ORDER BY o.id DESC"
        ) as cur:
            rows = await cur.fetchall()
        return [
            FailedSend(
                id=r["id"],
                room_id=r["room_id"],
                purpose=r["purpose"],
                ref=r["ref"],
                error=r["last_error"] or "",
                failed_at=datetime.fromisoformat(r["failed_at"]),
                attempts=r["attempts"],
            )
            for r in rows
        ]

    async def requeue_failed(self, outbox_id: int) -> FailedSend | None:
        """Put a failed message back in its room's queue (None if there is no such failed
        message). The running record notes it."""
        failed = next((f for f in await self.failed_sends() if f.id == outbox_id), None)
        if failed is None:
            return None
        await self._db.execute(
            "UPDATE outbox SET sent_at = NULL, failed_at = NULL, attempts = 0 WHERE id = ?",
            (outbox_id,),
        )
        async with self._db.execute(
            "SELECT referral_id FROM outbox WHERE id = ?", (outbox_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is not None and row[0] is not None:
            await self.append_record(
                int(row[0]),
                SYSTEM_ACTOR,
                f"{failed.purpose}_send_requeued",
                {"outbox": outbox_id, "previous_error": failed.error},
            )
        return failed

    async def mark_refused(self, row: OutboxRow, reason: str) -> None:
        """Give up on a message that must not be sent; the running record says so."""
        await self._db.execute(
            "UPDATE outbox SET sent_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?",
            (iso(self.now), f"refused: {reason}"[:500], row.id),
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
