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

from bot.disk_faults import is_disk_fault
from bot.room_workers import RoomWorkers
from bot.store import OutboxRow, RoomJob, Store
from handlers.commands import handle_message
from handlers.intake import combine_team_summaries
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
# Messages that may be gathered into one under load (Pipeline._deliver_batch).
BATCHED = frozenset({"team_summary"})
MAX_BATCH = 20
MAX_BATCH_BYTES = 24_000
BATCH_POLL_S = 0.25
# After the acknowledgements in hand have gone, a batch waits this long more before it goes.
ACK_SETTLE_S = 0.02


class Pipeline:
    def __init__(self, store: Store, settings: Settings, messenger: Messenger) -> None:
        self.store = store
        # Read afresh for every message: a reload swaps it between two commands.
        self.settings = settings
        self.messenger = messenger
        self.reloader: Reloader | None = None
        # A write the database refuses (disk full) leaves the work where it is: each
        # worker waits for writing to work again (bot/disk_faults.py), then goes on.
        self.inbox_workers = RoomWorkers("inbox", self._handle_room, store.faults)
        self.outbox_workers = RoomWorkers("outbox", self._deliver_room, store.faults)
        # Room creation and invites: one queue, in order.
        self.job_workers = RoomWorkers("room-jobs", self._run_room_jobs, store.faults)
        store.faults.on_recovered.append(self.resume)
        # Rooms made for a job whose own write then failed: a retry must not make another.
        self._rooms_made: dict[int, str] = {}
        self.handled = 0
        self.sent = 0
        # Called with the acknowledgement latency in seconds (for /metrics).
        self.on_ack_sent: Callable[[float], None] | None = None
        self._acks_done = asyncio.Condition()
        self._acks_done_count = 0
        # When each room last got a batched message (event-loop time).
        self._last_batch_at: dict[str, float] = {}
        # Set on shutdown: whatever is queued goes out now, without waiting to batch.
        self.stopping = False

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
                if msg is None or is_disk_fault(exc):
                    # Not the message's fault: it stays pending and is handled once the
                    # database can be written (telling the sender "nothing recorded" would
                    # need a write too, and would drop a referral that can still be taken).
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
                room_id = meeting.room_id or self._rooms_made.get(job.id)
                if room_id is None:
                    room_id = await self.messenger.create_room(
                        room_spec(meeting, referral, participants)
                    )
                    self._rooms_made[job.id] = room_id
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
        self._rooms_made.pop(job.id, None)
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
                if row.batch is not None or (
                    row.purpose in BATCHED and self.settings.team_summary_batch_seconds > 0
                ):
                    # From here on the queue is read afresh: a batch takes what has
                    # arrived meanwhile.
                    await self._deliver_batch(room_id)
                    break
                if row.purpose != "ack" and row.referral_id is not None:
                    await self._after_ack(row.referral_id)
                await self._deliver([row], row.message, row.txn_id)

    async def _deliver_batch(self, room_id: str) -> None:
        """Send the summaries at the head of the room's queue as one message.

        Under load the advice-team room gets at most one such message per
        `team_summary_batch_seconds`: each message is work for the homeserver, and
        there it competes with the next referrer's acknowledgement. The first summary
        after a quiet spell, and any immediate-danger one, go at once.
        """
        loop = asyncio.get_running_loop()
        ready_at = self._last_batch_at.get(room_id, -1e9) + self.settings.team_summary_batch_seconds
        while True:
            async with self.store.transaction() as tx:
                rows = await tx.unsent(room_id, limit=MAX_BATCH)
            if not rows:
                return
            if rows[0].batch is not None:  # fixed before a crash or a failed send
                run = [r for r in rows if r.batch == rows[0].batch]
                break
            run = _batchable_run(rows)
            if not run:
                return  # not a summary at the head after all: _deliver_room sends it
            if self.settings.team_summary_batch_seconds <= 0:
                run = run[:1]  # batching switched off
                break
            if self.stopping or loop.time() >= ready_at or any(r.message.urgent for r in run):
                break
            await asyncio.sleep(min(BATCH_POLL_S, ready_at - loop.time()))
        for referral_id in {r.referral_id for r in run if r.referral_id is not None}:
            await self._after_ack(referral_id)
        # Not in the middle of anyone's acknowledgement: the homeserver does one thing at
        # a time, and a referrer is waiting on that one. Straight after it instead, once
        # it has had a moment to reach its reader.
        urgent = any(r.message.urgent for r in run)
        if not self.stopping and not urgent and await self._after_ack(None):
            await asyncio.sleep(ACK_SETTLE_S)
        if len(run) == 1 and run[0].batch is None:
            await self._deliver(run, run[0].message, run[0].txn_id)
        else:
            batch = run[0].batch or txn_id_for(run[0].txn_id, f"batch:{len(run)}")
            if run[0].batch is None:
                async with self.store.transaction() as tx:
                    await tx.set_batch(run, batch)
            await self._deliver(run, combine_team_summaries([r.message for r in run]), batch)
        self._last_batch_at[room_id] = loop.time()

    async def _after_ack(self, referral_id: int | None) -> bool:
        """Wait (briefly) until the referral's acknowledgement (None: every waiting
        acknowledgement) has left the outbox. True if there was one to wait for."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACK_FIRST_MAX_WAIT_S
        waited = False
        while True:
            seen = self._acks_done_count
            async with self.store.transaction() as tx:
                if not await tx.ack_unsent(referral_id):
                    return waited
            remaining = deadline - loop.time()
            if remaining <= 0:
                return waited
            waited = True

            def another_ack_done(seen: int = seen) -> bool:
                return self._acks_done_count != seen

            async with self._acks_done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acks_done.wait_for(another_ack_done), remaining)

    async def _ack_left_outbox(self) -> None:
        async with self._acks_done:
            self._acks_done_count += 1
            self._acks_done.notify_all()

    async def _deliver(self, rows: list[OutboxRow], message: OutgoingMessage, txn_id: str) -> None:
        """Send one message for `rows` (one row, or a batch of them) until it is sent or
        refused; then mark every row, in one transaction."""
        first = rows[0]
        delay = 0.5
        while True:
            try:
                event_id = await self.messenger.send(message, txn_id)
            except SendRefused as exc:
                log.error(
                    "message refused: outbox=%d rows=%d purpose=%s reason=%s",
                    first.id,
                    len(rows),
                    first.purpose,
                    exc,
                )
                async with self.store.transaction() as tx:
                    for row in rows:
                        await tx.mark_refused(row, str(exc))
                if first.purpose == "ack":
                    await self._ack_left_outbox()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "send failed, will retry: outbox=%d rows=%d purpose=%s error=%s at %s",
                    first.id,
                    len(rows),
                    first.purpose,
                    type(exc).__name__,
                    _where(exc),
                )
                async with self.store.transaction() as tx:
                    for row in rows:
                        await tx.mark_failed(row, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            received_at = None
            async with self.store.transaction() as tx:
                for row in rows:
                    await tx.mark_sent(row, event_id)
                if first.purpose == "ack" and first.referral_id is not None and self.on_ack_sent:
                    received_at = await tx.referral_received_at(first.referral_id)
                sent_at = tx.now
            if received_at is not None and self.on_ack_sent is not None:
                # From the referral event's origin_server_ts to the acknowledgement sent.
                self.on_ack_sent((sent_at - received_at).total_seconds())
            if first.purpose == "ack":
                await self._ack_left_outbox()
            self.sent += len(rows)
            log.info(
                "sent: outbox=%d rows=%d purpose=%s event=%s",
                first.id,
                len(rows),
                first.purpose,
                event_id,
            )
            return


def _batchable_run(rows: list[OutboxRow]) -> list[OutboxRow]:
    """The summaries at the head of the queue that may go out as one message: up to
    MAX_BATCH of them and MAX_BATCH_BYTES of text (a Matrix event is at most 64 KiB)."""
    run: list[OutboxRow] = []
    size = 0
    for row in rows:
        if row.purpose not in BATCHED or row.batch is not None or len(run) == MAX_BATCH:
            break
        size += len(row.message.body.encode()) + len(row.message.html.encode())
        if run and size > MAX_BATCH_BYTES:
            break
        run.append(row)
    return run


def _where(exc: BaseException) -> str:
    """File and line of an exception, without its message (which may quote user text)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
