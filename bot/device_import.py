"""Moving a device kept in `data_dir` into PostgreSQL, once, on the first start.

A bot that ran an older version on PostgreSQL kept its device beside the database, in
`data_dir`: `credentials.json`, `cross_signing.json` and matrix-nio's SQLite store
`e2ee/<user_id>_<device_id>.db`. Logging in anew would make a second device and lose
every key (referrals encrypted to the old device could never be read), so on the first
start with no device in the database the bot moves it there:

1. everything is read and checked first: the credentials, the cross-signing keys (they
   must open with `storage.store_key`), the nio store (read from a private copy, so that
   SQLite rolls back there a journal left by a crash mid-write; its account must be the
   credentials' device and open with `storage.store_key`);
2. in ONE PostgreSQL transaction, on a session that carries the leader's epoch (nio's
   tables are fenced, bot/crypto_store_pg.py): every row of every nio table (ids kept,
   foreign keys first, sequences set after), and the two files as sealed rows of
   `device_files` (as `DatabaseFiles.write` seals them); then, still in the transaction,
   the copy is checked (rows per table, the account read back through the PostgreSQL store
   has the same identity keys). Any failure rolls everything back;
3. only after the commit the local files are renamed `*.moved-to-database` (never
   deleted: the operator removes them after checking). `credentials.json` is renamed
   last, so a start interrupted between the two finds the same device in both places
   and finishes the renaming.

Refused, with the reason: a database that already has another device; a
`credentials.json` without its nio store (its keys would be lost); anything unreadable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee
import psycopg2
import psycopg2.extras
from cryptography.exceptions import InvalidTag
from nio.crypto import OlmAccount

from bot.device_files import (
    CREDENTIALS,
    CROSS_SIGNING,
    E2EE_DIR,
    DatabaseFiles,
    DeviceFileError,
    DeviceFiles,
    seal,
    unseal,
)
from storage.engine import Postgres

log = logging.getLogger(__name__)

MOVED_SUFFIX = ".moved-to-database"
_SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")
_NOT_EMPTY_OK = frozenset({"storeversion"})  # nio writes it when it opens its store


@dataclass(frozen=True)
class LocalDevice:
    user_id: str
    device_id: str
    credentials: str
    cross_signing: str | None
    e2ee: Path


def _refuse(data_dir: Path, why: str) -> DeviceFileError:
    return DeviceFileError(
        f"cannot move the device kept in {data_dir} into the database: {why}. Nothing was "
        "moved: the database holds no device and the files are untouched."
    )


def _read_credentials(data_dir: Path) -> tuple[str, str, str]:
    """The text of `data_dir/credentials.json`, its user ID and device ID."""
    path = data_dir / CREDENTIALS
    try:
        credentials = path.read_text(encoding="utf-8")
        data = json.loads(credentials)
        user_id, device_id = str(data["user_id"]), str(data["device_id"])
        if not user_id or not device_id or not data["access_token"]:
            raise ValueError("an empty user_id, device_id or access_token")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _refuse(data_dir, f"{path} cannot be used ({exc})") from exc
    return credentials, user_id, device_id


def _e2ee_path(data_dir: Path, user_id: str, device_id: str) -> Path:
    return data_dir / E2EE_DIR / f"{user_id}_{device_id}.db"  # nio's name for its file


def read_local_device(data_dir: Path, store_key: str) -> LocalDevice:
    """The device an older version kept in `data_dir`, checked; DeviceFileError if unusable."""
    credentials, user_id, device_id = _read_credentials(data_dir)
    e2ee = _e2ee_path(data_dir, user_id, device_id)
    if not e2ee.is_file():
        raise _refuse(
            data_dir,
            f"{CREDENTIALS} is there but the device's E2EE store {e2ee} is missing; without "
            "it the device's Olm/Megolm keys would be lost. Put the file back (from a backup), "
            "or move data_dir aside to start as a new device on purpose",
        )

    cross_signing: str | None = None
    keys_path = data_dir / CROSS_SIGNING
    if keys_path.exists():
        from bot.cross_signing import KeyFileError, open_keys

        try:
            cross_signing = keys_path.read_text(encoding="utf-8")
            open_keys(cross_signing, str(keys_path), user_id, store_key)
        except (OSError, ValueError, KeyFileError) as exc:
            raise _refuse(data_dir, str(exc)) from exc
    return LocalDevice(user_id, device_id, credentials, cross_signing, e2ee)


def _tables() -> list[Any]:
    """nio's models (with the bot's trust table), foreign keys first."""
    from bot.crypto_store_pg import PostgresCryptoStore

    return list(peewee.sort_models(PostgresCryptoStore.models))


def _read_sqlite(device: LocalDevice, models: list[Any]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every nio table as PostgreSQL takes it (each value through its nio
    field, as nio itself would write it); DeviceFileError for a damaged file.

    Read from a private copy of the file and its journal: a bot killed during a write
    left a hot journal that SQLite rolls back on opening, which needs a writable file,
    and the original files stay exactly as they were (they are renamed afterwards)."""
    data_dir = device.e2ee.parent.parent
    with tempfile.TemporaryDirectory(dir=device.e2ee.parent, prefix=".moving-") as tmp:
        copy = Path(tmp) / "store.db"
        try:
            for suffix in ("", "-journal", "-wal"):  # not -shm: rebuilt from the WAL
                source = device.e2ee.with_name(device.e2ee.name + suffix)
                if source.exists():
                    shutil.copyfile(source, copy.with_name(copy.name + suffix))
        except OSError as exc:
            raise _refuse(data_dir, f"{device.e2ee} cannot be read ({exc})") from exc
        try:
            conn = sqlite3.connect(copy)
        except sqlite3.Error as exc:
            raise _refuse(data_dir, f"{device.e2ee} cannot be opened ({exc})") from exc
        try:
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise sqlite3.DatabaseError(f"quick_check: {check[:3]}")
            rows: dict[str, list[tuple[Any, ...]]] = {}
            for model in models:
                fields = model._meta.sorted_fields
                cols = ", ".join(f'"{f.column_name}"' for f in fields)
                table = model._meta.table_name
                rows[table] = [
                    tuple(
                        None if v is None else f.db_value(f.python_value(v))
                        for f, v in zip(fields, row, strict=True)
                    )
                    for row in conn.execute(f'SELECT {cols} FROM "{table}"')  # noqa: S608
                ]
            return rows
        except (sqlite3.Error, ValueError, TypeError) as exc:
            raise _refuse(data_dir, f"{device.e2ee} is not a readable nio store ({exc})") from exc
        finally:
            conn.close()


