"""Retention: what the retention rules remove, and removing it (`purge`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from storage.fields import iso
from storage.record import RecordStore


@dataclass(frozen=True)
class PurgeCutoffs:
    """Anything older than these goes. None: that record class is kept for ever."""

    contact_before: datetime | None
    child_protection_before: datetime | None
    inbox_before: datetime
    outbox_before: datetime
    # Referrer details kept for guided referrals, last used before this.
    saved_referrers_before: datetime | None = None


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
    # Files attached to the referrals that go (they go with them).
    attachments: int = 0
    saved_referrers: int = 0


class RetentionStore(RecordStore):
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
                (record_class, iso(before)),
            ) as cur:
                plan.referrals.extend(
                    PurgedReferral(int(r["id"]), r["ref"], record_class, r["received_at"])
                    for r in await cur.fetchall()
                )
        async with self._db.execute(
            "SELECT COUNT(*) FROM inbox WHERE state = 'done' AND handled_at < ?",
            (iso(cutoffs.inbox_before),),
        ) as cur:
            row = await cur.fetchone()
            plan.inbox_rows = int(row[0]) if row else 0
        going = {p.id for p in plan.referrals}
        for referral_id in going:
            async with self._db.execute(
                "SELECT COUNT(*) FROM attachments WHERE referral_id = ?", (referral_id,)
            ) as cur:
                row = await cur.fetchone()
                plan.attachments += int(row[0]) if row else 0
        async with self._db.execute(
            "SELECT referral_id FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
            (iso(cutoffs.outbox_before),),
        ) as cur:
            plan.outbox_rows = sum(1 for r in await cur.fetchall() if r[0] not in going)
        if cutoffs.saved_referrers_before is not None:
            async with self._db.execute(
                "SELECT COUNT(*) FROM saved_referrers WHERE saved_at < ?",
                (iso(cutoffs.saved_referrers_before),),
            ) as cur:
                row = await cur.fetchone()
                plan.saved_referrers = int(row[0]) if row else 0
        return plan

    async def purge(self, cutoffs: PurgeCutoffs, rules: dict[str, str]) -> PurgePlan:
        """Remove what `purge_plan` lists: referrals with their running record and messages,
        handled inbox rows and sent messages. A line per referral goes to purged_referrals."""
        plan = await self.purge_plan(cutoffs)
        async with self.append_only_lifted():
            for p in plan.referrals:
                await self._db.execute("DELETE FROM outbox WHERE referral_id = ?", (p.id,))
                # Its files (bytes and wrapped keys; secure_delete overwrites the pages),
                # the jobs that fetched them and any open !attach window.
                for table in ("attachments", "attachment_jobs", "attach_windows"):
                    await self._db.execute(
                        f"DELETE FROM {table} WHERE referral_id = ?",  # noqa: S608
                        (p.id,),
                    )
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
                    (p.ref, p.record_class, p.received_at, iso(self.now), rules[p.record_class]),
                )
        await self._db.execute(
            "DELETE FROM inbox WHERE state = 'done' AND handled_at < ?",
            (iso(cutoffs.inbox_before),),
        )
        await self._db.execute(
            "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
            (iso(cutoffs.outbox_before),),
        )
        if cutoffs.saved_referrers_before is not None:
            await self._db.execute(
                "DELETE FROM saved_referrers WHERE saved_at < ?",
                (iso(cutoffs.saved_referrers_before),),
            )
        return plan
