"""The running record: append-only entries per referral, each hash-chained to the one
before it. Only integrity (re-key, seal) and retention (purge) may lift the guard."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from schemas.records import RecordEntry
from storage.base import TxBase
from storage.fields import ctx_detail, dumps, iso
from storage.sql import LOCK_RECORD_CHAIN

# The actor of entries the bot writes itself (a message sent or refused).
SYSTEM_ACTOR = "referral-bot"


class RecordStore(TxBase):
    async def append_record(
        self, referral_id: int, actor: str, kind: str, detail: dict[str, Any] | None = None
    ) -> None:
        """Add an entry to a referral's running record, chained to the entry before it
        (on PostgreSQL under a lock on the referral's chain, so two connections never
        chain to the same entry)."""
        await self._db.xact_lock(LOCK_RECORD_CHAIN, referral_id)
        async with self._db.execute(
            "SELECT hash FROM record_entries WHERE referral_id = ? ORDER BY id DESC LIMIT 1",
            (referral_id,),
        ) as cur:
            last = await cur.fetchone()
        prev_hash = "" if last is None else str(last[0])
        at = iso(self.now)
        text = dumps(detail or {})
        await self._db.execute(
            "INSERT INTO record_entries (referral_id, at, actor, kind, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                referral_id,
                at,
                actor,
                kind,
                self._keyring.encrypt(text, ctx_detail(referral_id)),
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
                detail=json.loads(self._keyring.decrypt(r["detail"], ctx_detail(referral_id))),
            )
            for r in rows
        ]

    @asynccontextmanager
    async def append_only_lifted(self) -> AsyncIterator[None]:
        """Lift the running record's append-only triggers for the rest of this transaction.

        Only key rotation, retention purges and sealing old rows use this. The triggers are
        dropped and recreated (SQLite) or disabled and enabled (PostgreSQL) inside the open
        transaction, so no other connection ever sees the table unguarded, and a failure
        rolls the change back.
        """
        await self._db.lift_append_only("record_entries")
        yield
        await self._db.restore_append_only("record_entries")
