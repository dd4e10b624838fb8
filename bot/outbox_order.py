"""What goes first in a room's outbox, and what goes together.

Summaries for the advice team are gathered into one message under load
(`batchable_run`, used by Pipeline._deliver_batch).

A poll's end waits behind its room's newer messages.

When a guided question is answered, the bot sends the next question and then ends the
answered poll (`org.matrix.msc3381.poll.end`, so it cannot be tapped again). Sent in that
order, the end reaches the homeserver just as a quick practitioner answers the new
question, and the question after that queues behind it there (measured: p99 of answer to
next question 1.4x the echo bot). So the end gives way: any newer message of the room goes
first, and the end itself goes once the room has had no send for `quiet_s`, or after
`max_wait_s` at the latest. Ending a poll late only means it can be tapped meanwhile, and
a tap on an answered poll is already told so (handlers/guided_answers.py).
"""

from __future__ import annotations

import asyncio

from schemas.messages import OutboxRow

# Messages that may be gathered into one under load (Pipeline._deliver_batch).
BATCHED = frozenset({"team_summary"})
MAX_BATCH = 20
MAX_BATCH_BYTES = 24_000
# Outbox purposes that give way to the room's newer messages.
DEFERRED = frozenset({"poll_end"})
QUIET_S = 0.7
MAX_WAIT_S = 10.0


class PollEnds:
    def __init__(self, quiet_s: float = QUIET_S, max_wait_s: float = MAX_WAIT_S) -> None:
        self.quiet_s = quiet_s
        self.max_wait_s = max_wait_s
        self._last_send: dict[str, float] = {}
        self._since: dict[int, float] = {}
        self._news: dict[str, asyncio.Event] = {}
        # How many commits queued something for each room (to notice one that came
        # between reading the queue and starting to wait).
        self._generation: dict[str, int] = {}

    @staticmethod
    def overtaken(row: OutboxRow, rows: list[OutboxRow]) -> bool:
        """True if `row` gives way and a newer row of the room that does not is queued."""
        return row.purpose in DEFERRED and any(
            r.id > row.id and r.purpose not in DEFERRED for r in rows
        )

    def sent(self, room_id: str) -> None:
        self._last_send[room_id] = asyncio.get_running_loop().time()

    def news(self, room_ids: set[str]) -> None:
        """Something was queued for these rooms: a waiting end lets it go first."""
        for room_id in room_ids:
            self._generation[room_id] = self._generation.get(room_id, 0) + 1
            event = self._news.get(room_id)
            if event is not None:
                event.set()

    def generation(self, room_id: str) -> int:
        """Taken before reading the room's queue, and given to `wait_quiet`."""
        return self._generation.get(room_id, 0)

    async def wait_quiet(self, room_id: str, row: OutboxRow, read_at: int) -> bool:
        """Wait until `row` may go. True: something newer was queued since the queue was
        read (at generation `read_at`): read it again; False: send it now."""
        if row.purpose not in DEFERRED:
            return False
        if self.generation(room_id) != read_at:
            return True
        now = asyncio.get_running_loop().time()
        since = self._since.setdefault(row.id, now)
        wait = min(
            self._last_send.get(room_id, -1e9) + self.quiet_s - now,
            since + self.max_wait_s - now,
        )
        if wait <= 0:
            self._since.pop(row.id, None)
            return False
        event = self._news.setdefault(room_id, asyncio.Event())
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), wait)
        except TimeoutError:
            self._since.pop(row.id, None)
            return False
        finally:
            self._news.pop(room_id, None)
        return True


def batchable_run(rows: list[OutboxRow]) -> list[OutboxRow]:
    """The summaries at the head of the queue that may go out as one message: up to
    MAX_BATCH of them and MAX_BATCH_BYTES of text (a Matrix event is at most 64 KiB)."""
    run: list[OutboxRow] = []
    size = 0
    for row in rows:
        if row.purpose in DEFERRED and not run:
            continue  # gives way (this module)
        if row.purpose not in BATCHED or row.batch is not None or len(run) == MAX_BATCH:
            break
        size += len(row.message.body.encode()) + len(row.message.html.encode())
        if run and size > MAX_BATCH_BYTES:
            break
        run.append(row)
    return run
