"""The front door's figures (issue 14, part 3): counts over indexed columns only.

Every statement here reads columns kept in clear for querying (times, classifications,
outcome, the agency as typed, the keyed child hash) through the indexes of migration 12,
so a report never reads or decrypts a form, and never reads the table rows themselves.
The statements are common SQL (sums of CASE, not of comparisons); the time arithmetic is
the connection's (`hours_between`, `months_before`). `INDEXED BY` is SQLite's: it makes
SQLite use the report index or fail; on PostgreSQL it is dropped (storage/sql.py) and the
planner chooses.
"""

from __future__ import annotations

from datetime import date, datetime

from schemas.domain import OUTCOME_BY_KEY
from schemas.reports import ReportFigures, WeekCount
from storage.base import TxBase
from storage.fields import iso

CP = "child protection referral"
CONTACT = "contact"


class ReportStore(TxBase):
    async def report_figures(
        self,
        start: date,
        end: date,
        lo: datetime,
        hi: datetime,
        weeks: list[tuple[date, datetime, datetime]],
    ) -> ReportFigures:
        """Figures for referrals received (and decisions made) from `lo` up to `hi`
        (UTC instants of the London days `start` to `end`); `weeks`: (Monday, from, to)
        of each week cut to the period. Open and overdue counts are as of `self.now`.

        `agencies` are as stored (what referrers typed): the caller maps them to the
        configured agencies before anyone sees them."""
        lo_s, hi_s = iso(lo), iso(hi)
        week_counts = []
        for monday, w_lo, w_hi in weeks:
            by_type = await self._count_by(
                "SELECT current_type, COUNT(*) FROM referrals INDEXED BY referrals_report_received"
                " WHERE received_at >= ? AND received_at < ? GROUP BY current_type",
                (iso(w_lo), iso(w_hi)),
            )
            week_counts.append(WeekCount(monday, by_type.get(CP, 0), by_type.get(CONTACT, 0)))
        by_type = await self._count_by(
            "SELECT current_type, COUNT(*) FROM referrals INDEXED BY referrals_report_received"
            " WHERE received_at >= ? AND received_at < ? GROUP BY current_type",
            (lo_s, hi_s),
        )
        async with self._db.execute(
            "SELECT COALESCE(SUM(CASE WHEN declared_type = ? AND current_type = ? THEN 1 END), 0),"
            " COALESCE(SUM(CASE WHEN declared_type = ? AND current_type = ? THEN 1 END), 0)"
            " FROM referrals INDEXED BY referrals_report_received"
            " WHERE received_at >= ? AND received_at < ?",
            (CP, CONTACT, CONTACT, CP, lo_s, hi_s),
        ) as cur:
            row = await cur.fetchone()
        downgraded, upgraded = (int(row[0]), int(row[1])) if row else (0, 0)
        agencies = await self._count_by(
            "SELECT COALESCE(agency, ''), COUNT(*) FROM referrals"
            " INDEXED BY referrals_report_received"
            " WHERE received_at >= ? AND received_at < ? GROUP BY agency",
            (lo_s, hi_s),
        )

        # Decisions made in the period.
        async with self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN decided_at <= decision_due THEN 1 END), 0)"
            " FROM referrals INDEXED BY referrals_report_decided"
            " WHERE decided_at >= ? AND decided_at < ?",
            (lo_s, hi_s),
        ) as cur:
            row = await cur.fetchone()
        decided, in_time = (int(row[0]), int(row[1])) if row else (0, 0)
        median: float | None = None
        if decided:
            # The middle one (odd count) or the mean of the middle two (even count).
            async with self._db.execute(
                f"SELECT {self._db.hours_between('received_at', 'decided_at')} AS hours"  # noqa: S608
                " FROM referrals INDEXED BY referrals_report_decided"
                " WHERE decided_at >= ? AND decided_at < ? ORDER BY hours LIMIT ? OFFSET ?",
                (lo_s, hi_s, 2 - decided % 2, (decided - 1) // 2),
            ) as cur:
                middle = [float(r[0]) for r in await cur.fetchall()]
            median = sum(middle) / len(middle)
        by_key = await self._count_by(
            "SELECT COALESCE(outcome, 'not recorded'), COUNT(*)"
            " FROM referrals INDEXED BY referrals_report_decided"
            " WHERE decided_at >= ? AND decided_at < ? GROUP BY outcome",
            (lo_s, hi_s),
        )
        # Stored by key (migration 13); shown as the outcome's words.
        outcomes = {
            (OUTCOME_BY_KEY[k].value if k in OUTCOME_BY_KEY else k): n for k, n in by_key.items()
        }

        # Open and overdue now.
        async with self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN decision_due < ? THEN 1 END), 0)"
            " FROM referrals INDEXED BY referrals_open_due WHERE state IN ('received', 'claimed')",
            (iso(self.now),),
        ) as cur:
            row = await cur.fetchone()
        open_now, overdue_now = (int(row[0]), int(row[1])) if row else (0, 0)

        # Referred again: an earlier record about the same child in the 12 months before.
        async with self._db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT r.child_key)"  # noqa: S608 (fixed SQL only)
            " FROM referrals r INDEXED BY referrals_report_received"
            " WHERE r.received_at >= ? AND r.received_at < ? AND r.child_key IS NOT NULL"
            " AND EXISTS (SELECT 1 FROM referrals p INDEXED BY referrals_report_child"
            "  WHERE p.child_key = r.child_key AND p.received_at < r.received_at"
            f"  AND p.received_at >= {self._db.months_before('r.received_at', 12)})",
            (lo_s, hi_s),
        ) as cur:
            row = await cur.fetchone()
        repeats, children = (int(row[0]), int(row[1])) if row else (0, 0)

        return ReportFigures(
            start=start,
            end=end,
            generated_at=self.now,
            weeks=tuple(week_counts),
            child_protection=by_type.get(CP, 0),
            contacts=by_type.get(CONTACT, 0),
            decided=decided,
            decided_in_time=in_time,
            median_hours_to_decision=median,
            outcomes=tuple(sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0]))),
            agencies=tuple(sorted(agencies.items(), key=lambda kv: (-kv[1], kv[0]))),
            downgraded=downgraded,
            upgraded=upgraded,
            open_now=open_now,
            overdue_now=overdue_now,
            repeat_referrals=repeats,
            repeat_children=children,
        )

    async def _count_by(self, sql: str, args: tuple[object, ...]) -> dict[str, int]:
        async with self._db.execute(sql, args) as cur:
            return {str(r[0]): int(r[1]) for r in await cur.fetchall()}
