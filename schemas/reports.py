"""The front door's figures for a period (issue 14, part 3): counts and times only.

No names, no free text and no Matrix IDs: every value here is a count, a share, a time
or a label from a fixed list (classification, outcome, configured agency).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class WeekCount:
    """Referrals received in one week (Monday to Sunday, Europe/London), cut to the period."""

    week_start: date
    child_protection: int
    contacts: int


@dataclass(frozen=True)
class ReportFigures:
    start: date  # first day of the period (Europe/London), inclusive
    end: date  # last day, inclusive
    generated_at: datetime
    weeks: tuple[WeekCount, ...]
    # Received in the period, by the classification recorded now.
    child_protection: int
    contacts: int
    # Decided in the period: how many, how many by their decision deadline, and the
    # median hours from receipt to decision (None when none was decided).
    decided: int
    decided_in_time: int
    median_hours_to_decision: float | None
    outcomes: tuple[tuple[str, int], ...]
    # Received in the period, by referring agency: (label, count). The stored agency is
    # what the referrer typed; it is only ever shown as a configured agency, or "other".
    agencies: tuple[tuple[str, int], ...]
    # Received in the period and reclassified since: declared a child protection referral,
    # now a contact (downgraded); declared a contact, now a child protection referral.
    downgraded: int
    upgraded: int
    # At the time of the report.
    open_now: int
    overdue_now: int
    # Received in the period about a child with an earlier record in the 12 months before
    # (matched by the keyed child hash): how many such referrals, and how many children.
    repeat_referrals: int
    repeat_children: int

    @property
    def received(self) -> int:
        return self.child_protection + self.contacts

    @property
    def in_time_percent(self) -> float | None:
        return None if self.decided == 0 else 100.0 * self.decided_in_time / self.decided
