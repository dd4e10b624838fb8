"""One worker task per room with work to do: order within a room, no waiting across rooms."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from storage.disk_faults import WriteFaults, is_disk_fault

log = logging.getLogger(__name__)


class RoomWorkers:
    """Runs `work(room_id)` for each kicked room, one at a time per room.

    `work` must process everything that is pending for the room and return. A kick that
    arrives while the room's worker is busy makes it run once more, so nothing kicked is
    left waiting.

    When `work` fails because the database cannot be written (`faults`), the room's work is
    left as it is (nothing was stored) and tried again once writing works, or every
    `FAULT_RETRY_S`; the fault is logged once a minute by `faults`, not here per room.
    """

    FAULT_RETRY_S = 10.0

    def __init__(
        self,
        name: str,
        work: Callable[[str], Awaitable[None]],
        faults: WriteFaults | None = None,
    ) -> None:
        self._name = name
        self._work = work
        self._faults = faults
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        # Set by `cancel` (the bot stopping, its store about to close): a kick that comes
        # later (a delayed look at a held room, an after-commit hook) starts nothing.
        self._stopped = False

    def kick(self, room_id: str) -> None:
        if self._stopped:
            return
        if room_id in self._tasks:
            self._again.add(room_id)
            return
        self._tasks[room_id] = asyncio.create_task(
            self._run(room_id), name=f"{self._name}:{room_id}"
        )

    def kick_all(self, room_ids: Iterable[str]) -> None:
        for room_id in room_ids:
            self.kick(room_id)

    async def _run(self, room_id: str) -> None:
        try:
            while True:
                self._again.discard(room_id)
                try:
                    await self._work(room_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a bug must not kill the room's queue for good
                    if self._faults is not None and is_disk_fault(exc):
                        await self._faults.wait_writable(self.FAULT_RETRY_S)
                        continue
                    log.error(
                        "%s worker failed: room=%s error=%s",
                        self._name,
                        room_id,
                        type(exc).__name__,
                    )
                    await asyncio.sleep(1)
                    self._again.add(room_id)
                if room_id not in self._again:
                    break
        finally:
            self._tasks.pop(room_id, None)

    @property
    def busy(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def cancel(self) -> None:
        self._stopped = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
