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
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from handlers.ports import OutgoingMessage
from handlers.render import Doc
from schemas.config import ConfigError
from storage.checkpoints import RecordHead
from storage.engine import Store
from storage.keyring import Keyring
from storage.tx import Tx

log = logging.getLogger(__name__)

T = TypeVar("T")
# The database remembers the last checkpoint written, so a file cut short shows.
LAST_KEY = "checkpoint_last"
ZERO = "0" * 64


def _xor(a: str, b: bytes) -> str:
    return (int(a, 16) ^ int.from_bytes(b, "big")).to_bytes(32, "big").hex()


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


@dataclass
class Line:
    """One checkpoint, as written to (and read back from) the file."""

    n: int
    at: str
    kind: str  # base | update | purge | rekey
    referrals: int
    entries: int
    last_entry: int
    digest: str
    key: str
    prev: str
    changed: list[list[Any]] = field(default_factory=list)  # [ref, entries, leaf hex]
    gone: list[str] = field(default_factory=list)
    note: str = ""
    mac: str = ""

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "n": self.n,
            "at": self.at,
            "kind": self.kind,
            "referrals": self.referrals,
            "entries": self.entries,
            "last_entry": self.last_entry,
            "digest": self.digest,
            "key": self.key,
            "prev": self.prev,
            "changed": self.changed,
            "gone": self.gone,
        }
        if self.note:
            data["note"] = self.note
        return data

    def seal(self, keyring: Keyring) -> str:
        self.mac = keyring.checkpoint_mac(_canonical(self.body()))
        return _canonical({**self.body(), "mac": self.mac}) + "\n"

    @classmethod
    def parse(cls, text: str) -> Line:
        """Raises ValueError if the text is not a checkpoint line."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        try:
            line = cls(
                n=int(data["n"]),
                at=str(data["at"]),
                kind=str(data["kind"]),
                referrals=int(data["referrals"]),
                entries=int(data["entries"]),
                last_entry=int(data["last_entry"]),
                digest=str(data["digest"]),
                key=str(data["key"]),
                prev=str(data["prev"]),
                changed=[[str(c[0]), int(c[1]), str(c[2])] for c in data["changed"]],
                gone=[str(g) for g in data["gone"]],
                note=str(data.get("note", "")),
                mac=str(data["mac"]),
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"missing or wrong field: {exc}") from None
        return line

    def intact(self, keyring: Keyring) -> bool:
        return keyring.checkpoint_mac(_canonical(self.body())) == self.mac

    @property
    def when(self) -> str:
        return f"checkpoint {self.n} at {self.at}"


# -- the file ------------------------------------------------------------------------------


class CheckpointFile:
    """The append-only file. Blocking calls: the bot runs them in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def locked(self, *, wait: bool = True) -> Iterator[int]:
        """The file opened for appending (created 0600) and locked against other writers
        (a `purge` beside the running bot). `wait=False`: BlockingIOError if locked."""
        created = not self.path.exists()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if created:
                _fsync_dir(self.path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def size(fd: int) -> int:
        return os.fstat(fd).st_size

    @staticmethod
    def last_text(fd: int) -> str | None:
        """The last line of the file, or None if it is empty."""
        end = os.fstat(fd).st_size
        if end == 0:
            return None
        chunks: list[bytes] = []
        pos = end
        trailing = True  # skipping the newline(s) that end the file
        while pos > 0:
            step = min(64 * 1024, pos)
            pos -= step
            chunk = os.pread(fd, step, pos)
            if trailing:
                chunk = chunk.rstrip(b"\n")
                trailing = not chunk
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                chunks.append(chunk[cut + 1 :])
                break
            chunks.append(chunk)
        return b"".join(reversed(chunks)).decode("utf-8", "replace")

    @staticmethod
    def append(fd: int, text: str) -> int:
        """Write one line whole and fsync it; the file's new size."""
        data = text.encode("utf-8")
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to the checkpoint file ({written} of {len(data)})")
        os.fsync(fd)
        return os.fstat(fd).st_size

    def read_lines(self) -> list[str]:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f if line.strip()]


