"""The database: open, lock, migrate, and run transactions over one connection.

Two engines behind one `Store` (storage/sql.py hides the few differences from the domain
modules): SQLite in `data_dir` by default, or PostgreSQL when `[storage] database` names
one (`Postgres`). With SQLite: one aiosqlite connection, WAL, `synchronous=FULL` (an
acknowledged referral must survive a power cut). With PostgreSQL: one asyncpg connection
at READ COMMITTED, where the read-then-insert steps take advisory transaction locks
(`Connection.xact_lock`). Either way a lock keeps a transaction from being interleaved
with another coroutine's statements. Work happens in `transaction()` blocks: a use case
either commits whole (record, running-record entries, outgoing messages, inbox row marked
done) or not at all; what it left for the workers goes to `on_commit` once it is committed.

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
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
from cryptography.exceptions import InvalidTag

from storage.base import Committed
from storage.disk_faults import WriteFaults
from storage.fields import utc_now
from storage.keyring import Keyring
from storage.kv import KEY_CHECK, KEY_CHECK_TEXT, SPACE_PROBE
from storage.migrations import LATEST_VERSION, MIGRATIONS
from storage.migrations_pg import POSTGRES_MIGRATIONS
from storage.sql import Connection, PostgresConnection, SqliteConnection
from storage.tx import Tx

log = logging.getLogger(__name__)


class WrongDatabaseKey(Exception):
    """The configured database key is not the one this database was encrypted with."""


class DatabaseInUse(Exception):
    """Another process (a running bot) holds the database."""


class NotLeader(Exception):
    """Another process has become the leader since this one did: it must not write again
    (PostgreSQL active/standby, docs/HA-DESIGN.md)."""


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL database: a libpq-style URL (`postgresql://user@host:port/db`, query
    parameters such as `host=/socket/dir` or `search_path=schema` allowed) and the password
    kept apart from it (from a secret file or the environment)."""

    dsn: str
    password: str | None = field(default=None, repr=False)  # never in a log or traceback

    def __str__(self) -> str:
        return _without_password(self.dsn)


# Where the bot's own tables live: a SQLite file, or a PostgreSQL database.
Location = Path | Postgres

# Advisory lock (session) of the process that holds a PostgreSQL database exclusively,
# and (transaction) of a migration; the second key is the schema's hash.
_PG_LOCK_EXCLUSIVE = 101
_PG_LOCK_MIGRATE = 102


