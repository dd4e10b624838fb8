"""When the database cannot be written: notice it, say it (once a minute), wait, resume.

A disk that is full, an I/O error or a read-only file make SQLite refuse writes (on
PostgreSQL: the server's disk_full, io_error and read_only_sql_transaction errors). The
transaction that met it rolled back whole, so nothing half-done is stored and nothing that
was not stored is acknowledged. What must not happen then is what a bug in a handler
causes: telling the sender "nothing was recorded" and marking the message handled (that
would need a write too, and would lose a referral the bot could take a minute later).
Instead every writer (sync loop, room workers, deadline clock) leaves its work where it
is and waits for `wait_writable()`; `/healthz` reports the reason; a probe that needs
fresh space retries every few seconds and, once it succeeds, wakes everyone, so the bot
catches up by itself, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# Primary SQLite result codes that mean "this database cannot be written now", as opposed
# to a bug in the statement (a constraint, a syntax error): retrying later is right.
_NOT_WRITABLE = {
    5: "database locked",  # SQLITE_BUSY: another process held the lock past busy_timeout
    6: "database locked",  # SQLITE_LOCKED
    8: "read-only",  # SQLITE_READONLY (and its extended codes)
    10: "I/O error",  # SQLITE_IOERR
    13: "disk full",  # SQLITE_FULL
    14: "cannot open",  # SQLITE_CANTOPEN
}
# PostgreSQL (asyncpg) errors by SQLSTATE that mean the same. Anything else from
# PostgreSQL (constraints, serialisation, a lost session: Store.lost) is not a disk fault.
_PG_NOT_WRITABLE = {
    "53100": "disk full",  # disk_full
    "58030": "I/O error",  # io_error
    "25006": "read-only",  # read_only_sql_transaction (e.g. a standby)
}
LOG_EVERY_S = 60.0
PROBE_EVERY_S = 2.0


def fault_reason(exc: BaseException) -> str | None:
    """A short fixed phrase if `exc` (or what it was raised from) is a write the database
    refused for want of disk, else None."""
    seen: BaseException | None = exc
    for _ in range(3):
        if seen is None:
            return None
        if isinstance(seen, sqlite3.Error):
            code = getattr(seen, "sqlite_errorcode", None)
            if code is not None:
                return _NOT_WRITABLE.get(code & 0xFF)
            # Python's sqlite3 sets the code on errors from SQLite itself; fall back to
            # the messages SQLite uses for these codes.
            text = str(seen).lower()
            for phrase, reason in (
                ("disk is full", "disk full"),
                ("disk i/o error", "I/O error"),
                ("readonly database", "read-only"),
                ("database is locked", "database locked"),
            ):
                if phrase in text:
                    return reason
            return None
        sqlstate = getattr(seen, "sqlstate", None)
        if isinstance(sqlstate, str) and type(seen).__module__.startswith("asyncpg"):
            return _PG_NOT_WRITABLE.get(sqlstate)
        seen = seen.__cause__
    return None


def is_disk_fault(exc: BaseException) -> bool:
    return fault_reason(exc) is not None


class WriteFaults:
    """The database's write health, shared by every writer of one store.

    `note(exc)` is called with every exception a write transaction ends with; a disk
    fault makes the state "not writable" until `probe` (a write that needs fresh pages)
    succeeds. Successful ordinary transactions do not clear it: a small update can fit
    into a page that is already there while the next referral cannot.
    """

    def __init__(self, probe: Callable[[], Awaitable[None]]) -> None:
        self._probe = probe
        self.reason: str | None = None
        self.since = 0.0  # monotonic time the current fault began
        self.refused = 0  # writes refused since then
        self.episodes = 0  # faults since start (each ended by a successful probe)
        self._last_log = 0.0
        self._writable = asyncio.Event()
        self._writable.set()
        self._watcher: asyncio.Task[None] | None = None
        # Called (and awaited) once writing works again: pick up what waited.
        self.on_recovered: list[Callable[[], Awaitable[None]]] = []

    @property
    def active(self) -> bool:
        return self.reason is not None

    def note(self, exc: BaseException) -> bool:
        """Record a failed write; True if it was a disk fault."""
        reason = fault_reason(exc)
        if reason is None:
            return False
        now = time.monotonic()
        self.refused += 1
        if self.reason is None:
            self.reason = reason
            self.since = now
            self._last_log = now
            self.episodes += 1
            self._writable.clear()
            log.error(
                "database not writable (%s): nothing more is stored or acknowledged until it "
                "is; work waits and is retried",
                reason,
            )
            with contextlib.suppress(RuntimeError):  # no running loop: nobody to wake
                self._watcher = asyncio.get_running_loop().create_task(
                    self._watch(), name="disk-fault-probe"
                )
        else:
            self.reason = reason
            if now - self._last_log >= LOG_EVERY_S:
                self._last_log = now
                log.error(
                    "database still not writable (%s) after %.0f s; %d writes refused so far",
                    reason,
                    now - self.since,
                    self.refused,
                )
        return True

    async def wait_writable(self, timeout: float) -> None:
        """Until writing works again, or `timeout` seconds (then the caller simply retries)."""
        if self._writable.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._writable.wait(), timeout)

    async def _watch(self) -> None:
        while self.reason is not None:
            await asyncio.sleep(PROBE_EVERY_S)
            try:
                await self._probe()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a disk fault was noted by the probe's transaction
                if fault_reason(exc) is None:
                    log.warning("disk probe failed: %s", type(exc).__name__)
                continue
            log.warning(
                "database writable again after %.0f s (%d writes had been refused); catching up",
                time.monotonic() - self.since,
                self.refused,
            )
            self.reason = None
            self.refused = 0
            self._writable.set()
            for callback in list(self.on_recovered):
                try:
                    await callback()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a new fault starts a new watcher (note())
                    if fault_reason(exc) is None:
                        log.error("catching up failed: %s", type(exc).__name__)
            return

    async def close(self) -> None:
        task, self._watcher = self._watcher, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
