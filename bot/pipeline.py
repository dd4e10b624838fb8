"""From stored inbox event to handled use case to delivered message.

    sync loop ──(inbox rows + sync token, one transaction)──▶ inbox
    inbox ──(per-room worker: handler + outbox rows + row marked done, one transaction)──▶ outbox
    outbox ──(per-room sender: Messenger.send with a stable transaction ID)──▶ chat

Each arrow is durable, so a crash anywhere loses nothing and repeats nothing: an event
is handled once (its inbox row is marked done in the handler's own transaction) and a
message is sent once (the homeserver drops a resend with the same transaction ID).
No Matrix types here: the Messenger port does the sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Callable

from bot.room_workers import RoomWorkers
from bot.store import OutboxRow, RoomJob, Store
from handlers.commands import handle_message
from handlers.meetings import room_created, room_spec
from handlers.ports import (
    Incoming,
    Messenger,
    OutgoingMessage,
    Reloader,
    SendRefused,
    txn_id_for,
)
from handlers.render import Doc
from handlers.settings import Settings

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
JOBS = "room-jobs"
# A referral's other messages (the advice-team summary) wait for its acknowledgement to
# be sent, so the two do not compete at the homeserver; never longer than this.
ACK_FIRST_MAX_WAIT_S = 2.0


class Pipeline:
    def __init__(self, store: Store, settings: Settings, messenger: Messenger) -> None:
        self.store = store
        # Read afresh for every message: a reload swaps it between two commands.
        self.settings = settings
        self.messenger = messenger
        self.reloader: Reloader | None = None
        self.inbox_workers = RoomWorkers("inbox", self._handle_room)
        self.outbox_workers = RoomWorkers("outbox", self._deliver_room)
        # Room creation and invites: one queue, in order.
        self.job_workers = RoomWorkers("room-jobs", self._run_room_jobs)
        self.handled = 0
        self.sent = 0
        # Called with the acknowledgement latency in seconds (for /metrics).
        self.on_ack_sent: Callable[[float], None] | None = None
        self._acks_done = asyncio.Condition()
        self._acks_done_count = 0

    async def resume(self) -> None:
        """Pick up whatever a previous run left: pending events and unsent messages."""
        async with self.store.transaction() as tx:
            pending = await tx.rooms_with_pending()
            unsent = await tx.rooms_with_unsent()
            jobs = await tx.pending_room_jobs()
        self.inbox_workers.kick_all(pending)
        self.outbox_workers.kick_all(unsent)
        if jobs:
            self.job_workers.kick(JOBS)

    def kick_rooms(self, rooms: set[str]) -> None:
        self.inbox_workers.kick_all(rooms)

    async def wait_idle(self) -> None:
        """Until every kicked room is handled and every queued message sent (tests, shutdown)."""
        while self.inbox_workers.busy or self.outbox_workers.busy or self.job_workers.busy:
            await self.inbox_workers.wait_idle()
            await self.job_workers.wait_idle()
            await self.outbox_workers.wait_idle()

    async def stop(self) -> None:
        await self.inbox_workers.cancel()
        await self.job_workers.cancel()
        await self.outbox_workers.cancel()

    # -- inbox -------------------------------------------------------------------------

    async def _handle_room(self, room_id: str) -> None:
        while True:
            msg: Incoming | None = None
            try:
                async with self.store.transaction() as tx:
                    msg = await tx.next_pending(room_id)
                    if msg is None:
                        return
                    await handle_message(tx, msg, self.settings, reloader=self.reloader)
                    await tx.mark_handled(msg.seq)
                    rooms = tx.touched_rooms
                    if tx.room_jobs_added:
                        self.job_workers.kick(JOBS)
            except Exception as exc:
                if msg is None:
                    raise
                # Rolled back: nothing half-done is stored. Tell the sender and move on so
                # that one bad message cannot block the room.
                log.error(
                    "handler failed: event=%s error=%s at %s",
                    msg.event_id,
                    type(exc).__name__,
                    _where(exc),
                )
                rooms = await self._handler_failed(msg)
            self.handled += 1
            self.outbox_workers.kick_all(rooms)

    async def _handler_failed(self, msg: Incoming) -> set[str]:
        body, html = (
            Doc()
            .para(
                "Sorry: something went wrong while handling this message and NOTHING from it "
                "was recorded. Please send it again; if it fails again, phone the advice team.",
                strong=True,
            )
            .render()
        )
        async with self.store.transaction() as tx:
            await tx.enqueue(
                OutgoingMessage(msg.room_id, body, html, reply_to=msg.event_id, sensitive=False),
                txn_id=txn_id_for(msg.event_id, "failed"),
                purpose="failed",
            )
            await tx.mark_handled(msg.seq)
            return tx.touched_rooms

    # -- room jobs (create meeting rooms, invite, set power) ----------------------------

    async def _run_room_jobs(self, _key: str) -> None:
        async with self.store.transaction() as tx:
            jobs = await tx.pending_room_jobs()
        for job in jobs:
            delay = 0.5
            while not await self._room_job(job):
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    async def _room_job(self, job: RoomJob) -> bool:
        """Do one job; True when done (or pointless), False to retry."""
        async with self.store.transaction() as tx:
            meeting = await tx.meeting(job.meeting_id)
            referral = await tx.referral_by_id(meeting.referral_id) if meeting else None
            participants = await tx.participants(job.meeting_id)
        try:
            if meeting is None or referral is None:
                room_id = None
            elif job.kind == "create_meeting":
                room_id = meeting.room_id or await self.messenger.create_room(
                    room_spec(meeting, referral, participants)
                )
            elif meeting.room_id is None:
                return False  # the room is not made yet: its job comes first
            elif job.kind == "invite" and job.user_id:
                await self.messenger.invite(meeting.room_id, job.user_id)
                room_id = meeting.room_id
            elif job.kind == "power" and job.user_id:
                await self.messenger.set_moderator(meeting.room_id, job.user_id)
                room_id = meeting.room_id
            else:
                room_id = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("room job failed: job=%d kind=%s error=%s", job.id, job.kind, exc)
            async with self.store.transaction() as tx:
                await tx.room_job_failed(job.id, f"{type(exc).__name__}: {exc}")
            return False
        async with self.store.transaction() as tx:
            if job.kind == "create_meeting" and room_id and meeting and meeting.room_id is None:
                await room_created(tx, job.meeting_id, room_id, self.settings)
            await tx.room_job_done(job.id)
            rooms = tx.touched_rooms
        self.outbox_workers.kick_all(rooms)
        log.info("room job done: job=%d kind=%s room=%s", job.id, job.kind, room_id)
        return True

    # -- outbox ------------------------------------------------------------------------

    async def _deliver_room(self, room_id: str) -> None:
        while True:
            async with self.store.transaction() as tx:
                rows = await tx.unsent(room_id, limit=20)
            if not rows:
                return
            for row in rows:
                if row.purpose != "ack" and row.referral_id is not None:
                    await self._after_ack(row.referral_id)
                await self._deliver(row)

    async def _after_ack(self, referral_id: int) -> None:
        """Wait (briefly) until the referral's acknowledgement has left the outbox."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_FIRST_MAX_WAIT_S
        while True:
            seen = self._acks_done_count
            async with self.store.transaction() as tx:
                if not await tx.ack_unsent(referral_id):
                    return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return

            def another_ack_done(seen: int = seen) -> bool:
                return self._acks_done_count != seen

            async with self._acks_done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acks_done.wait_for(another_ack_done), remaining)

    async def _ack_left_outbox(self) -> None:
        async with self._acks_done:
            self._acks_done_count += 1
            self._acks_done.notify_all()

    async def _deliver(self, row: OutboxRow) -> None:
        delay = 0.5
        while True:
            try:
                event_id = await self.messenger.send(row.message, row.txn_id)
            except SendRefused as exc:
                log.error(
                    "message refused: outbox=%d purpose=%s reason=%s", row.id, row.purpose, exc
                )
                async with self.store.transaction() as tx:
                    await tx.mark_refused(row, str(exc))
                if row.purpose == "ack":
                    await self._ack_left_outbox()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "send failed, will retry: outbox=%d purpose=%s error=%s at %s",
                    row.id,
                    row.purpose,
                    type(exc).__name__,
                    _where(exc),
                )
                async with self.store.transaction() as tx:
                    await tx.mark_failed(row, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            received_at = None
            async with self.store.transaction() as tx:
                await tx.mark_sent(row, event_id)
                if row.purpose == "ack" and row.referral_id is not None and self.on_ack_sent:
                    received_at = await tx.referral_received_at(row.referral_id)
                sent_at = tx.now
            if received_at is not None and self.on_ack_sent is not None:
                # From the referral event's origin_server_ts to the acknowledgement sent.
                self.on_ack_sent((sent_at - received_at).total_seconds())
            if row.purpose == "ack":
                await self._ack_left_outbox()
            self.sent += 1
            log.info("sent: outbox=%d purpose=%s event=%s", row.id, row.purpose, event_id)
            return


def _where(exc: BaseException) -> str:
    """File and line of an exception, without its message (which may quote user text)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