class Store:
    """Owns the database. Open with `await Store.open(path_or_postgres, keyring)`.

    The bot (and `rotate-key`) open it `exclusive`: a lock file beside a SQLite database,
    a session advisory lock on PostgreSQL, keeps a second bot, or a key rotation, away
    while a bot runs.
    """

    def __init__(
        self, db: Connection, where: Location, keyring: Keyring, lock_fd: int | None
    ) -> None:
        self._db = db
        self.where = where
        self.keyring = keyring
        self._lock = asyncio.Lock()
        self._lock_fd = lock_fd
        self.clock = utc_now
        self._reader: Connection | None = None
        # Set when the database session ends without our asking (PostgreSQL: the server
        # restarted, the backend was terminated, the network went): its locks are gone
        # with it, so the bot must stop rather than write on (see `_fence`).
        self.lost = asyncio.Event()
        self._closing = False
        self._read_lock = asyncio.Lock()
        # Called after every write transaction that committed new work for the workers
        # (set once by the pipeline): nobody hands rooms on by hand. Read-only views and
        # rolled-back transactions never call it.
        self.on_commit: Callable[[Committed], None] | None = None
        # Whether writes are being refused (disk full, I/O error, read-only): see
        # storage/disk_faults.py.
        self.faults = WriteFaults(self._space_probe)
        # PostgreSQL, opened exclusively: the leader's epoch (storage `leader` row) this
        # process holds; every write transaction checks it is still the stored one.
        self.epoch: int | None = None

    @property
    def engine(self) -> str:
        return self._db.dialect

    @property
    def path(self) -> Path:
        """The SQLite database file (there is none on PostgreSQL)."""
        if not isinstance(self.where, Path):
            raise TypeError("the database is on PostgreSQL: there is no database file")
        return self.where

    def describe(self) -> str:
        """Where the data is, for messages (no password)."""
        return str(self.where)

    @classmethod
    async def open(
        cls,
        where: Location,
        keyring: Keyring,
        *,
        exclusive: bool = True,
        standby: Callable[[], None] | None = None,
        failover_s: float = 10.0,
    ) -> Store:
        """`standby` (PostgreSQL only): while another process holds the database, call it
        and try again (five times per `failover_s`, at least once a second) instead of
        refusing (`DatabaseInUse`); the process that gets the lock becomes the leader with
        the next epoch. The server drops the session of a leader whose machine died within
        about `failover_s` (TCP keepalives asked for by the session)."""
        if isinstance(where, Postgres):
            return await cls._open_postgres(
                where, keyring, exclusive=exclusive, standby=standby, failover_s=failover_s
            )
        path = where
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = _take_lock(path) if exclusive else None
        try:
            _private_file(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except BaseException:
            _release_lock(lock_fd)
            raise
        store = cls(SqliteConnection(db), path, keyring, lock_fd)
        try:
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute("PRAGMA foreign_keys = ON")
            await db.execute("PRAGMA busy_timeout = 5000")
            # Deleted and overwritten content is zeroed, so purged or re-encrypted values
            # do not linger in free pages.
            await db.execute("PRAGMA secure_delete = ON")
            await store._prepare()
            store.fix_permissions()
        except BaseException:
            await store.close()
            raise
        return store

    @classmethod
    async def _open_postgres(
        cls,
        where: Postgres,
        keyring: Keyring,
        *,
        exclusive: bool,
        standby: Callable[[], None] | None,
        failover_s: float,
    ) -> Store:
        conn = await _pg_connect(where, keepalive_s=failover_s if exclusive else None)
        store = cls(PostgresConnection(conn), where, keyring, None)
        conn.add_termination_listener(lambda _conn: store._session_ended())
        try:
            # The lock is held by this session, the one every write goes through: losing
            # the session loses the lock and stops the writes together (`lost`).
            while exclusive and not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1::int, hashtext(current_schema()))",
                _PG_LOCK_EXCLUSIVE,
            ):
                if standby is None:
                    raise DatabaseInUse(
                        f"{where} is in use by another referral-bot process; stop the bot first"
                    )
                standby()
                await asyncio.sleep(min(1.0, failover_s / 5))
            await store._prepare()
            if exclusive:
                await store._take_lead()
        except BaseException:
            await store.close()
            raise
        return store

    async def _prepare(self) -> None:
        await self.migrate()
        await self._check_key()
        async with self.transaction() as tx:
            sealed = await tx.seal_legacy_rows()
        if sealed:
            await self.compact()

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
                f"storage.database_key does not decrypt {self.describe()}: it was encrypted with "
                "another key (after rotate-key, point the config at the new key)"
            ) from None

    def fix_permissions(self) -> None:
        """The database and SQLite's -wal and -shm files: owner only."""
        if not isinstance(self.where, Path):
            return
        for suffix in ("", "-wal", "-shm"):
            f = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f, 0o600)

    async def compact(self, *, vacuum: bool = True) -> None:
        """Copy the WAL into the file and truncate it (and rebuild the file without free
        pages), so old page images (plain text before sealing, old ciphertext before a key
        rotation, purged rows) do not stay behind in either file. With `secure_delete` on,
        a checkpoint alone already overwrites freed content; VACUUM needs the bot stopped.

        On PostgreSQL dead row versions are the server's (auto)vacuum's business."""
        if self.engine != "sqlite":
            return
        async with self._lock:
            await self._checkpoint()
            if vacuum:
                await self._db.execute("VACUUM")
                await self._checkpoint()

    async def _checkpoint(self) -> None:
        # The pragma returns a row; reading it to the end finishes the statement.
        async with self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)") as cur:
            await cur.fetchall()

    def _session_ended(self) -> None:
        if not self._closing:
            log.error("the database session ended: stopping (its locks went with it)")
            self.lost.set()

    async def _space_probe(self) -> None:
        """A write that needs fresh space (64 KB), then gives it back: succeeds only when
        the database can grow again."""
        async with self.transaction() as tx:
            await tx.set_kv(SPACE_PROBE, "0" * 65536)
        async with self.transaction() as tx:
            await tx.set_kv(SPACE_PROBE, "")

    async def close(self) -> None:
        self._closing = True
        await self.faults.close()
        async with self._read_lock:
            if self._reader is not None:
                await _close_quietly(self._reader)
                self._reader = None
        async with self._lock:
            # Closing the PostgreSQL session also releases its advisory locks.
            await _close_quietly(self._db)
        _release_lock(self._lock_fd)
        self._lock_fd = None

    async def schema_version(self) -> int:
        if self.engine == "postgresql":
            async with self._db.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version"
            ) as cur:
                row = await cur.fetchone()
        else:
            async with self._db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def migrate(self, target: int = LATEST_VERSION) -> None:
        if self.engine == "postgresql":
            await self._migrate_postgres(target)
            return
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

    async def _migrate_postgres(self, target: int) -> None:
        """The same numbered steps, PostgreSQL's SQL (storage/migrations_pg.py). A
        transaction advisory lock keeps two processes starting together from both
        migrating; each step and its version row commit together."""
        conn = self._db
        async with self._lock:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)"
            )
            for version, _ in MIGRATIONS:
                if version > target:
                    break
                await conn.execute("BEGIN")
                try:
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(?::int, hashtext(current_schema()))",
                        (_PG_LOCK_MIGRATE,),
                    )
                    current = await self._pg_version()
                    if current > LATEST_VERSION:
                        raise RuntimeError(
                            f"database schema {current} is newer than this bot ({LATEST_VERSION})"
                        )
                    if current < version:
                        await conn.execute(POSTGRES_MIGRATIONS[version])
                        await conn.execute(
                            "INSERT INTO schema_version (version) VALUES (?)", (version,)
                        )
                except BaseException:
                    await _rollback(conn)
                    raise
                await conn.execute("COMMIT")

    async def _pg_version(self) -> int:
        async with self._db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[Tx]:
        """A read-only snapshot on a second connection, for slow reads such as /metrics:
        it neither waits for nor blocks the writer (SQLite's WAL; PostgreSQL's MVCC).
        Writing through it fails."""
        async with self._read_lock:
            if self._reader is None:
                self._reader = await self._open_reader()
            if self._reader.dialect == "postgresql":
                await self._reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            else:
                await self._reader.execute("BEGIN")
            try:
                yield Tx(self._reader, self.clock(), self.keyring)
            finally:
                await _rollback(self._reader)

    async def _open_reader(self) -> Connection:
        if isinstance(self.where, Postgres):
            return PostgresConnection(await _pg_connect(self.where))
        reader = await aiosqlite.connect(
            f"file:{self.where}?mode=ro", uri=True, isolation_level=None
        )
        reader.row_factory = aiosqlite.Row
        await reader.execute("PRAGMA busy_timeout = 5000")
        return SqliteConnection(reader)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """One write transaction; commits on success, rolls back on any exception."""
        async with self._lock:
            tx = Tx(self._db, self.clock(), self.keyring)
            try:
                # BEGIN inside the try: a task cancelled while awaiting it (shutdown) has
                # still queued it on the connection, and must not leave it open.
                await self._db.execute("BEGIN IMMEDIATE" if self.engine == "sqlite" else "BEGIN")
                await self._fence()
                yield tx
            except BaseException as exc:
                await _rollback(self._db)  # suppressed if BEGIN itself failed
                self.faults.note(exc)
                raise
            try:
                await self._db.execute("COMMIT")
            except Exception as exc:
                # A COMMIT refused for want of disk may leave the transaction open: close it,
                # or every later BEGIN fails too.
                await _rollback(self._db)
                self.faults.note(exc)
                raise
        self._committed(tx.committed())

    async def _take_lead(self) -> None:
        """Become the leader: the next epoch, in a transaction of its own. A transaction
        of the previous leader still running holds the row (`_fence`), so this waits for
        it: the old leader's last write comes before the new leader's first."""
        holder = f"{socket.gethostname()}:{os.getpid()}"
        async with (
            self.transaction() as tx,
            self._db.execute(
                "UPDATE leader SET epoch = epoch + 1, holder = ?, since = ? WHERE id = 1"
                " RETURNING epoch",
                (holder, tx.now.isoformat()),
            ) as cur,
        ):
            row = await cur.fetchone()
        assert row is not None, "the leader row is made by migration 14"
        self.epoch = int(row[0])
        log.info("leader: epoch=%d", self.epoch)

    async def watch_session(self, failover_s: float) -> None:
        """The leader's heartbeat: every third of `failover_s`, check on the write session
        that this process still holds the epoch. A session that does not answer in that
        time (network cut, server gone) or an epoch that moved on sets `lost`, and the bot
        stops before a standby can have taken over (it needs the whole `failover_s`)."""
        interval = failover_s / 3
        while not self.lost.is_set():
            await asyncio.sleep(interval)
            if self._lock.locked():
                continue  # a transaction is running: it checks the epoch itself
            try:
                async with asyncio.timeout(interval):
                    async with self.transaction():
                        pass  # BEGIN, the epoch check (`_fence`), COMMIT
            except Exception as exc:
                if not self._closing and not self.lost.is_set():
                    log.error("database session check failed (%s): stopping", type(exc).__name__)
                    self.lost.set()
                return

    async def _fence(self) -> None:
        """Run at the start of every write transaction, inside it: a process that is no
        longer the leader (another took the lock after this one lost its session) fails
        here, before it writes anything, and stops (`lost`). The shared row lock makes a
        new leader's epoch bump wait for this transaction to end."""
        if self.epoch is None:
            return
        async with self._db.execute("SELECT epoch FROM leader WHERE id = 1 FOR SHARE") as cur:
            row = await cur.fetchone()
        if row is None or int(row[0]) != self.epoch:
            if not self.lost.is_set():
                log.error("no longer the leader: epoch=%d stored=%s; stopping", self.epoch, row)
                self.lost.set()
            raise NotLeader(f"epoch {self.epoch} is no longer the leader's")

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
            await self._db.execute(
                "BEGIN DEFERRED"
                if self.engine == "sqlite"
                else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
            )
            try:
                yield Tx(self._db, self.clock(), self.keyring)
            finally:
                await _rollback(self._db)


