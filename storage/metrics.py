"""Numbers for /metrics and the acknowledgement latency: no personal data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from storage.fields import iso
from storage.outbox import OutboxStore


@dataclass(frozen=True)
class OpsCounts:
    """Counts for /metrics: no personal data, only numbers by type and state."""

    referrals: dict[tuple[str, str], int]  # (current_type, state) -> count
    decisions_overdue: int
    undecrypted: int
    outbox_depth: int
    outbox_failed: int = 0


class MetricsStore(OutboxStore):
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
            (iso(self.now),),
        ) as cur:
            overdue = await cur.fetchone()
        async with self._db.execute(
            "SELECT COUNT(*) FROM inbox WHERE state = 'undecrypted'"
        ) as cur:
            undecrypted = await cur.fetchone()
        async with self._db.execute(
            "SELECT COUNT(*) FROM outbox WHERE failed_at IS NOT NULL"
        ) as cur:
            failed = await cur.fetchone()
        return OpsCounts(
            referrals=referrals,
            decisions_overdue=int(overdue[0]) if overdue else 0,
            undecrypted=int(undecrypted[0]) if undecrypted else 0,
            outbox_depth=await self.outbox_depth(),
            outbox_failed=int(failed[0]) if failed else 0,
        )
