"""The deadline clock: every few seconds, read open referrals and chase the late ones.

No timer lives in memory: each tick reads the database, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging

from bot.pipeline import Pipeline
from handlers.deadlines import check_deadlines
from handlers.flood import forget_full_rations
from handlers.guided_state import check_drafts
from handlers.meeting_record import chase_actions
from handlers.reports import weekly_report_due
from storage.disk_faults import is_disk_fault

log = logging.getLogger(__name__)


async def tick(pipeline: Pipeline) -> int:
    """One check: queue the reminders that are due (the commit starts sending them).

    Also starts every room with unsent messages: one requeued by `referral-bot outbox
    --retry` while the bot runs is picked up here."""
    async with pipeline.store.transaction() as tx:
        queued = await check_deadlines(tx, pipeline.settings)
        queued += await chase_actions(tx, pipeline.settings)
        queued += await check_drafts(tx, pipeline.settings)
        await forget_full_rations(tx)
        unsent = await tx.rooms_with_unsent()
    pipeline.outbox_workers.kick_all(unsent)
    await _weekly_report(pipeline)
    if queued:
        log.info("deadline reminders queued: %d", queued)
    return queued


async def _weekly_report(pipeline: Pipeline) -> None:
    """The weekly report, in a transaction of its own: a failure here never holds up the
    deadline reminders above (it is tried again on the next tick)."""
    try:
        async with pipeline.store.transaction() as tx:
            await weekly_report_due(tx, pipeline.settings)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.error("weekly report failed: %s", type(exc).__name__)


async def run_deadline_clock(pipeline: Pipeline) -> None:
    while True:
        try:
            await tick(pipeline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Disk full: nothing was queued; store.faults says so once a minute, and the
            # next tick after that queues whatever is due.
            if not is_disk_fault(exc):
                log.error("deadline check failed: %s", type(exc).__name__)
        await asyncio.sleep(pipeline.settings.deadlines.check_interval_seconds)
