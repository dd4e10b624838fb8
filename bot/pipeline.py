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
from dataclasses import replace

from bot.attachments import AttachmentFetcher
from bot.outbox_order import BATCHED, MAX_BATCH, PollEnds, batchable_run
from bot.room_workers import RoomWorkers
from handlers.commands import handle_message
from handlers.intake import combine_team_summaries
from handlers.meetings import room_created, room_spec
from handlers.notify import answer_place, send_failed
from handlers.ports import (
    Incoming,
    MediaTransfer,
    Messenger,
    OutgoingFile,
    OutgoingMessage,
    Reloader,
    SendRefused,
    SendRejected,
    txn_id_for,
)
from handlers.render import Doc
from handlers.settings import CurrentSettings, Settings
from schemas.messages import OutboxRow
from schemas.records import RoomJob
from storage.base import Committed
from storage.disk_faults import is_disk_fault
from storage.engine import Store

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
# A send the homeserver refuses for good (SendRejected) is tried this many times in each
# shape before the next shape, or giving up, so that it never blocks its room's queue.
MAX_REJECTIONS = 3
REJECTED_FIRST_DELAY_S = 0.5
JOBS = "room-jobs"
# A referral's other messages (the advice-team summary) wait for its acknowledgement to
# be sent, so the two do not compete at the homeserver; never longer than this.
ACK_FIRST_MAX_WAIT_S = 2.0
BATCH_POLL_S = 0.25
# After the acknowledgements in hand have gone, a batch waits this long more before it goes.
ACK_SETTLE_S = 0.02


