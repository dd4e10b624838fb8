"""Drive the use cases through the real store and pipeline, with an in-memory messenger
and a clock the test controls."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.pipeline import Pipeline
from bot.timers import tick
from handlers.ports import OutgoingMessage
from handlers.settings import Settings
from schemas.messages import InboxItem
from storage.engine import Store
from tests.keys import KEYRING
from tests.unit.memory_messenger import MemoryMessenger

TEAM_ROOM = "!team:example.org"
WORKER = "@worker:example.org"
WORKER2 = "@worker2:example.org"
MANAGER = "@manager:example.org"
NURSE = "@nurse:example.org"
# Wednesday 25 November 2026, 10:00 UTC (= London time in winter)
START = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

_ids = itertools.count(1)


@dataclass
class Harness:
    store: Store
    messenger: MemoryMessenger
    pipeline: Pipeline
    now: datetime = START
    rooms: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def open(cls, path: Path, **settings: object) -> Harness:
        store = await Store.open(path, KEYRING)
        messenger = MemoryMessenger()
        base = Settings(
            bot_user_id="@bot:example.org",
            advice_team_room=TEAM_ROOM,
            team=frozenset({WORKER, WORKER2}),
            managers=frozenset({MANAGER}),
        )
        s = Settings(**{**base.__dict__, **settings})  # type: ignore[arg-type]
        h = cls(store, messenger, Pipeline(store, s, messenger))
        store.clock = lambda: h.now
        messenger.encrypted_rooms.add(TEAM_ROOM)
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
        event_id = f"$e{next(_ids)}"
        room = room or self.dm(sender)
        self.messenger.encrypted_rooms.add(room)
        private = (room != TEAM_ROOM) if private is None else private
        ts = int(self.now.timestamp() * 1000)
        async with self.store.transaction() as tx:
            rooms = await tx.add_inbox(
                [
                    InboxItem(
                        event_id,
                        room,
                        sender,
                        ts,
                        True,
                        "pending",
                        {"body": body, "private": private, **(relation or {})},
                    )
                ]
            )
        self.pipeline.kick_rooms(rooms)
        await self.pipeline.wait_idle()
        return event_id

    async def event(
        self, sender: str, payload: dict[str, object], *, room: str | None = None
    ) -> str:
        """Any other stored event (an edit, a redaction), as the sync loop would store it."""
        event_id = f"$x{next(_ids)}"
        room = room or self.dm(sender)
        ts = int(self.now.timestamp() * 1000)
        async with self.store.transaction() as tx:
            rooms = await tx.add_inbox(
                [InboxItem(event_id, room, sender, ts, True, "pending", dict(payload))]
            )
        self.pipeline.kick_rooms(rooms)
        await self.pipeline.wait_idle()
        return event_id

    async def member(self, room: str, user: str, membership: str) -> None:
        """Someone joins, declines (leave) or is invited, as the homeserver would report it."""
        ts = int(self.now.timestamp() * 1000)
        async with self.store.transaction() as tx:
            rooms = await tx.add_inbox(
                [
                    InboxItem(
                        f"$m{next(_ids)}",
                        room,
                        user,
                        ts,
                        True,
                        "pending",
                        {"membership": membership, "target": user},
                    )
                ]
            )
        self.pipeline.kick_rooms(rooms)
        await self.pipeline.wait_idle()

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
