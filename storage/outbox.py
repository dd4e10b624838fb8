"""The outbox: messages to send, written in the same transaction as what they report, sent
once under a stable transaction ID; sent and refused messages go into the running record."""

from __future__ import annotations

import json
from typing import Any

from schemas.messages import OutboxRow, OutgoingMessage
from storage.fields import ctx_content, dumps, iso
from storage.record import SYSTEM_ACTOR, RecordStore


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

    async def mark_sent(self, row: OutboxRow, event_id: str) -> None:
        await self._db.execute(
            "UPDATE outbox SET sent_at = ?, sent_event_id = ?, attempts = attempts + 1,"
            " last_error = NULL WHERE id = ?",
            (iso(self.now), event_id, row.id),
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
