"""The one unit-test bot: the real store and pipeline with an in-memory messenger
(tests/unit/memory_messenger.py), fed through the inbox as the sync loop feeds it.

- `Harness`: the advice team's view. People (`NURSE`, `WORKER` …) write from their own
  DMs or the team room, and the clock is the test's (`h.now`, `h.tick()`).
- `Rig` (also importable from tests/unit/rig.py): the storage tests' view. One DM, one
  nurse, the real clock, nobody in the team.

Both put messages into the inbox one way, `inject`: stored in one transaction, then the
rooms handed to the workers, as the sync loop does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bot.pipeline import Pipeline
from bot.timers import tick
from handlers.ports import OutgoingMessage
from handlers.settings import Settings
from schemas.messages import InboxItem
from storage.engine import Store
from storage.keyring import Keyring
from tests.engines import location
from tests.keys import KEYRING
from tests.unit.memory_messenger import MemoryMessenger

BOT = "@bot:example.org"
TEAM_ROOM = "!team:example.org"
DM = "!dm:example.org"
WORKER = "@worker:example.org"
WORKER2 = "@worker2:example.org"
MANAGER = "@manager:example.org"
NURSE = "@nurse:example.org"
# Wednesday 25 November 2026, 10:00 UTC (= London time in winter)
START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
# Longest a test waits for the workers to finish: a hang fails the test, not the run.
IDLE_TIMEOUT_S = 30.0

_ids = itertools.count(1)


def ms(at: datetime) -> int:
    """An event's origin_server_ts."""
    return int(at.timestamp() * 1000)


async def inject(store: Store, pipeline: Pipeline, *items: InboxItem, wait: bool = True) -> None:
    """What the sync loop does with a sync response: store the events in one transaction,
    hand their rooms to the workers and (unless `wait` is false) wait until all is done."""
    async with store.transaction() as tx:
        rooms = await tx.add_inbox(items)
    pipeline.kick_rooms(rooms)
    if wait:
        await asyncio.wait_for(pipeline.wait_idle(), IDLE_TIMEOUT_S)


@dataclass
class BotUnderTest:
    store: Store
    messenger: MemoryMessenger
    pipeline: Pipeline

    @staticmethod
    async def _start(
        path: Path, keyring: Keyring, settings: Settings
    ) -> tuple[Store, MemoryMessenger, Pipeline]:
        store = await Store.open(location(path), keyring)
        messenger = MemoryMessenger(encrypted_rooms={TEAM_ROOM})
        pipeline = Pipeline(store, settings, messenger)
        # A poll's end still gives way to newer messages, without waiting for quiet
        # (tests/unit/test_outbox_order.py waits).
        pipeline.poll_ends.quiet_s = 0.0
        return store, messenger, pipeline

    async def inject(self, *items: InboxItem, wait: bool = True) -> None:
        await inject(self.store, self.pipeline, *items, wait=wait)

    async def close(self) -> None:
        await self.pipeline.stop()
        await self.store.close()


@dataclass
class Harness(BotUnderTest):
    now: datetime = START
    rooms: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def open(cls, path: Path, keyring: Keyring = KEYRING, **settings: Any) -> Harness:
        """`settings`: fields of `handlers.settings.Settings` to change (each of its own
        type: `dataclasses.replace` checks the names)."""
        base = Settings(
            bot_user_id=BOT,
            advice_team_room=TEAM_ROOM,
            team=frozenset({WORKER, WORKER2}),
            managers=frozenset({MANAGER}),
        )
        h = cls(*await cls._start(path, keyring, dataclasses.replace(base, **settings)))
        h.store.clock = lambda: h.now
        return h

    def dm(self, user: str) -> str:
        room = self.rooms.setdefault(user, f"!dm-{user[1:].split(':')[0]}:example.org")
        self.messenger.encrypted_rooms.add(room)
        return room

    async def send(
        self,
        sender: str,
        body: str,
        *,
        room: str | None = None,
        private: bool | None = None,
        relation: dict[str, object] | None = None,
    ) -> str:
        """`relation`: inbox payload keys from the event's m.relates_to (bot/events.py)."""
        room = room or self.dm(sender)
        self.messenger.encrypted_rooms.add(room)
        private = (room != TEAM_ROOM) if private is None else private
        payload = {"body": body, "private": private, **(relation or {})}
        return await self._event(f"$e{next(_ids)}", room, sender, payload)

    async def event(
        self, sender: str, payload: dict[str, object], *, room: str | None = None
    ) -> str:
        """Any other stored event (an edit, a redaction), as the sync loop would store it."""
        return await self._event(f"$x{next(_ids)}", room or self.dm(sender), sender, payload)

    async def member(self, room: str, user: str, membership: str) -> None:
        """Someone joins, declines (leave) or is invited, as the homeserver would report it."""
        await self._event(f"$m{next(_ids)}", room, user, {"membership": membership, "target": user})

    async def _event(
        self, event_id: str, room: str, sender: str, payload: dict[str, object]
    ) -> str:
        item = InboxItem(event_id, room, sender, ms(self.now), True, "pending", dict(payload))
        await self.inject(item)
        return event_id

    async def tick(self, advance: timedelta = timedelta(0)) -> int:
        self.now += advance
        queued = await tick(self.pipeline)
        await self.pipeline.wait_idle()
        return queued

    def replies_to(self, event_id: str) -> list[OutgoingMessage]:
        return [m for _, m in self.messenger.sent if m.reply_to == event_id]

    def reply(self, event_id: str) -> str:
        found = self.replies_to(event_id)
        assert len(found) == 1, [m.body for m in found]
        return found[0].body

    def thread(self, root: str) -> list[OutgoingMessage]:
        return [m for _, m in self.messenger.sent if m.thread_root == root and m.reply_to is None]

    def team(self) -> list[OutgoingMessage]:
        return [m for _, m in self.messenger.sent if m.room_id == TEAM_ROOM]


@dataclass
class Rig(BotUnderTest):
    @classmethod
    async def open(cls, db_path: Path, keyring: Keyring = KEYRING) -> Rig:
        rig = cls(*await cls._start(db_path, keyring, Settings(BOT, TEAM_ROOM)))
        rig.messenger.encrypted_rooms.add(DM)
        return rig

    async def send(
        self,
        body: str,
        *,
        room: str = DM,
        sender: str = NURSE,
        at: datetime = START,
        event_id: str | None = None,
        encrypted: bool = True,
    ) -> str:
        event_id = event_id or f"$rig{next(_ids)}"
        payload = {"body": body} if encrypted else {"withheld": True}
        await self.inject(InboxItem(event_id, room, sender, ms(at), encrypted, "pending", payload))
        return event_id


@asynccontextmanager
async def rig_at(db_path: Path, keyring: Keyring = KEYRING) -> AsyncIterator[Rig]:
    """A `Rig` closed even when the test fails (an open aiosqlite connection keeps a
    thread alive and would hang the test run)."""
    rig = await Rig.open(db_path, keyring)
    try:
        yield rig
    finally:
        await rig.close()
