"""The deadline clock: every few seconds, read open referrals and chase the late ones.

No timer lives in memory: each tick reads the database, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import logging

from bot.pipeline import Pipeline
from handlers.deadlines import check_deadlines
from handlers.guided import check_drafts
from handlers.meetings import chase_actions

log = logging.getLogger(__name__)


async def tick(pipeline: Pipeline) -> int:
    """One check: queue the reminders that are due and start sending them."""
    async with pipeline.store.transaction() as tx:
        queued = await check_deadlines(tx, pipeline.settings)
        queued += await chase_actions(tx, pipeline.settings)
        queued += await check_drafts(tx, pipeline.settings)
        rooms = tx.touched_rooms
    pipeline.outbox_workers.kick_all(rooms)
    if queued:
        log.info("deadline reminders queued: %d", queued)
    return queued


async def run_deadline_clock(pipeline: Pipeline) -> None:
    while True:
        try:
            await tick(pipeline)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("deadline check failed: %s", type(exc).__name__)
        await asyncio.sleep(pipeline.settings.deadlines.check_interval_seconds)
