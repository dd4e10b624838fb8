"""Referrals: intake, claims, classification, decisions, follow-ups, and links between
records about the same child."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from schemas.domain import OUTCOME_BY_KEY, Outcome
from schemas.records import Referral
from storage.base import TxBase
from storage.fields import child_key_of, ctx_form, ctx_pending, dumps, iso, parse_dt
from storage.keyring import Keyring
from storage.sql import LOCK_REF_NUMBER, Row


def _referral(row: Row, keyring: Keyring) -> Referral:
    pending = row["pending_reclassification"]
    if pending:
        pending = keyring.decrypt(pending, ctx_pending(row["id"]))
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
        form=json.loads(keyring.decrypt(row["form"], ctx_form(row["event_id"]))),
        claimed_by=row["claimed_by"],
        rag=row["rag"],
        outcome=OUTCOME_BY_KEY[row["outcome"]] if row["outcome"] else None,
        decided_by=row["decided_by"],
        decided_at=parse_dt(row["decided_at"]),
        pending_reclassification=json.loads(pending) if pending else None,
        channel=row["channel"],
        written_followup_due=parse_dt(row["written_followup_due"]),
        written_followup_at=parse_dt(row["written_followup_at"]),
        followup_flagged_at=parse_dt(row["followup_flagged_at"]),
        child_key=row["child_key"],
        agency=row["agency"],
        last_reminder_at=parse_dt(row["last_reminder_at"]),
        reminder_count=row["reminder_count"],
        thread_root=row["thread_root"],
    )


class ReferralStore(TxBase):
    async def next_year_seq(self, year: int) -> int:
        """The next REF number of `year`. Call in the transaction that inserts it: on
        PostgreSQL the lock taken here keeps another connection from reading the same
        number until this transaction ends (then it reads the committed maximum), so
        numbers have neither duplicates nor gaps (a rolled-back insert frees its number)."""
        await self._db.xact_lock(LOCK_REF_NUMBER, year)
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
        thread_root: str | None = None,
    ) -> int:
        """Insert a referral; its child_key is computed here from the form.

        `thread_root`: the thread its acknowledgement and updates go to (None: none)."""
        cur = await self._db.execute(
            "INSERT INTO referrals (ref, year, year_seq, event_id, room_id, sender, received_at,"
            " declared_type, declared_by, current_type, immediate_danger, state, decision_due,"
            " form, rag, channel, written_followup_due, child_key, agency, thread_root)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'received', ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ref,
                year,
                year_seq,
                event_id,
                room_id,
                sender,
                iso(received_at),
                declared_type,
                declared_by or sender,
                declared_type,
                int(immediate_danger),
                iso(decision_due),
                self._keyring.encrypt(dumps(form), ctx_form(event_id)),
                rag,
                channel,
                None if written_followup_due is None else iso(written_followup_due),
                child_key_of(self._keyring, form),
                agency,
                thread_root,
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
            (iso(due_before), iso(reminded_before)),
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
            (low, high, int(linked), by, iso(self.now)),
        )

    async def claim(self, referral_id: int, worker: str) -> bool:
        """Claim an unclaimed open referral. False if someone else got there first."""
        cur = await self._db.execute(
            "UPDATE referrals SET claimed_by = ?, claimed_at = ?, state = 'claimed'"
            " WHERE id = ? AND state = 'received' AND claimed_by IS NULL",
            (worker, iso(self.now), referral_id),
        )
        return cur.rowcount == 1

    async def assign(self, referral_id: int, worker: str) -> None:
        await self._db.execute(
            "UPDATE referrals SET claimed_by = ?, claimed_at = ?, state = 'claimed'"
            " WHERE id = ? AND state IN ('received', 'claimed')",
            (worker, iso(self.now), referral_id),
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
            (rag, iso(due), referral_id),
        )

    async def decide(self, referral_id: int, outcome: Outcome, by: str) -> None:
        """Stored by the outcome's key (the display text may be reworded)."""
        await self._db.execute(
            "UPDATE referrals SET state = 'decided', outcome = ?, decided_by = ?, decided_at = ?"
            " WHERE id = ?",
            (outcome.key, by, iso(self.now), referral_id),
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
                else self._keyring.encrypt(dumps(pending), ctx_pending(referral_id)),
                referral_id,
            ),
        )

    async def mark_reminded(self, referral_id: int) -> None:
        await self._db.execute(
            "UPDATE referrals SET last_reminder_at = ?, reminder_count = reminder_count + 1"
            " WHERE id = ?",
            (iso(self.now), referral_id),
        )

    async def written_followup_received(self, referral_id: int) -> None:
        await self._db.execute(
            "UPDATE referrals SET written_followup_at = ? WHERE id = ?",
            (iso(self.now), referral_id),
        )

    async def flag_followup(self, referral_id: int) -> None:
        await self._db.execute(
            "UPDATE referrals SET followup_flagged_at = ? WHERE id = ?",
            (iso(self.now), referral_id),
        )

    async def followups_overdue(self) -> list[Referral]:
        async with self._db.execute(
            "SELECT * FROM referrals WHERE channel = 'phone' AND written_followup_at IS NULL"
            " AND written_followup_due <= ? AND followup_flagged_at IS NULL",
            (iso(self.now),),
        ) as cur:
            return [_referral(r, self._keyring) for r in await cur.fetchall()]

    async def referral_by_id(self, referral_id: int) -> Referral | None:
        async with self._db.execute("SELECT * FROM referrals WHERE id = ?", (referral_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _referral(row, self._keyring)

    async def referral_count(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM referrals") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
