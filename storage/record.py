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

# The actor of entries the bot writes itself (a message sent or refused).
SYSTEM_ACTOR = "referral-bot"


class RecordStore(TxBase):
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
