"""The database file: open, lock, migrate, and run transactions over one connection.

One aiosqlite connection, WAL, `synchronous=FULL` (an acknowledged referral must survive
a power cut), and a lock so that a transaction is never interleaved with another
coroutine's statements. Work happens in `transaction()` blocks: a use case either
commits whole (record, running-record entries, outgoing messages, inbox row marked done)
or not at all; what it left for the workers goes to `on_commit` once it is committed.

What is stored (docs/SECURITY.md): every column that can hold personal data is encrypted
by the domain modules with the `Keyring`, bound to its row (`storage/fields.py`), so
callers only ever see plain values and nothing personal reaches the file in clear.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
from cryptography.exceptions import InvalidTag

from storage.base import Committed
from storage.disk_faults import WriteFaults
from storage.fields import utc_now
from storage.keyring import Keyring
from storage.kv import KEY_CHECK, KEY_CHECK_TEXT, SPACE_PROBE
from storage.migrations import LATEST_VERSION, MIGRATIONS
from storage.tx import Tx

log = logging.getLogger(__name__)


class WrongDatabaseKey(Exception):
    """The configured database key is not the one this database was encrypted with."""


class DatabaseInUse(Exception):
    """Another process (a running bot) holds the database."""


class Store:
    """Owns the database file. Open with `await Store.open(path, keyring)`.

    The bot (and `rotate-key`) open it `exclusive`: a lock file beside the database keeps
    a second bot, or a key rotation, away while a bot runs.
    """

    def __init__(
        self, db: aiosqlite.Connection, path: Path, keyring: Keyring, lock_fd: int | None
    ) -> None:
        self._db = db
        self.path = path
        self.keyring = keyring
        self._lock = asyncio.Lock()
        self._lock_fd = lock_fd
        self.clock = utc_now
        self._reader: aiosqlite.Connection | None = None
        self._read_lock = asyncio.Lock()
        # Called after every write transaction that committed new work for the workers
        # (set once by the pipeline): nobody hands rooms on by hand. Read-only views and
        # rolled-back transactions never call it.
        self.on_commit: Callable[[Committed], None] | None = None
        # Whether writes are being refused (disk full, I/O error, read-only): see
        # storage/disk_faults.py.
        self.faults = WriteFaults(self._space_probe)

    @classmethod
    async def open(cls, path: Path, keyring: Keyring, *, exclusive: bool = True) -> Store:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = _take_lock(path) if exclusive else None
        try:
            _private_file(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            _release_lock(lock_fd)
            raise
        store = cls(db, path, keyring, lock_fd)
        try:
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute("PRAGMA busy_timeout = 5000")
            # Deleted and overwritten content is zeroed, so purged or re-encrypted values
            # do not linger in free pages.
            await db.execute("PRAGMA secure_delete = ON")
            await store.migrate()
            await store._check_key()
            async with store.transaction() as tx:
                sealed = await tx.seal_legacy_rows()
            if sealed:
                await store.compact()
            store.fix_permissions()
        except BaseException:
            await store.close()
            raise
        return store

    async def _check_key(self) -> None:
        async with self.transaction() as tx:
            check = await tx.get_kv(KEY_CHECK)
            if check is None:
                await tx.set_kv(KEY_CHECK, self.keyring.encrypt(KEY_CHECK_TEXT, KEY_CHECK))
                return
        try:
            self.keyring.decrypt(check, KEY_CHECK)
        except (InvalidTag, ValueError):
            raise WrongDatabaseKey(
                f"storage.database_key does not decrypt {self.path}: it was encrypted with "
                "another key (after rotate-key, point the config at the new key)"
            ) from None

    def fix_permissions(self) -> None:
        """The database and SQLite's -wal and -shm files: owner only."""
        for suffix in ("", "-wal", "-shm"):
            f = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f, 0o600)

    async def compact(self, *, vacuum: bool = True) -> None:
        """Copy the WAL into the file and truncate it (and rebuild the file without free
        pages), so old page images (plain text before sealing, old ciphertext before a key
        rotation, purged rows) do not stay behind in either file. With `secure_delete` on,
        a checkpoint alone already overwrites freed content; VACUUM needs the bot stopped."""
        async with self._lock:
            await self._checkpoint()
            if vacuum:
                await self._db.execute("VACUUM")
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        # The pragma returns a row; reading it to the end finishes the statement.
        async with self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
            await cur.fetchall()

    async def _space_probe(self) -> None:
        """A write that needs fresh space (64 KB), then gives it back: succeeds only when
        the database can grow again."""
        async with self.transaction() as tx:
            await tx.set_kv(SPACE_PROBE, "0" * 65536)
        async with self.transaction() as tx:
            await tx.set_kv(SPACE_PROBE, "")

    async def close(self) -> None:
        await self.faults.close()
        async with self._read_lock:
            if self._reader is not None:
                await self._reader.close()
                self._reader = None
        async with self._lock:
            await self._db.close()
        _release_lock(self._lock_fd)
        self._lock_fd = None

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def migrate(self, target: int = LATEST_VERSION) -> None:
        async with self._lock:
            current = await self.schema_version()
            if current > LATEST_VERSION:
                raise RuntimeError(
                    f"database schema {current} is newer than this bot ({LATEST_VERSION})"
                )
            for version, script in MIGRATIONS:
                if current < version <= target:
                    await self._db.execute("BEGIN IMMEDIATE")
                    try:
                        for statement in _split_sql(script):
                            await self._db.execute(statement)
                        await self._db.execute(f"PRAGMA user_version = {version:d}")
                    except BaseException:
                        await self._db.execute("ROLLBACK")
                        raise
                    await self._db.execute("COMMIT")

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Tx]:
        """A read-only snapshot on a second connection, for slow reads such as /metrics:
        with WAL it neither waits for nor blocks the writer. Writing through it fails."""
        async with self._read_lock:
            if self._reader is None:
                self._reader = await aiosqlite.connect(
                    f"file:{self.path}?mode=ro", uri=True, isolation_level=None
                )
                self._reader.row_factory = aiosqlite.Row
                await self._reader.execute("PRAGMA busy_timeout = 5000")
            await self._reader.execute("BEGIN")
            try:
                yield Tx(self._reader, self.clock(), self.keyring)
            finally:
                await self._reader.execute("ROLLBACK")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One write transaction; commits on success, rolls back on any exception."""
        async with self._lock:
            tx = Tx(self._db, self.clock(), self.keyring)
            try:
                # BEGIN inside the try: a task cancelled while awaiting it (shutdown) has
                # still queued it on the connection, and must not leave it open.
                await self._db.execute("BEGIN IMMEDIATE")
                yield tx
            except BaseException as exc:
                with contextlib.suppress(sqlite3.OperationalError):  # BEGIN itself failed
                    await self._db.execute("ROLLBACK")
                self.faults.note(exc)
                raise
            try:
                await self._db.execute("COMMIT")
            except Exception as exc:
                # A COMMIT refused for want of disk may leave the transaction open: close it,
                # or every later BEGIN fails too.
                with contextlib.suppress(sqlite3.Error):
                    await self._db.execute("ROLLBACK")
                self.faults.note(exc)
                raise
        self._committed(tx.committed())

    def _committed(self, done: Committed) -> None:
        """Hand what a committed transaction left to `on_commit`. It is committed whatever
        happens here, so a failing hook is logged, never raised into the caller."""
        if not done or self.on_commit is None:
            return
        try:
            self.on_commit(done)
        except Exception as exc:
            log.error("after-commit hook failed: %s", type(exc).__name__)

    @asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Tx]:
        """A read-only view that does not hold up a running bot's writes (WAL snapshot)."""
        async with self._lock:
            await self._db.execute("BEGIN DEFERRED")
            try:
                yield Tx(self._db, self.clock(), self.keyring)
            finally:
                await self._db.execute("ROLLBACK")


def _private_file(path: Path) -> None:
    """Create the database file owner-only before SQLite opens it (no 0644 moment)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def _take_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(
            f"{path} is in use by another referral-bot process; stop the bot first"
        ) from None
    return fd


def _release_lock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements; triggers keep their inner semicolons."""
    statements: list[str] = []
    buf: list[str] = []
    in_trigger = False
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("--"):
            continue
        buf.append(line)
        upper = stripped.upper()
        if upper.startswith("CREATE TRIGGER"):
            in_trigger = True
        if in_trigger:
            if upper.endswith("END;"):
                statements.append("\n".join(buf))
                buf, in_trigger = [], False
        elif stripped.endswith(";"):
            statements.append("\n".join(buf))
            buf = []
    if buf:
        statements.append("\n".join(buf))
    return statements
