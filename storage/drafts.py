"""Storage of guided referrals: drafts and the referrer details kept for next time.

A mixin of `storage.tx.Tx` (same connection, same transaction, same keyring). Both tables
hold personal data, so the JSON is encrypted with the keyring and bound to its row: a
draft to its room, user and the event that started it; saved details to their user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.base import TxBase
from storage.fields import dumps, iso
from storage.keyring import Keyring
from storage.sql import Row


def _ctx_draft(room_id: str, user_id: str, started_by: str) -> str:
    return f"drafts.state:{room_id}\x00{user_id}\x00{started_by}"


def _ctx_saved(user_id: str) -> str:
    return f"saved_referrers.details:{user_id}"


@dataclass(frozen=True)
class Draft:
    id: int
    room_id: str
    user_id: str
    started_by: str  # the event that started it: binds the ciphertext to this draft
    state: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    remind_at: datetime | None


class DraftStore(TxBase):
    """Tx methods for drafts and saved referrer details."""

    def _draft(self, r: Row) -> Draft:
        ctx = _ctx_draft(r["room_id"], r["user_id"], r["started_by"])
        return Draft(
            id=r["id"],
            room_id=r["room_id"],
            user_id=r["user_id"],
            started_by=r["started_by"],
            state=json.loads(self._keyring.decrypt(r["state"], ctx)),
            created_at=datetime.fromisoformat(r["created_at"]),
            updated_at=datetime.fromisoformat(r["updated_at"]),
            expires_at=datetime.fromisoformat(r["expires_at"]),
            remind_at=None if r["remind_at"] is None else datetime.fromisoformat(r["remind_at"]),
        )

    async def draft_of(self, room_id: str, user_id: str) -> Draft | None:
        async with self._db.execute(
            "SELECT * FROM drafts WHERE room_id = ? AND user_id = ?", (room_id, user_id)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else self._draft(row)

    async def put_draft(
        self,
        *,
        room_id: str,
        user_id: str,
        started_by: str,
        state: dict[str, Any],
        expires_at: datetime,
        remind_at: datetime | None,
    ) -> None:
        """Create or replace the user's draft in this room (one per user per room)."""
        sealed = self._keyring.encrypt(dumps(state), _ctx_draft(room_id, user_id, started_by))
        await self._db.execute(
            "INSERT INTO drafts (room_id, user_id, started_by, state, created_at, updated_at,"
            " expires_at, remind_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (room_id, user_id) DO UPDATE SET started_by = excluded.started_by,"
            " state = excluded.state, updated_at = excluded.updated_at,"
            " expires_at = excluded.expires_at, remind_at = excluded.remind_at,"
            " created_at = CASE WHEN drafts.started_by = excluded.started_by"
            " THEN drafts.created_at ELSE excluded.created_at END",
            (
                room_id,
                user_id,
                started_by,
                sealed,
                iso(self.now),
                iso(self.now),
                iso(expires_at),
                None if remind_at is None else iso(remind_at),
            ),
        )

    async def delete_draft(self, draft_id: int) -> None:
        await self._db.execute("DELETE FROM drafts WHERE id = ?", (draft_id,))

    async def drafts_expired(self) -> list[Draft]:
        async with self._db.execute(
            "SELECT * FROM drafts WHERE expires_at <= ? ORDER BY expires_at", (iso(self.now),)
        ) as cur:
            return [self._draft(r) for r in await cur.fetchall()]

    async def drafts_to_remind(self) -> list[Draft]:
        async with self._db.execute(
            "SELECT * FROM drafts WHERE remind_at IS NOT NULL AND remind_at <= ?"
            " AND expires_at > ? ORDER BY remind_at",
            (iso(self.now), iso(self.now)),
        ) as cur:
            return [self._draft(r) for r in await cur.fetchall()]

    async def draft_reminded(self, draft_id: int) -> None:
        await self._db.execute("UPDATE drafts SET remind_at = NULL WHERE id = ?", (draft_id,))

    async def draft_count(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM drafts") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- what a draft's messages became ---------------------------------------------

    async def sent_event_of(self, txn_id: str) -> str | None:
        """The event ID a queued message got when it was sent (None: not sent yet)."""
        async with self._db.execute(
            "SELECT sent_event_id FROM outbox WHERE txn_id = ?", (txn_id,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else str(row[0])

    async def forget_sent(self, txn_ids: list[str]) -> int:
        """Delete the stored copies of messages already sent (a draft's questions and
        review carry its answers): cancelling or expiring a draft leaves nothing of it."""
        removed = 0
        for txn_id in txn_ids:
            cur = await self._db.execute(
                "DELETE FROM outbox WHERE txn_id = ? AND sent_at IS NOT NULL"
                " AND referral_id IS NULL",
                (txn_id,),
            )
            removed += cur.rowcount
        return removed

    # -- the referrer's own details, for next time -----------------------------------

    async def saved_referrer(self, user_id: str) -> dict[str, str] | None:
        async with self._db.execute(
            "SELECT details FROM saved_referrers WHERE user_id = ?", (user_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        data = json.loads(self._keyring.decrypt(row[0], _ctx_saved(user_id)))
        return {str(k): str(v) for k, v in data.items()}

    async def save_referrer(self, user_id: str, details: dict[str, str]) -> None:
        await self._db.execute(
            "INSERT INTO saved_referrers (user_id, details, saved_at) VALUES (?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET details = excluded.details,"
            " saved_at = excluded.saved_at",
            (
                user_id,
                self._keyring.encrypt(dumps(details), _ctx_saved(user_id)),
                iso(self.now),
            ),
        )

    async def touch_referrer(self, user_id: str) -> None:
        """The kept details were used again unchanged: their retention starts afresh."""
        await self._db.execute(
            "UPDATE saved_referrers SET saved_at = ? WHERE user_id = ?", (iso(self.now), user_id)
        )

    async def forget_referrer(self, user_id: str) -> bool:
        cur = await self._db.execute("DELETE FROM saved_referrers WHERE user_id = ?", (user_id,))
        return cur.rowcount > 0

    async def _reencrypt_guided(self, old: Keyring, new: Keyring) -> int:
        """Drafts and saved details under a new database key (`rotate-key`)."""
        done = 0
        async with self._db.execute(
            "SELECT id, room_id, user_id, started_by, state FROM drafts"
        ) as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            ctx = _ctx_draft(r["room_id"], r["user_id"], r["started_by"])
            await self._db.execute(
                "UPDATE drafts SET state = ? WHERE id = ?",
                (new.encrypt(old.decrypt(r["state"], ctx), ctx), r["id"]),
            )
            done += 1
        async with self._db.execute("SELECT user_id, details FROM saved_referrers") as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            ctx = _ctx_saved(r["user_id"])
            await self._db.execute(
                "UPDATE saved_referrers SET details = ? WHERE user_id = ?",
                (new.encrypt(old.decrypt(r["details"], ctx), ctx), r["user_id"]),
            )
            done += 1
        return done