async def _pg_connect(where: Postgres, *, keepalive_s: float | None = None) -> Any:
    import asyncpg  # only needed with PostgreSQL

    settings: dict[str, str] = {}
    if keepalive_s is not None:
        # The server notices a dead peer (machine gone, network cut) within about
        # `keepalive_s` and ends the session, releasing the leader's lock; ignored on a
        # Unix socket, where a dead process closes the socket at once anyway.
        step = max(1, int(keepalive_s // 4))
        settings = {
            "tcp_keepalives_idle": str(step),
            "tcp_keepalives_interval": str(step),
            "tcp_keepalives_count": "2",
            "tcp_user_timeout": str(int(keepalive_s * 1000)),
        }
    # Every statement the domain modules write stays prepared (a miss costs a round trip).
    return await asyncpg.connect(
        where.dsn,
        password=where.password,
        statement_cache_size=1000,
        server_settings=settings or None,
    )


async def _rollback(db: Connection) -> None:
    """Roll back whatever is open; nothing to do if BEGIN never ran or the session is gone."""
    with contextlib.suppress(Exception):
        await db.execute("ROLLBACK")


async def _close_quietly(db: Connection) -> None:
    with contextlib.suppress(Exception):
        await db.close()


def _without_password(dsn: str) -> str:
    """`postgresql://user:secret@host/db` → `postgresql://user@host/db`."""
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return dsn
    userinfo, _, hostpart = rest.partition("@")
    return f"{scheme}://{userinfo.split(':', 1)[0]}@{hostpart}"


def _private_file(path: Path) -> None:
    """Create the database file owner-only before SQLite opens it (no 0644 moment)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def take_file_lock(path: Path) -> int:
    """The lock a bot holds on a SQLite database (`DatabaseInUse` if held): for commands
    that replace the files (restore)."""
    return _take_lock(path)


def release_file_lock(fd: int) -> None:
    _release_lock(fd)


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
