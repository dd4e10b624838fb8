"""What every part of a transaction shares: one connection, one clock reading, the keyring,
and what the transaction left for the workers to do once it commits.

Each domain module (kv, inbox, referrals …) is a mixin over `TxBase`; `storage.tx.Tx`
composes them into the one transaction type the use cases see. A domain that needs
another declares it as its base class (the outbox writes to the running record).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from storage.keyring import Keyring
from storage.sql import Connection


@dataclass(frozen=True)
class Committed:
    """What a committed transaction left for the workers: rooms with new outgoing
    messages, rooms with new inbox events to handle, and whether room jobs were added.
    `Store.on_commit` receives it after every commit that left any of these."""

    outbox_rooms: frozenset[str] = frozenset()
    inbox_rooms: frozenset[str] = frozenset()
    room_jobs: bool = False
    # Rooms with new files to fetch (storage/attachments.py).
    attachment_rooms: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(
            self.outbox_rooms or self.inbox_rooms or self.room_jobs or self.attachment_rooms
        )


class TxBase:
    """Statements inside one open transaction. Obtain it from `Store.transaction()`."""

    def __init__(self, db: Connection, now: datetime, keyring: Keyring) -> None:
        self._db = db
        self._keyring = keyring
        self.now = now
        # Rooms that got a new outgoing message in this transaction.
        self.touched_rooms: set[str] = set()
        # Rooms that got a new inbox event to handle.
        self.inbox_rooms: set[str] = set()
        self.room_jobs_added = False
        self.attachment_rooms: set[str] = set()
        self._before_savepoint = Committed()

    def committed(self) -> Committed:
        """The work this transaction leaves for the workers once it commits."""
        return Committed(
            frozenset(self.touched_rooms),
            frozenset(self.inbox_rooms),
            self.room_jobs_added,
            frozenset(self.attachment_rooms),
        )

    # -- savepoints: undo part of a transaction (a refused command) ----------------------

    async def savepoint(self) -> None:
        await self._db.execute("SAVEPOINT command")
        self._before_savepoint = self.committed()

    async def rollback_to_savepoint(self) -> None:
        await self._db.execute("ROLLBACK TO SAVEPOINT command")
        await self._db.execute("RELEASE SAVEPOINT command")
        before = self._before_savepoint
        self.touched_rooms = set(before.outbox_rooms)
        self.inbox_rooms = set(before.inbox_rooms)
        self.room_jobs_added = before.room_jobs
        self.attachment_rooms = set(before.attachment_rooms)

    async def release_savepoint(self) -> None:
        await self._db.execute("RELEASE SAVEPOINT command")
