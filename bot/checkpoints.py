"""Checkpoints: every running record's chain head, anchored outside the database.

The hash chain in the database shows an entry changed, inserted or removed in the middle,
but not its newest entries deleted, a whole referral deleted, or the database file
replaced by an older copy: nothing outside the file remembered how far each chain went.
So every few seconds, when there are new running-record entries, the bot appends a line
to a file outside `data_dir` (and, if configured, posts its counts and digest to an
encrypted audit room):

    {"n": 42, "at": ..., "kind": "update", "referrals": 1234, "entries": 5678,
     "last_entry": 9012, "digest": <hex>, "changed": [[REF, entries, leaf], ...],
     "gone": [...], "key": <key id>, "prev": <previous line's mac>, "mac": <hex>}

- `leaf` = HMAC(ref, entries, hash of the newest entry) for each referral whose record
  grew since the previous line, so `verify` can name the referral that disagrees;
- `digest` = XOR of the leaves of every referral, kept up to date from line to line, so
  one value stands for the whole database (that is what goes to the audit room);
- `mac` = HMAC of the line, `prev` = the previous line's `mac`: a line removed, changed or
  inserted breaks the sequence. All keys are derived from `storage.database_key`.

The file is opened O_APPEND, created 0600, locked (flock) while a line is added, and
fsynced. The first line of a file (and one after a key rotation) lists every referral.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from bot.checkpoint_file import LAST_KEY, ZERO, CheckpointFile, Line, canonical, now_text, xor_hex
from bot.checkpoint_verify import Recorded, replay
from handlers.ports import OutgoingMessage
from handlers.render import Doc
from storage.checkpoints import RecordHead
from storage.engine import Store
from storage.keyring import Keyring
from storage.tx import Tx

log = logging.getLogger(__name__)

T = TypeVar("T")


async def full_line(
    tx: Tx, keyring: Keyring, prev: Line | None, *, kind: str, note: str = "", at: str = ""
) -> Line:
    """A line listing every referral (a new file, after a key rotation, or a database that
    no longer matches the file)."""
    upto = await tx.record_max_id()
    heads = await tx.record_heads(upto)
    digest = ZERO
    changed: list[list[Any]] = []
    for h in heads:
        leaf = keyring.checkpoint_leaf(h.ref, h.entries, h.head)
        digest = xor_hex(digest, leaf)
        changed.append([h.ref, h.entries, leaf.hex()])
    return Line(
        n=1 if prev is None else prev.n + 1,
        at=at or now_text(),
        kind=kind,
        referrals=len(heads),
        entries=sum(h.entries for h in heads),
        last_entry=upto,
        digest=digest,
        key=keyring.checkpoint_key_id(),
        prev="" if prev is None else prev.mac,
        changed=changed,
        note=note,
    )


async def next_line(tx: Tx, keyring: Keyring, prev: Line) -> Line | None:
    """The line for the entries added since `prev`, or None if there are none. Reads only
    the referrals whose record grew (index lookups), however many there are."""
    upto = await tx.record_max_id()
    if upto <= prev.last_entry:
        return None
    window = (prev.last_entry, upto)
    new = await tx.record_heads(upto, window)
    old: dict[int, RecordHead] = {
        h.referral_id: h for h in await tx.record_heads(prev.last_entry, window)
    }
    digest, referrals, entries = prev.digest, prev.referrals, prev.entries
    changed: list[list[Any]] = []
    for h in new:
        before = old.get(h.referral_id)
        if before is None:
            referrals += 1
        else:
            digest = xor_hex(
                digest, keyring.checkpoint_leaf(before.ref, before.entries, before.head)
            )
            entries -= before.entries
        leaf = keyring.checkpoint_leaf(h.ref, h.entries, h.head)
        digest = xor_hex(digest, leaf)
        entries += h.entries
        changed.append([h.ref, h.entries, leaf.hex()])
    return Line(
        n=prev.n + 1,
        at=now_text(),
        kind="update",
        referrals=referrals,
        entries=entries,
        last_entry=upto,
        digest=digest,
        key=keyring.checkpoint_key_id(),
        prev=prev.mac,
        changed=changed,
    )


def gone_line(
    keyring: Keyring, prev: Line, recorded: dict[str, Recorded], gone: list[str], max_id: int
) -> Line:
    """The line that takes purged referrals out of the checkpoints (`referral-bot purge`).

    `max_id`: the newest entry number left after the purge. SQLite numbers a new entry
    one above the highest left, so if the purge took the newest entries, the next ones
    reuse numbers the previous line had covered: the line covers only up to `max_id`."""
    digest, referrals, entries = prev.digest, prev.referrals, prev.entries
    for ref in gone:
        r = recorded.get(ref)
        if r is None:
            continue
        digest = xor_hex(digest, bytes.fromhex(r.leaf))
        referrals -= 1
        entries -= r.entries
    return Line(
        n=prev.n + 1,
        at=now_text(),
        kind="purge",
        referrals=referrals,
        entries=entries,
        last_entry=min(prev.last_entry, max_id),
        digest=digest,
        key=keyring.checkpoint_key_id(),
        prev=prev.mac,
        gone=sorted(gone),
    )


def append_purged(path: Path, keyring: Keyring, gone: list[str], max_id: int) -> Line | None:
    """`referral-bot purge`: record in the file that these referrals were purged (under
    the file's lock, so a running bot's next line follows this one). Call it inside the
    purge's transaction: if it fails, nothing is purged."""
    if not gone or not path.exists():
        return None
    cfile = CheckpointFile(path)
    with cfile.locked() as fd:
        report = replay(cfile.read_lines(), keyring)
        if report.last is None:
            return None
        line = gone_line(keyring, report.last, report.recorded, gone, max_id)
        CheckpointFile.append(fd, line.seal(keyring))
    return line