def _account_keys(pickle: Any, store_key: str, where: str) -> dict[str, str]:
    raw = pickle if isinstance(pickle, bytes) else bytes(str(pickle), "utf-8")
    try:
        return dict(OlmAccount.from_pickle(raw, store_key).identity_keys)
    except Exception as exc:  # vodozemac's errors have no common public base
        raise DeviceFileError(
            f"the Olm account in {where} cannot be opened with storage.store_key "
            f"(changed key?): {exc}"
        ) from exc


def _copy(where: Postgres, epoch: int | None, store_key: str, device: LocalDevice) -> None:
    """Steps 1-2 of the module's docstring, synchronously (run in a thread)."""
    from bot.crypto_store_pg import PostgresCryptoStore

    data_dir = device.e2ee.parent.parent
    models = _tables()
    local = _read_sqlite(device, models)
    columns = [f.column_name for f in _model(models, "accounts")._meta.sorted_fields]
    mine = [
        r
        for r in local["accounts"]
        if (r[columns.index("user_id")], r[columns.index("device_id")])
        == (device.user_id, device.device_id)
    ]
    if len(mine) != 1:
        raise _refuse(data_dir, f"{device.e2ee} holds no Olm account for this device")
    identity = _account_keys(mine[0][columns.index("account")], store_key, str(device.e2ee))
    if epoch is None:
        raise DeviceFileError("this process is not the leader: the device was not moved")

    # Opening nio's store creates its tables (and fences them) if they are not there yet.
    pg = PostgresCryptoStore(
        device.user_id, device.device_id, "postgresql", store_key, postgres=where, epoch=epoch
    )
    try:
        db = pg.database
        with db.atomic():
            (now_epoch,) = db.execute_sql(
                "SELECT epoch FROM leader WHERE id = 1 FOR SHARE"
            ).fetchone()
            if int(now_epoch) != epoch:
                raise DeviceFileError("this process is no longer the leader: nothing was moved")
            if db.execute_sql(
                "SELECT 1 FROM device_files WHERE name = %s", (CREDENTIALS,)
            ).fetchone():
                raise DeviceFileError("another process stored a device meanwhile; start again")
            for model in models:
                table = model._meta.table_name
                (n,) = db.execute_sql(f'SELECT COUNT(*) FROM "{table}"').fetchone()  # noqa: S608
                if n and table not in _NOT_EMPTY_OK:
                    raise _refuse(
                        data_dir,
                        f"the database has no {CREDENTIALS} but its nio table {table} already "
                        f"has {n} rows (a login that did not finish?); nothing is overwritten",
                    )
            db.execute_sql('DELETE FROM "storeversion"')  # nio's own row: the file's is kept
            cursor = db.cursor()
            for model in models:
                table = model._meta.table_name
                if not local[table]:
                    continue
                names = [f.column_name for f in model._meta.sorted_fields]
                cols = ", ".join(f'"{c}"' for c in names)
                psycopg2.extras.execute_values(
                    cursor,
                    f'INSERT INTO "{table}" ({cols}) VALUES %s',  # noqa: S608
                    local[table],
                    page_size=500,
                )
                pk = model._meta.primary_key
                if isinstance(pk, peewee.AutoField):
                    col = pk.column_name
                    seq = f"pg_get_serial_sequence('\"{table}\"', '{col}')"
                    db.execute_sql(f'SELECT setval({seq}, MAX("{col}")) FROM "{table}"')  # noqa: S608
            now = datetime.now(UTC).isoformat()
            for name, text in (
                (CREDENTIALS, device.credentials),
                (CROSS_SIGNING, device.cross_signing),
            ):
                if text is not None:
                    db.execute_sql(
                        "INSERT INTO device_files (name, content, updated_at) VALUES (%s, %s, %s)",
                        (name, seal(store_key, name, text), now),
                    )
            # The copy, checked before it is committed.
            for model in models:
                table = model._meta.table_name
                (n,) = db.execute_sql(f'SELECT COUNT(*) FROM "{table}"').fetchone()  # noqa: S608
                if n != len(local[table]):
                    raise DeviceFileError(
                        f"copying nio table {table}: {n} rows in the database but "
                        f"{len(local[table])} in {device.e2ee}; nothing was moved"
                    )
            account = pg.load_account()
            if account is None or dict(account.identity_keys) != identity:
                raise DeviceFileError("the Olm account read back from the database differs")
            (content,) = db.execute_sql(
                "SELECT content FROM device_files WHERE name = %s", (CREDENTIALS,)
            ).fetchone()
            if unseal(store_key, CREDENTIALS, bytes(content)) != device.credentials:
                raise DeviceFileError("the credentials read back from the database differ")
    finally:
        pg.close()


