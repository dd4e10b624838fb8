"""The sync loop: fetch, fill gaps, store, and only then move the sync token on.

matrix-nio's own loop saves the sync token before event callbacks run and never fetches
the events a `limited` timeline left out. This loop instead:

1. syncs with a filter asking for up to 100 timeline events per room;
2. for each room whose timeline is still `limited`, pages back with `/messages` to the
   previous token, so no event is skipped under load;
3. stores every event the bot must act on in the inbox and the new token in ONE
   transaction, then hands the rooms to the per-room workers (so a slow room never stalls
   the loop, and a crash before step 3 simply repeats the sync).

Any failure along the way (the homeserver down, an answer cut short) is met with a
back-off and the same sync again: the loop itself never stops on an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from nio import (
    AsyncClient,
    EncryptionError,
    Event,
    InviteMemberEvent,
    LocalProtocolError,
    MegolmEvent,
    MessageDirection,
    RoomMemberEvent,
    RoomMessagesResponse,
    SyncError,
    SyncResponse,
)

from bot.events import to_inbox_item
from bot.pipeline import Pipeline
from bot.verification import Verifier
from handlers.undecryptable import tell_undecryptable
from schemas.messages import InboxItem
from storage.disk_faults import is_disk_fault
from storage.engine import Store

log = logging.getLogger(__name__)

TOKEN_KEY = "sync_token"  # noqa: S105 - a key name, not a secret
SYNC_TIMEOUT_MS = 30_000
SYNC_FILTER: dict[str, Any] = {
    "presence": {"not_types": ["*"]},
    "room": {
        "timeline": {"limit": 100},
        "ephemeral": {"not_types": ["*"]},
    },
}
MAX_BACKFILL_PAGES = 50
UNDECRYPTABLE_NOTICE_AFTER_S = 120.0
MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0


class BackfillFailed(Exception):
    pass


class SyncFailed(Exception):
    """The homeserver answered the sync with an error."""


def _describe(exc: BaseException) -> str:
    """An error's type and, for the bot's own errors, its text: never a URL or a token."""
    if isinstance(exc, SyncFailed | BackfillFailed):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


class SyncLoop:
    def __init__(
        self,
        client: AsyncClient,
        store: Store,
        pipeline: Pipeline,
        is_allowed_user: Callable[[str], bool],
        verifier: Verifier | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.pipeline = pipeline
        self.is_allowed = is_allowed_user
        # Device verification and, in strict mode, the gate for unverified sessions.
        self.verifier = verifier
        self.ready = asyncio.Event()
        self.syncs = 0
        self.failures = 0
        # When the last sync succeeded (monotonic): /healthz says 503 when it is long ago.
        self.last_ok = time.monotonic()
        self._requested_keys: set[str] = set()
        # How long an undecryptable message may wait for its key before the sender is told.
        self.notice_after_s = UNDECRYPTABLE_NOTICE_AFTER_S
        self._told_undecryptable: set[str] = set()
        # True until the inbox is known to hold no undecrypted events; set again whenever
        # one is stored.
        self._maybe_undecrypted = True
        # The bot's own messages are never acted on; leaving them out of the timeline means
        # a sent acknowledgement does not wake the sync loop (a sync round trip saved on
        # both sides for every message sent).
        self.sync_filter: dict[str, Any] = {
            **SYNC_FILTER,
            "room": {
                **SYNC_FILTER["room"],
                "timeline": {**SYNC_FILTER["room"]["timeline"], "not_senders": [client.user_id]},
            },
        }

    async def run(self) -> None:
        """Sync until cancelled. No error ends the loop: it backs off and syncs again.

        matrix-nio retries refused connections and timeouts itself (`max_timeouts=None`),
        but an answer cut short raises out of `client.sync` (aiohttp's ClientPayloadError),
        and an error answer (a proxy's HTML 502 page while the homeserver restarts) comes
        back as a `SyncError`. Either way the sync token has not moved, so repeating the
        sync loses and repeats nothing.
        """
        async with self.store.transaction() as tx:
            token = await tx.get_kv(TOKEN_KEY)
        first = True
        delay = MIN_BACKOFF_S
        while True:
            try:
                token = await self._sync_once(token, first)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if is_disk_fault(exc):
                    # The batch was not stored and the token did not move: the same sync
                    # is repeated once the database can be written (store.faults logs it,
                    # once a minute), or after the back-off.
                    await self.store.faults.wait_writable(delay)
                else:
                    log.warning("sync failed (%s); retrying in %.0f s", _describe(exc), delay)
                    await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            delay = MIN_BACKOFF_S
            self.syncs += 1
            self.last_ok = time.monotonic()
            first = False
            self.ready.set()

    async def _sync_once(self, token: str | None, first: bool) -> str:
        """One sync: fetch, fill gaps, store inbox rows and the new token; the new token."""
        # The first sync of a run asks for full state: nio keeps room state (members,
        # encryption) only in memory.
        resp = await self.client.sync(
            timeout=0 if first else SYNC_TIMEOUT_MS,
            sync_filter=self.sync_filter,
            since=token,
            full_state=first,
        )
        if isinstance(resp, SyncError):
            raise SyncFailed(str(resp.status_code))
        if not isinstance(resp, SyncResponse):
            raise SyncFailed(type(resp).__name__)
        await self._housekeeping()
        if self.verifier is not None:
            await self.verifier.on_to_device(resp.to_device_events)
        await self._answer_invites(resp)
        items = await self._collect(resp, token)
        # The commit starts the room workers for new events and notices (Store.on_commit).
        async with self.store.transaction() as tx:
            await tx.add_inbox(items)
            if self.verifier is not None:
                await self.verifier.write(tx)
            await tx.set_kv(TOKEN_KEY, resp.next_batch)
        if self.verifier is not None:
            await self.verifier.act()
        try:
            await self._retry_undecrypted()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the token has moved on: the sync itself succeeded
            if is_disk_fault(exc):
                self._maybe_undecrypted = True  # tried again on a later sync
                return str(resp.next_batch)
            log.warning("retrying undecrypted events failed (%s)", _describe(exc))
        return str(resp.next_batch)

    async def _housekeeping(self) -> None:
        client = self.client
        await client.send_to_device_messages()
        if client.should_upload_keys:
            await client.keys_upload()
        if self.verifier is not None:
            await self.verifier.trust.query_keys()
        elif client.should_query_keys:
            await client.keys_query()
        if client.should_claim_keys:
            await client.keys_claim(client.get_users_for_key_claiming())

    async def _answer_invites(self, resp: SyncResponse) -> None:
        for room_id, info in resp.rooms.invite.items():
            inviter = None
            for event in info.invite_state:
                if (
                    isinstance(event, InviteMemberEvent)
                    and event.state_key == self.client.user_id
                    and event.membership == "invite"
                ):
                    inviter = event.sender
            if inviter is not None and self.is_allowed(inviter):
                result = await self.client.join(room_id)
                log.info("joined on invite: room=%s result=%s", room_id, type(result).__name__)
            else:
                await self.client.room_leave(room_id)
                log.warning("declined invite from a server not allowed: room=%s", room_id)

    async def _collect(self, resp: SyncResponse, since: str | None) -> list[InboxItem]:
        items: list[InboxItem] = []
        if since is None:
            # First start ever: history from before this bot's database is not acted on,
            # or a reset database would turn old messages into new referrals.
            return items
        for room_id, info in resp.rooms.join.items():
            events: list[Event] = list(info.timeline.events)
            if info.timeline.limited and info.timeline.prev_batch:
                events = await self._backfill(room_id, info.timeline.prev_batch, since) + events
            room = self.client.rooms.get(room_id)
            encrypted = bool(room and room.encrypted)
            private = bool(room and room.member_count <= 2)
            for event in events:
                if not self.is_allowed(event.sender):
                    continue
                item = to_inbox_item(event, room_id, encrypted, self.client.user_id, private)
                if self.verifier is not None:
                    item = self.verifier.screen(event, room_id, item)
                if item is not None:
                    if item.state == "undecrypted" and isinstance(event, MegolmEvent):
                        self._maybe_undecrypted = True
                        await self._request_key(event)
                    items.append(item)
        return items

    async def _backfill(self, room_id: str, prev_batch: str, since: str) -> list[Event]:
        """The events a limited timeline left out, oldest first."""
        collected: list[Event] = []
        start = prev_batch
        for _ in range(MAX_BACKFILL_PAGES):
            resp = await self.client.room_messages(
                room_id, start=start, end=since, direction=MessageDirection.back, limit=100
            )
            if not isinstance(resp, RoomMessagesResponse):
                raise BackfillFailed(getattr(resp, "status_code", "error"))
            reached_join = False
            for event in resp.chunk:
                collected.append(event)
                if (
                    isinstance(event, RoomMemberEvent)
                    and event.state_key == self.client.user_id
                    and event.membership == "join"
                    and event.prev_membership != "join"
                ):
                    reached_join = True  # nothing before our own join is ours to act on
                    break
            if reached_join or not resp.chunk or not resp.end or resp.end == start:
                break
            start = resp.end
        log.info("back-filled room=%s events=%d", room_id, len(collected))
        return list(reversed(collected))

    async def _request_key(self, event: MegolmEvent) -> None:
        # matrix-nio addresses the request to the bot's own other devices (it accepts
        # forwarded keys only from them). The sender's client rescues the message by
        # sending the room key late; see _retry_undecrypted.
        if event.session_id in self._requested_keys:
            return
        self._requested_keys.add(event.session_id)
        with contextlib.suppress(LocalProtocolError):
            await self.client.request_room_key(event)

    async def _retry_undecrypted(self) -> None:
        """Decrypt what waited for its room key; tell the sender of what still waits after
        `notice_after_s` that it is not recorded yet."""
        if not self._maybe_undecrypted:
            return  # saves a transaction per sync on the acknowledgement's path
        async with self.store.transaction() as tx:
            waiting = await tx.undecrypted()
        if not waiting:
            self._maybe_undecrypted = False
            return
        results: list[tuple[int, InboxItem | None]] = []
        overdue: list[MegolmEvent] = []
        now_ms = time.time() * 1000
        for item in waiting:
            event = MegolmEvent.from_dict(item.event)
            if not isinstance(event, MegolmEvent):
                results.append((item.seq, None))
                continue
            event.room_id = item.room_id
            try:
                decrypted = self.client.decrypt_event(event)
            except EncryptionError:
                if (
                    event.event_id not in self._told_undecryptable
                    and now_ms - event.server_timestamp >= self.notice_after_s * 1000
                ):
                    overdue.append(event)
                continue
            room = self.client.rooms.get(item.room_id)
            decoded = to_inbox_item(
                decrypted,
                item.room_id,
                bool(room and room.encrypted),
                self.client.user_id,
                bool(room and room.member_count <= 2),
            )
            if self.verifier is not None:
                decoded = self.verifier.screen(decrypted, item.room_id, decoded)
            results.append((item.seq, decoded))
        if not results and not overdue:
            return
        async with self.store.transaction() as tx:
            for seq, decoded in results:
                if decoded is None or decoded.state != "pending":
                    await tx.mark_handled(seq)
                else:
                    await tx.set_decrypted(seq, decoded.payload)
            for event in overdue:
                await tell_undecryptable(
                    tx,
                    room_id=event.room_id,
                    event_id=event.event_id,
                    sent_at=datetime.fromtimestamp(event.server_timestamp / 1000, UTC),
                )
            if self.verifier is not None:
                await self.verifier.write(tx)
        self._told_undecryptable.update(e.event_id for e in overdue)
        if results:
            log.info("decrypted late: events=%d", len(results))
        for event in overdue:
            log.warning("still undecryptable, sender told: event=%s", event.event_id)
        if self.verifier is not None:
            await self.verifier.act()