def check_appendable(path: Path) -> None:
    """ConfigError if the checkpoint file cannot be created or appended to."""
    try:
        with CheckpointFile(path).locked(wait=False):
            pass
    except BlockingIOError:
        pass  # `referral-bot purge` is adding a line
    except OSError as exc:
        raise ConfigError(
            [f"integrity.checkpoint_file: cannot open {path} for appending: {exc.strerror}"]
        ) from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- computing a checkpoint ----------------------------------------------------------------


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
        digest = _xor(digest, leaf)
        changed.append([h.ref, h.entries, leaf.hex()])
    return Line(
        n=1 if prev is None else prev.n + 1,
        at=at or _now(),
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
            digest = _xor(digest, keyring.checkpoint_leaf(before.ref, before.entries, before.head))
            entries -= before.entries
        leaf = keyring.checkpoint_leaf(h.ref, h.entries, h.head)
        digest = _xor(digest, leaf)
        entries += h.entries
        changed.append([h.ref, h.entries, leaf.hex()])
    return Line(
        n=prev.n + 1,
        at=_now(),
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
        digest = _xor(digest, bytes.fromhex(r.leaf))
        referrals -= 1
        entries -= r.entries
    return Line(
        n=prev.n + 1,
        at=_now(),
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
    await tx.set_kv(LAST_KEY, _canonical({"n": line.n, "mac": line.mac, "at": line.at}))
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
            await tx.set_kv(LAST_KEY, _canonical({"n": line.n, "mac": line.mac, "at": line.at}))
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


# -- verify's side -------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What the checkpoints last said about one referral."""

    entries: int
    leaf: str
    line: int  # line number in the file
    when: str


@dataclass
class AnchorReport:
    lines: int = 0
    last: Line | None = None
    last_line: int = 0
    problems: list[str] = field(default_factory=list)
    recorded: dict[str, Recorded] = field(default_factory=dict)


def replay(texts: list[str], keyring: Keyring) -> AnchorReport:
    """Check the file on its own: every line whole, signed, and following the one before;
    and what it last said about each referral (from the last key rotation on)."""
    report = AnchorReport(lines=len(texts))
    key_id = keyring.checkpoint_key_id()
    lines: list[tuple[int, Line]] = []
    for number, text in enumerate(texts, start=1):
        try:
            lines.append((number, Line.parse(text)))
        except ValueError:
            report.problems.append(
                f"checkpoint file line {number} is not a checkpoint (damaged or edited)"
            )
    # Lines from before the last key rotation are signed with the old key: only their
    # sequence is checked.
    start = 0
    for i, (_, line) in enumerate(lines):
        if line.kind == "rekey" and line.key == key_id:
            start = i
    prev: Line | None = None
    digest = ZERO
    digest_told = False
    for i, (number, line) in enumerate(lines):
        if prev is None:
            if line.n != 1 or line.prev != "":
                report.problems.append(
                    f"checkpoint file line {number} ({line.when}) is not checkpoint 1: "
                    "the lines before it were removed"
                )
        elif line.n != prev.n + 1 or line.prev != prev.mac:
            report.problems.append(
                f"checkpoint file line {number} ({line.when}) does not follow the line "
                f"before it ({prev.when}): a line was removed, inserted or changed"
            )
        prev = line
        if i < start:
            continue
        if line.key != key_id or not line.intact(keyring):
            report.problems.append(
                f"checkpoint file line {number} ({line.when}) does not verify with this "
                "database key: the line was changed"
            )
            continue
        if line.kind == "rekey":
            report.recorded.clear()
            digest = ZERO
        for ref, count, leaf in line.changed:
            before = report.recorded.get(ref)
            if before is not None:
                if count < before.entries:
                    report.problems.append(
                        f"{ref}: checkpoint file line {number} ({line.when}) records "
                        f"{count} running-record entries, fewer than the {before.entries} "
                        f"of line {before.line} ({before.when}): entries were removed from "
                        "the database while the bot ran, or an older copy was put back"
                    )
                digest = _xor(digest, bytes.fromhex(before.leaf))
            digest = _xor(digest, bytes.fromhex(leaf))
            report.recorded[ref] = Recorded(count, leaf, number, line.when)
        for ref in line.gone:
            gone = report.recorded.pop(ref, None)
            if gone is not None:
                digest = _xor(digest, bytes.fromhex(gone.leaf))
        if (digest != line.digest or len(report.recorded) != line.referrals) and not digest_told:
            digest_told = True
            report.problems.append(
                f"checkpoint file line {number} ({line.when}): its digest over every "
                "referral does not match the referrals the file lists up to it (the "
                "database was changed while the bot ran, or the file was edited)"
            )
        report.last, report.last_line = line, number
    return report


async def check_database(tx: Tx, keyring: Keyring, path: Path) -> AnchorReport:
    """Compare the database (a snapshot) with the checkpoint file: every referral the
    checkpoints recorded must still be there with at least the entries recorded, the
    same ones; the database must not be older than the latest checkpoint."""
    written = await tx.get_kv(LAST_KEY)
    if not path.exists():
        report = AnchorReport()
        if written is not None:
            report.problems.append(
                f"the checkpoint file {path} is missing, but the database says checkpoint "
                f"{json.loads(written)['n'] if written else '?'} was written to it"
            )
        return report
    report = replay(CheckpointFile(path).read_lines(), keyring)
    if written is not None:
        w = json.loads(written)
        last = report.last
        if last is None or int(w["n"]) > last.n:
            report.problems.append(
                f"the checkpoint file ends at "
                f"{last.when if last else 'nothing'} but the database recorded writing "
                f"checkpoint {w['n']} at {w['at']}: the file was cut short"
            )
    wanted = {ref: r.entries for ref, r in report.recorded.items()}
    now = await tx.record_heads_at(wanted)
    missing = 0
    for ref, r in sorted(report.recorded.items()):
        found = now.get(ref)
        where = f"checkpoint file line {r.line} ({r.when})"
        if found is None:
            missing += 1
            report.problems.append(
                f"{ref}: not in the database, but {where} recorded it with {r.entries} "
                "running-record entries: the referral was deleted"
            )
        elif found[0] < r.entries:
            missing += 1
            report.problems.append(
                f"{ref}: {found[0]} running-record entries, but {where} recorded "
                f"{r.entries}: its newest entries were deleted"
            )
        elif found[1] is None or keyring.checkpoint_leaf(ref, r.entries, found[1]).hex() != r.leaf:
            report.problems.append(
                f"{ref}: its first {r.entries} running-record entries are not the ones "
                f"{where} recorded: the record was rewritten"
            )
    last = report.last
    if last is not None:
        upto = await tx.record_max_id()
        referrals = await tx.referral_count()
        entries = await tx.record_entry_count()
        if upto < last.last_entry or (missing and referrals < last.referrals):
            report.problems.insert(
                0,
                f"the database is older than the latest checkpoint (file line "
                f"{report.last_line}, {last.when}): it holds {referrals} referrals and "
                f"{entries} running-record entries (newest entry number {upto}), the "
                f"checkpoint recorded {last.referrals} and {last.entries} (up to entry "
                f"{last.last_entry}): an older copy was restored or it was rolled back",
            )
    return report
