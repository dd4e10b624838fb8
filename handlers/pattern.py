"""Seeing the pattern: repeated contacts about one child, from one or several agencies.

The review found referrals from different sources that never added up to a step-up,
partly because they were counted per year. Counts here are cumulative, with the recent
window shown alongside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.config import PatternConfig
from schemas.records import Referral


@dataclass(frozen=True)
class Pattern:
    total: int
    in_window: int
    agencies_total: int
    agencies_in_window: int
    months: int  # span of the window's contacts, in months (at least 1)
    window_months: int
    first: datetime
    triggered: bool

    def headline(self) -> str:
        return (
            f"{self.in_window} contacts/referrals from {self.agencies_in_window} "
            f"{'agency' if self.agencies_in_window == 1 else 'agencies'} in {self.months} "
            f"{'month' if self.months == 1 else 'months'} — consider a strategy discussion"
        )

    def cumulative(self) -> str:
        return (
            f"{self.total} in all from {self.agencies_total} "
            f"{'agency' if self.agencies_total == 1 else 'agencies'} since "
            f"{self.first:%d/%m/%Y} (counted cumulatively, not per year)"
        )


def agency_of(referral: Referral) -> str:
    agency = referral.agency or str(referral.form.get("referrer", {}).get("agency", ""))
    return " ".join(agency.casefold().split())


def find_pattern(group: list[Referral], now: datetime, cfg: PatternConfig) -> Pattern | None:
    """The pattern across every record about one child, or None for a first contact."""
    if len(group) < 2:
        return None
    since = now - timedelta(days=round(cfg.window_months * 30.44))
    recent = [r for r in group if r.received_at >= since]
    agencies_all = {agency_of(r) for r in group}
    agencies_recent = {agency_of(r) for r in recent}
    span_days = (now - min(r.received_at for r in recent)).days if recent else 0
    months = max(1, math.ceil(span_days / 30.44))
    triggered = len(recent) >= cfg.contacts or len(agencies_all) >= cfg.agencies
    return Pattern(
        total=len(group),
        in_window=len(recent),
        agencies_total=len(agencies_all),
        agencies_in_window=len(agencies_recent),
        months=months,
        window_months=cfg.window_months,
        first=min(r.received_at for r in group),
        triggered=triggered,
    )