class Pipeline:
    def __init__(
        self, store: Store, settings: Settings | CurrentSettings, messenger: Messenger
    ) -> None:
        self.store = store
        # Shared with device trust and verification; a reload swaps its value.
        self.current = CurrentSettings.of(settings)
        self.messenger = messenger
        self.reloader: Reloader | None = None
        # A write the database refuses (disk full) leaves the work where it is: each
        # worker waits for writing to work again (storage/disk_faults.py), then goes on.
        self.inbox_workers = RoomWorkers("inbox", self._handle_room, store.faults)
        self.outbox_workers = RoomWorkers("outbox", self._deliver_room, store.faults)
        # Room creation and invites: one queue, in order.
        self.job_workers = RoomWorkers("room-jobs", self._run_room_jobs, store.faults)
        # Files to download and store, one worker per room (bot/attachments.py); None
        # until `use_media` is called: files then wait in their queue.
        self.attachments: AttachmentFetcher | None = None
        self.attachment_workers = RoomWorkers("attachments", self._fetch_room, store.faults)
        # Every committed transaction, whoever ran it, starts the workers for what it left.
        store.on_commit = self._committed
        store.faults.on_recovered.append(self.resume)
        # Rooms made for a job whose own write then failed: a retry must not make another.
        self._rooms_made: dict[int, str] = {}
        self.handled = 0
        self.sent = 0
        # Messages given up because the homeserver refused them for good (for /metrics).
        self.send_failures = 0
        # First wait after a lasting refusal (doubling for each further attempt).
        self.rejected_delay_s = REJECTED_FIRST_DELAY_S
        # Called with the acknowledgement latency in seconds (for /metrics).
        self.on_ack_sent: Callable[[float], None] | None = None
        self._acks_done = asyncio.Condition()
        self._acks_done_count = 0
        # When each room last got a batched message (event-loop time).
        self._last_batch_at: dict[str, float] = {}
        # Set on shutdown: whatever is queued goes out now, without waiting to batch.
        self.stopping = False
        # Rooms whose later messages wait for an earlier one's room key (a timer is set).
        self._held_rooms: set[str] = set()
        self.poll_ends = PollEnds()
        # Cleared by BotApp until its first sync: nio knows the bot's rooms only then, and
        # a send before it would be refused as "not in the room".
        self.may_send = asyncio.Event()
        self.may_send.set()

    @property
    def settings(self) -> Settings:
        """Read afresh for every message: a reload swaps it between two commands."""
        return self.current.current

    @settings.setter
    def settings(self, value: Settings) -> None:
        self.current.current = value

    def use_media(self, media: MediaTransfer) -> None:
        """Take in and send out files through `media` (the Matrix shell's messenger)."""
        self.attachments = AttachmentFetcher(self.store, media)

    async def resume(self) -> None:
        """Pick up whatever a previous run left: pending events and unsent messages."""
        async with self.store.transaction() as tx:
            pending = await tx.rooms_with_pending()
            unsent = await tx.rooms_with_unsent()
            jobs = await tx.pending_room_jobs()
            files = await tx.rooms_with_attachment_jobs()
        self.inbox_workers.kick_all(pending)
        self.outbox_workers.kick_all(unsent)
        self.attachment_workers.kick_all(files)
        if jobs:
            self.job_workers.kick(JOBS)

    def kick_rooms(self, rooms: set[str]) -> None:
        self.inbox_workers.kick_all(rooms)

    def _committed(self, done: Committed) -> None:
        self.inbox_workers.kick_all(done.inbox_rooms)
        self.outbox_workers.kick_all(done.outbox_rooms)
        self.poll_ends.news(set(done.outbox_rooms))
        if done.room_jobs:
            self.job_workers.kick(JOBS)
        self.attachment_workers.kick_all(done.attachment_rooms)

    async def wait_idle(self) -> None:
        """Until every kicked room is handled and every queued message sent (tests, shutdown)."""
        while (
            self.inbox_workers.busy
            or self.outbox_workers.busy
            or self.job_workers.busy
            or self.attachment_workers.busy
        ):
            await self.inbox_workers.wait_idle()
            await self.attachment_workers.wait_idle()
            await self.job_workers.wait_idle()
            await self.outbox_workers.wait_idle()

    async def stop(self) -> None:
        await self.inbox_workers.cancel()
        await self.attachment_workers.cancel()
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
                    held = await tx.waiting_for_key_until(
                        room_id, msg.seq, self.settings.late_key_wait_seconds
                    )
                    if held is not None:
                        # An earlier message of this room waits for its room key: later
                        # ones wait for it, for a bounded time (README, "late keys").
                        self._kick_later(room_id, (held - tx.now).total_seconds())
                        return
                    if msg.thread_root is not None:
                        self.messenger.note_thread_event(msg.thread_root, msg.event_id)
                    await handle_message(tx, msg, self.settings, reloader=self.reloader)
                    await tx.mark_handled(msg.seq)
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
                await self._handler_failed(msg)
            self.handled += 1

    def _kick_later(self, room_id: str, delay_s: float) -> None:
        """Look at the room again once the wait for an earlier message's key is over (the
        key arriving kicks it sooner)."""
        if room_id in self._held_rooms:
            return
        self._held_rooms.add(room_id)

        def again() -> None:
            self._held_rooms.discard(room_id)
            self.inbox_workers.kick(room_id)

        asyncio.get_running_loop().call_later(max(delay_s, 0.0) + 0.05, again)

    async def _handler_failed(self, msg: Incoming) -> None:
        body, html = (
            Doc()
            .para(
                "Sorry: something went wrong while handling this message and NOTHING from it "
                "was recorded. Please send it again; if it fails again, phone the advice team.",
                strong=True,
            )
            .render()
        )
        thread_root, reply_to = answer_place(msg)
        async with self.store.transaction() as tx:
            await tx.enqueue(
                OutgoingMessage(
                    msg.room_id,
                    body,
                    html,
                    reply_to=reply_to,
                    thread_root=thread_root,
                    sensitive=False,
                ),
                txn_id=txn_id_for(msg.event_id, "failed"),
                purpose="failed",
            )
            await tx.mark_handled(msg.seq)

    # -- files (attachments in) ---------------------------------------------------------

    async def _fetch_room(self, room_id: str) -> None:
        if self.attachments is not None:
            await self.attachments.run_room(room_id, self.settings)

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
        self._rooms_made.pop(job.id, None)
        log.info("room job done: job=%d kind=%s room=%s", job.id, job.kind, room_id)
        return True

    # -- outbox ------------------------------------------------------------------------

    async def _deliver_room(self, room_id: str) -> None:
        await self.may_send.wait()
        while True:
            read_at = self.poll_ends.generation(room_id)
            async with self.store.transaction() as tx:
                rows = await tx.unsent(room_id, limit=20)
            if not rows:
                return
            for row in rows:
                if not self.stopping and self.poll_ends.overtaken(row, rows):
                    continue  # bot/outbox_order.py: the room's newer messages go first
                if not self.stopping and await self.poll_ends.wait_quiet(room_id, row, read_at):
                    break  # something newer was queued meanwhile: read the queue again
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
            run = batchable_run(rows)
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
        """Send one message for `rows` (one row, or a batch of them) until it is sent,
        refused by the bot, or refused for good by the homeserver; then mark every row, in
        one transaction.

        Connection errors, 5xx and 429 are retried with back-off for as long as it takes.
        A refusal that will not change (SendRejected) is tried MAX_REJECTIONS times, then
        in the fallback shapes (a plain reply, then a message without any relation: the
        referrer must still learn the REF), then given up (`_give_up`).
        """
        first = rows[0]
        delay = 0.5
        shapes = fallback_shapes(message, txn_id)
        shape = 0
        rejections = 0
        rejected_delay = self.rejected_delay_s
        while True:
            if self.store.lost.is_set():
                return  # no longer the leader: the one that is sends it (same txn ID)
            name, attempt, attempt_txn = shapes[shape]
            try:
                event_id = await self._send(attempt, attempt_txn)
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
            except SendRejected as exc:
                rejections += 1
                log.warning(
                    "send refused by the homeserver: outbox=%d rows=%d purpose=%s shape=%s "
                    "status=%s errcode=%s attempt=%d",
                    first.id,
                    len(rows),
                    first.purpose,
                    name,
                    exc.status if exc.status is not None else "-",
                    exc.errcode,
                    rejections,
                )
                async with self.store.transaction() as tx:
                    for row in rows:
                        await tx.mark_failed(row, exc.code)
                if rejections < MAX_REJECTIONS:
                    await asyncio.sleep(rejected_delay)
                    rejected_delay = min(rejected_delay * 2, MAX_BACKOFF_S)
                elif shape + 1 < len(shapes):
                    shape, rejections, rejected_delay = shape + 1, 0, self.rejected_delay_s
                else:
                    await self._give_up(rows, exc)
                    return
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "send failed, will retry: outbox=%d rows=%d purpose=%s error=%s at %s",
                    first.id,
                    len(rows),
                    first.purpose,
                    _describe_send_error(exc),
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
                    await tx.mark_sent(row, event_id, shape=None if shape == 0 else name)
                if shape and message.thread_root is not None and first.referral_id is not None:
                    # The homeserver will not take this referral's thread: its later
                    # updates go as replies to the referral instead.
                    referral = await tx.referral_by_id(first.referral_id)
                    if (
                        referral is not None
                        and referral.room_id == message.room_id
                        and referral.thread_root == message.thread_root
                    ):
                        await tx.set_thread_root(referral.id, None)
                if first.purpose == "ack" and first.referral_id is not None and self.on_ack_sent:
                    received_at = await tx.referral_received_at(first.referral_id)
                sent_at = tx.now
            if received_at is not None and self.on_ack_sent is not None:
                # From the referral event's origin_server_ts to the acknowledgement sent.
                self.on_ack_sent((sent_at - received_at).total_seconds())
            if first.purpose == "ack":
                await self._ack_left_outbox()
            self.sent += len(rows)
            self.poll_ends.sent(message.room_id)
            log.info(
                "sent: outbox=%d rows=%d purpose=%s event=%s%s",
                first.id,
                len(rows),
                first.purpose,
                event_id,
                f" shape={name}" if shape else "",
            )
            return

    async def _send(self, message: OutgoingMessage, txn_id: str) -> str:
        """Send one message; a file (`attachment`) is read from the store, decrypted, and
        handed to the media transfer, which encrypts it afresh and uploads it."""
        if message.attachment is None:
            return await self.messenger.send(message, txn_id)
        if self.attachments is None:
            raise SendRefused("this bot cannot send files")
        async with self.attachments.transfers:
            async with self.store.reading() as tx:
                found = await tx.attachment_bytes(message.attachment)
            if found is None:
                raise SendRefused("the file is no longer stored")
            stored, data = found
            file = OutgoingFile(stored.name, stored.mimetype, data)
            return await self.attachments.media.send_media(message, txn_id, file)

    async def _give_up(self, rows: list[OutboxRow], exc: SendRejected) -> None:
        """The homeserver refuses the message for good: mark the rows failed (the running
        record notes it), tell the advice team in one line (unless the message was to the
        advice-team room itself), and let the room's later messages go on."""
        first = rows[0]
        async with self.store.transaction() as tx:
            for row in rows:
                await tx.mark_send_failed(row, exc.code)
            await send_failed(
                tx,
                self.settings,
                room_id=first.message.room_id,
                purpose=first.purpose,
                referral_id=first.referral_id,
                outbox_id=first.id,
                code=exc.code,
            )
        self.send_failures += len(rows)
        log.error(
            "send failed for good, given up: outbox=%d rows=%d purpose=%s status=%s errcode=%s",
            first.id,
            len(rows),
            first.purpose,
            exc.status if exc.status is not None else "-",
            exc.errcode,
        )
        if first.purpose == "ack":
            await self._ack_left_outbox()