def _model(models: list[Any], table: str) -> Any:
    (model,) = [m for m in models if m._meta.table_name == table]
    return model


def _leftovers(data_dir: Path, user_id: str, device_id: str) -> list[Path]:
    e2ee = _e2ee_path(data_dir, user_id, device_id)
    return [
        *(e2ee.with_name(e2ee.name + s) for s in ("", *_SQLITE_SIDE_FILES)),
        data_dir / CROSS_SIGNING,
        data_dir / CREDENTIALS,
    ]


def _rename(paths: list[Path]) -> None:
    """Each file to `<name>.moved-to-database` (`….1`, `….2` if that is taken: an earlier
    renamed copy is never replaced); credentials.json comes last in `paths`."""
    for path in paths:
        if not path.exists():
            continue
        target = path.with_name(path.name + MOVED_SUFFIX)
        n = 0
        while target.exists():
            n += 1
            target = path.with_name(f"{path.name}{MOVED_SUFFIX}.{n}")
        path.rename(target)


async def move_local_device(files: DeviceFiles, store_key: str) -> None:
    """At start-up, before the credentials are read: on PostgreSQL, a device an older
    version kept in `data_dir` is moved into the database (or refused, with the reason).
    Nothing to do on SQLite, or without `data_dir/credentials.json`."""
    if not isinstance(files, DatabaseFiles) or not (files.data_dir / CREDENTIALS).exists():
        return
    data_dir = files.data_dir
    _, user_id, device_id = _read_credentials(data_dir)
    async with files.store.snapshot() as tx:
        content = await tx.get_device_file(CREDENTIALS)
    if content is not None:
        try:
            stored = json.loads(unseal(store_key, CREDENTIALS, content))
        except (InvalidTag, ValueError, UnicodeDecodeError) as exc:
            raise DeviceFileError(
                f"{files.describe(CREDENTIALS)} cannot be decrypted with storage.store_key "
                "(changed key?)"
            ) from exc
        if (stored.get("user_id"), stored.get("device_id")) != (user_id, device_id):
            raise DeviceFileError(
                f"the database already has a device and {data_dir / CREDENTIALS} is another "
                f"one (device {device_id}, the database's is {stored.get('device_id')}). "
                "The bot will not choose: move data_dir aside to use the database's device, "
                "or use another database (or schema) for the one in data_dir."
            )
        # The same device: an earlier start moved it but stopped before renaming them all.
        _rename(_leftovers(data_dir, user_id, device_id))
        log.info("device already in the database; local files renamed: device=%s", device_id)
        return

    device = read_local_device(data_dir, store_key)
    where = files.store.where
    assert isinstance(where, Postgres)
    try:
        await asyncio.to_thread(_copy, where, files.store.epoch, store_key, device)
    except (peewee.DatabaseError, psycopg2.Error) as exc:
        raise _refuse(data_dir, f"the database refused the copy ({exc})") from exc
    _rename(_leftovers(data_dir, device.user_id, device.device_id))
    log.info(
        "moved the device from data_dir into the database (local files renamed *%s): device=%s",
        MOVED_SUFFIX,
        device.device_id,
    )
