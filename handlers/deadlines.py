"""Decision deadlines from the RAG rating, and the reminders that chase them.

Timers are not kept in memory: every check reads the open referrals from the database,
so a restart loses no deadline.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from handlers.notify import LABEL, format_time, team_message
from handlers.ports import txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from handlers.working_days import add_working_days, add_working_hours, describe_deadline
from schemas.config import DeadlinesConfig
from schemas.domain import Kind, Purpose
from schemas.records import Referral
from schemas.referral import ReferralType
from storage.tx import Tx

RAG_RATINGS = ("red", "amber", "green")


def deadline_for(
    rag: str, referral_type: str, received: datetime, cfg: DeadlinesConfig
) -> datetime:
    if rag == "red":
        return add_working_hours(received, cfg.red_working_hours)
    if rag == "amber":
        return add_working_days(received, cfg.amber_working_days)
    days = (
        cfg.green_child_protection_working_days
        if referral_type == ReferralType.CHILD_PROTECTION
        else cfg.green_contact_working_days
    )
    return add_working_days(received, days)


def time_left(due: datetime, now: datetime) -> str:
    seconds = int((due - now).total_seconds())
    text = _duration(abs(seconds))
    return f"{text} left" if seconds >= 0 else f"OVERDUE by {text}"


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


DIGEST_LINES = 40


def _digest_lines(referrals: list[Referral], now: datetime) -> list[str]:
    lines = [
        f"{r.ref} · {LABEL[r.current_type]} · "
        f"{('claimed by ' + r.claimed_by) if r.claimed_by else 'NOT CLAIMED'} · "
        f"due {describe_deadline(r.decision_due)} · {time_left(r.decision_due, now)}"
        for r in referrals[:DIGEST_LINES]
    ]
    if len(referrals) > DIGEST_LINES:
        lines.append(f"… and {len(referrals) - DIGEST_LINES} more: !queue lists them all")
    return lines


def age_of(referral: Referral, now: datetime) -> str:
    return _duration(max(0, int((now - referral.received_at).total_seconds())))


# The database narrows with strict "<"; the exact tests below decide, so the query takes
# a millisecond more than it needs rather than one less.
_TICK = timedelta(milliseconds=1)


async def check_deadlines(tx: Tx, settings: Settings) -> int:
    """Announce open referrals near or past their deadline, and overdue written follow-ups.

    Returns how many announcements were queued.
    """
    overdue, near = await _due_now(tx, settings.deadlines)
    queued = await _remind(tx, settings, overdue, near)
    return queued + await _chase_followups(tx, settings)


async def _due_now(tx: Tx, cfg: DeadlinesConfig) -> tuple[list[Referral], list[Referral]]:
    """(overdue, near): deadline within `warn_before_minutes` or past, not reminded within
    `reminder_interval_minutes`."""
    now = tx.now
    warn = timedelta(minutes=cfg.warn_before_minutes)
    interval = timedelta(minutes=cfg.reminder_interval_minutes)
    overdue: list[Referral] = []
    near: list[Referral] = []
    for r in await tx.due_for_reminder(now + warn + _TICK, now - interval + _TICK):
        if now < r.decision_due - warn:
            continue
        if r.last_reminder_at is not None and now - r.last_reminder_at < interval:
            continue
        (overdue if now >= r.decision_due else near).append(r)
    return overdue, near


async def _remind(tx: Tx, settings: Settings, overdue: list[Referral], near: list[Referral]) -> int:
    """One digest per check, however many are due: a backlog must not flood the room."""
    if not overdue and not near:
        return 0
    now = tx.now
    doc = Doc()
    if overdue:
        doc.para(
            f"OVERDUE: {len(overdue)} referral(s) have no decision and are past their deadline.",
            strong=True,
        )
        doc.bullets(*_digest_lines(overdue, now))
    if near:
        doc.para(f"Deadline near: {len(near)} referral(s) need a decision soon.", strong=True)
        doc.bullets(*_digest_lines(near, now))
    mentions: tuple[str, ...] = ()
    if overdue and settings.managers:
        mentions = tuple(sorted(settings.managers))
        doc.para("Managers: " + ", ".join(mentions))
    stamp = now.isoformat(timespec="seconds")
    await team_message(
        tx,
        settings,
        doc,
        txn_id=txn_id_for(f"deadlines#{stamp}", Purpose.REMINDER),
        purpose=Purpose.REMINDER,
        mentions=mentions,
    )
    for r in overdue + near:
        detail = {
            "overdue": r in overdue,
            "claimed_by": r.claimed_by,
            "due": r.decision_due.isoformat(),
        }
        await tx.append_record(r.id, settings.bot_user_id, Kind.DEADLINE_REMINDER, detail)
        await tx.mark_reminded(r.id)
    return len(overdue) + len(near)


async def _chase_followups(tx: Tx, settings: Settings) -> int:
    """Telephone referrals whose written follow-up is overdue: tell the team once."""
    queued = 0
    for r in await tx.followups_overdue():
        doc = Doc().para(
            f"Written follow-up missing: {r.ref} was a telephone referral and its written "
            f"follow-up was due {format_time(r.written_followup_due or tx.now)}. Chase the "
            f"caller and record it with !written {r.ref}.",
            strong=True,
        )
        await team_message(
            tx,
            settings,
            doc,
            txn_id=txn_id_for(f"{r.ref}#followup", Purpose.FOLLOWUP_OVERDUE),
            purpose=Purpose.FOLLOWUP_OVERDUE,
            referral_id=r.id,
            mentions=(r.claimed_by or r.declared_by,),
        )
        await tx.append_record(r.id, settings.bot_user_id, Kind.WRITTEN_FOLLOWUP_OVERDUE, {})
        await tx.flag_followup(r.id)
        queued += 1
    return queued