def fallback_shapes(
    message: OutgoingMessage, txn_id: str
) -> list[tuple[str, OutgoingMessage, str]]:
    """The shapes a message is tried in, in order: (name, message, transaction ID).

    As stored first. A message with a relation is then tried as a plain reply (no thread)
    and then with no relation at all, each under its own transaction ID (the homeserver
    must not take a different message for a retry of the first), before it is given up.
    """
    shapes = [("as-stored", message, txn_id)]
    target = message.reply_to or message.thread_root
    if message.thread_root is not None and target is not None:
        reply = replace(message, thread_root=None, reply_to=target)
        shapes.append(("reply", reply, txn_id_for(txn_id, "shape:reply")))
    if target is not None:
        bare = replace(message, thread_root=None, reply_to=None)
        shapes.append(("plain", bare, txn_id_for(txn_id, "shape:plain")))
    return shapes


def _describe_send_error(exc: BaseException) -> str:
    """The error's type, and for the messenger's own errors their text (status, errcode)."""
    if type(exc).__name__ == "SendFailed":
        return f"SendFailed {exc}"
    return type(exc).__name__


def _where(exc: BaseException) -> str:
    """File and line of an exception, without its message (which may quote user text)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{last.filename.rsplit('/', 1)[-1]}:{last.lineno}"