async def append_rekeyed(tx: Tx, path: Path, keyring: Keyring) -> Line | None:
    """`referral-bot rotate-key`: a line listing every referral under the new key,
    following the file's last line (whatever key signed it)."""
    if not path.exists():
        return None
    cfile = CheckpointFile(path)
    with cfile.locked() as fd:
        text = CheckpointFile.last_text(fd)
        try:
            prev = None if text is None else Line.parse(text)
        except ValueError:  # verify reports the damaged line; the new one starts afresh
            prev = None
        line = await full_line(tx, keyring, prev, kind="rekey", note="database key rotated")
        CheckpointFile.append(fd, line.seal(keyring))
    await tx.set_kv(LAST_KEY, canonical({"n": line.n, "mac": line.mac, "at": line.at}))
    return line


# -- the bot's side ------------------------------------------------------------------------


class Anchor:
    """Writes the bot's checkpoints. `checkpoint()` is called by a background task every
    `checkpoint_seconds`, never on the acknowledgement's path; it reads through the
    store's second (read-only) connection, so it does not hold up the writer."""

    def __init__(
        self,
        store: Store,
        path: Path,
        *,
        audit_room: str | None = None,
        audit_interval_s: float = 300.0,
    ) -> None:
        self.store = store
        self.keyring = store.keyring
        self.file = CheckpointFile(path)
        self.audit_room = audit_room
        self.audit_interval_s = audit_interval_s
        self._last: Line | None = None
        self._size = -1  # the file's size after our last write; -1: read it afresh
        self._checked = False
        self._last_intact = True
        self._last_posted_at = -1e18
        self.written = 0
        # Called with the rooms that got a message to send (the audit room).
        self.on_enqueued: Any = None

    async def checkpoint(self) -> Line | None:
        """Append a line if there are new running-record entries; None if there were none
        (or `referral-bot purge` holds the file: the next call catches up)."""
        loop = asyncio.get_running_loop()
        try:
            with self.file.locked(wait=False) as fd:
                line = await self._write(loop, fd)
        except BlockingIOError:
            return None
        if line is None:
            return None
        self._last = line
        self.written += 1
        await self._after_write(line)
        log.info(
            "checkpoint written: n=%d kind=%s referrals=%d entries=%d changed=%d",
            line.n,
            line.kind,
            line.referrals,
            line.entries,
            len(line.changed),
        )
        return line

    async def _write(self, loop: asyncio.AbstractEventLoop, fd: int) -> Line | None:
        size = await _in_thread(loop, CheckpointFile.size, fd)
        if size != self._size:
            await _in_thread(loop, self._reload, fd)
        async with self.store.reading() as tx:
            line = await self._compute(tx)
        if line is None:
            return None
        text = line.seal(self.keyring)
        self._size = await _in_thread(loop, CheckpointFile.append, fd, text)
        return line

    def _reload(self, fd: int) -> None:
        """Someone else wrote (or this is the first call): read the file's last line."""
        self._size = CheckpointFile.size(fd)
        text = CheckpointFile.last_text(fd)
        if text is None:
            self._last = None
            return
        try:
            self._last = Line.parse(text)
        except ValueError:
            log.error(
                "the checkpoint file's last line is damaged: starting over with a full "
                "checkpoint (run referral-bot verify): file=%s",
                self.file.path,
            )
            self._last = None
            self._checked = False
            return
        self._last_intact = self._last.intact(self.keyring)  # here, off the event loop
        if not self._last_intact:
            log.error(
                "the checkpoint file's last line does not verify with this database key "
                "(changed, or another key): writing a full checkpoint (run referral-bot verify)"
            )
            self._checked = False

    async def _compute(self, tx: Tx) -> Line | None:
        prev = self._last
        if prev is None:
            self._checked = True
            return await full_line(tx, self.keyring, None, kind="base")
        if not self._checked:
            # First checkpoint of this run: does the database still reach as far as the
            # file says? If not (an older copy restored, entries deleted), say so and list
            # every referral afresh; `verify` reports what went missing.
            self._checked = True
            problem = await self._mismatch(tx, prev)
            if problem is not None:
                log.error(
                    "the database is behind the checkpoint file (%s): %s; run referral-bot "
                    "verify. A full checkpoint follows.",
                    prev.when,
                    problem,
                )
                return await full_line(tx, self.keyring, prev, kind="base", note=problem)
        return await next_line(tx, self.keyring, prev)

    async def _mismatch(self, tx: Tx, prev: Line) -> str | None:
        if not self._last_intact or prev.key != self.keyring.checkpoint_key_id():
            return "the last line does not verify with this database key"
        upto = await tx.record_max_id()
        if upto < prev.last_entry:
            return (
                f"the newest running-record entry is number {upto}, the checkpoint "
                f"recorded up to {prev.last_entry}"
            )
        # Counted through the primary key: cheap with 100,000 referrals (docs/SECURITY.md).
        entries = await tx.record_entry_count(prev.last_entry)
        if entries != prev.entries:
            return (
                f"{entries} running-record entries up to entry number {prev.last_entry}, "
                f"the checkpoint recorded {prev.entries}"
            )
        return None

    async def _after_write(self, line: Line) -> None:
        """Remember the checkpoint in the database; post it to the audit room if due."""
        loop = asyncio.get_running_loop()
        post = self.audit_room is not None and (
            loop.time() - self._last_posted_at >= self.audit_interval_s
        )
        async with self.store.transaction() as tx:
            await tx.set_kv(LAST_KEY, canonical({"n": line.n, "mac": line.mac, "at": line.at}))
            if post:
                assert self.audit_room is not None
                await tx.enqueue(
                    audit_message(self.audit_room, line),
                    txn_id=f"checkpoint-{line.n}-{line.mac[:16]}",
                    purpose="checkpoint",
                )
            rooms = tx.touched_rooms
        if post:
            self._last_posted_at = loop.time()
            if self.on_enqueued is not None:
                self.on_enqueued(rooms)


async def _in_thread(loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking file work in a thread. Cancelled (shutdown), it still waits for the
    thread to finish before the file is closed: a descriptor is never closed under it."""
    future = loop.run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


def audit_message(room_id: str, line: Line) -> OutgoingMessage:
    """Counts and digests only: no reference, no name, nothing personal."""
    body, html = (
        Doc()
        .para(f"Running-record checkpoint {line.n}, {line.at}", strong=True)
        .fields(
            ("Referrals", str(line.referrals)),
            ("Running-record entries", str(line.entries)),
            ("Digest of every chain head", line.digest),
            ("Line digest", line.mac),
        )
        .para(
            "Compare with the last line of the checkpoint file: `referral-bot verify` prints both."
        )
        .render()
    )
    return OutgoingMessage(room_id, body, html, sensitive=False)


async def run_checkpoints(anchor: Anchor, interval_s: float) -> None:
    """The background task: a checkpoint every `interval_s` seconds when there is news."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await anchor.checkpoint()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("checkpoint failed: %s: %s", type(exc).__name__, exc)
