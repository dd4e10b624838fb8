"""matrix-nio's E2EE store on PostgreSQL, beside the bot's own tables (issue 13, part 2).

With `[storage] database = "postgresql://…"` nothing of the device stays in `data_dir`:
this store keeps nio's tables (accounts, Olm and Megolm sessions, device keys and their
trust, the sync token …) in the same database and schema as the bot's tables, so a bot
started on another machine with the same config is the same device and can decrypt what
was encrypted to it. The Olm/Megolm pickles stay encrypted with `pickle_key`
(`storage.store_key`) exactly as in the SQLite file; device lists and trust are plain, as
there.

nio writes SQLite's dialect in three places, which are translated here:
- `Model.replace(...)` (INSERT OR REPLACE) becomes `INSERT … ON CONFLICT (<the table's
  unique key>) DO UPDATE SET <every other column> = EXCLUDED.<column>`;
- bytea comes back from psycopg2 as `memoryview`, which nio's `ByteField` would turn into
  garbage (`bytes(value, "utf-8")` of a non-str): bytea is read as `bytes`;
- one raw query (`_get_device_ids`) uses `?` and `==`: built with peewee instead.

Fencing (docs/HA-DESIGN.md): the session says which leader epoch it belongs to
(`referralbot.epoch`), and every nio table has a statement trigger calling
`referralbot_fence()` (migration 14), which refuses any INSERT, UPDATE or DELETE unless
that epoch is the stored leader's. A process that has lost the lead cannot change the
device's keys or sessions.

nio calls its store synchronously from the event loop, as with SQLite; every call is a
round trip to the server over one connection (docs/BENCHMARKS.md has the cost).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import peewee
import psycopg2
import psycopg2.extensions
from nio.store.models import DeviceKeys

from bot.trust_cache import TrustCachingStore
from storage.engine import Postgres

# The unique key nio's INSERT OR REPLACE relies on, per table (nio/store/models.py).
REPLACE_KEYS: dict[str, tuple[str, ...]] = {
    "olmsessions": ("session_id",),
    "forwardedchains": ("sender_key", "session_id"),
    "keys": ("device_id", "key_type"),
    "synctokens": ("account_id",),
    "devicetruststate": ("device_id",),
}

# Connection parameters libpq itself understands in a URL's query (PostgreSQL 16's list);
# asyncpg passes any other query parameter (`search_path=…`) to the server as a setting,
# which libpq refuses: those become `-c name=value` in `options`.
LIBPQ_PARAMS = frozenset(
    {
        "host", "hostaddr", "port", "dbname", "user", "password", "passfile",
        "channel_binding", "connect_timeout", "client_encoding", "options",
        "application_name", "fallback_application_name", "keepalives", "keepalives_idle",
        "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication",
        "gssencmode", "sslmode", "requiressl", "sslcompression", "sslcert", "sslkey",
        "sslpassword", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni",
        "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version",
        "krbsrvname", "gsslib", "gssdelegation", "service", "target_session_attrs",
        "load_balance_hosts", "require_auth",
    }
)  # fmt: skip

FENCE_TRIGGER = "referralbot_fence"
EPOCH_SETTING = "referralbot.epoch"


def _escape_option(value: str) -> str:
    # libpq's `options`: words split on spaces; a backslash escapes the next character.
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def libpq_dsn(dsn: str, settings: dict[str, str]) -> str:
    """asyncpg's URL as libpq reads it: server settings in the query (`search_path`) and
    `settings` become `-c name=value` words in `options`; libpq's own parameters stay."""
    parts = urlsplit(dsn)
    kept: list[tuple[str, str]] = []
    options: list[str] = []
    server: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "options":
            options.append(value)
        elif key in LIBPQ_PARAMS:
            kept.append((key, value))
        else:
            server[key] = value
    server.update(settings)
    options.extend(f"-c {_escape_option(f'{k}={v}')}" for k, v in server.items())
    if options:
        kept.append(("options", " ".join(options)))
    # libpq decodes %XX but not `+` in a URL's query: spaces as %20.
    return urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote)))


def _bytea_as_bytes(value: str | None, cursor: Any) -> bytes | None:
    if value is None:
        return None
    return bytes(psycopg2.BINARY(value, cursor))


_BYTES = psycopg2.extensions.new_type(psycopg2.BINARY.values, "BYTEA_AS_BYTES", _bytea_as_bytes)


class NioPostgresDatabase(peewee.PostgresqlDatabase):  # type: ignore[misc]
    """peewee's PostgreSQL database, speaking enough of SQLite's dialect for nio."""

    def __init__(self, dsn: str, password: str | None) -> None:
        super().__init__(dsn, autoconnect=True)
        self._dsn = dsn
        self._password = password

    def _connect(self) -> Any:
        conn = psycopg2.connect(self._dsn, password=self._password)
        psycopg2.extensions.register_type(_BYTES, conn)
        conn.autocommit = True  # peewee opens its own transactions (`atomic`)
        return conn

    def cursor(self, commit: Any = None, named_cursor: Any = None) -> Any:
        conn = self._state.conn
        if conn is not None and conn.closed and not self.in_transaction():
            # The server ended the session (restart, terminated backend): the call that
            # found out failed; this one opens a new session (with the same epoch).
            self._state.reset()
        return super().cursor(commit, named_cursor)

    def conflict_update(self, oc: Any, query: Any) -> Any:
        if (oc._action or "").lower() != "replace":
            return super().conflict_update(oc, query)
        model = query.model
        table = model._meta.table_name
        target = REPLACE_KEYS.get(table)
        if target is None:
            raise ValueError(f"INSERT OR REPLACE into {table}: no unique key known for it")
        auto_pk = model._meta.primary_key
        others = [
            f.column_name
            for f in model._meta.sorted_fields
            if f.column_name not in target
            and not (f is auto_pk and isinstance(f, peewee.AutoField))
        ]
        if not others:
            return peewee.SQL(f"ON CONFLICT ({', '.join(target)}) DO NOTHING")
        return self._build_on_conflict_update(
            peewee.OnConflict("update", preserve=others, conflict_target=target), query
        )


class PostgresCryptoStore(TrustCachingStore):
    """nio's store (with the bot's trust cache) on the bot's PostgreSQL database.

    nio makes it with `(user_id, device_id, store_path, pickle_key, store_name)`; the
    database comes from `crypto_store_factory`, which binds it."""

    def __init__(self, *args: Any, postgres: Postgres, epoch: int | None, **kwargs: Any) -> None:
        settings = {} if epoch is None else {EPOCH_SETTING: str(epoch)}
        self._pg_dsn = libpq_dsn(postgres.dsn, settings)
        self._pg_password = postgres.password
        super().__init__(*args, **kwargs)
        self._install_fence()

    def _create_database(self) -> NioPostgresDatabase:
        return NioPostgresDatabase(self._pg_dsn, self._pg_password)

    def _install_fence(self) -> None:
        """The fence trigger on every nio table that lacks it (PostgreSQL 13 has no
        `CREATE OR REPLACE TRIGGER`; creating only what is missing also takes no table
        lock on later starts)."""
        tables = [m._meta.table_name for m in self.models]
        with self.database.atomic():
            present = {
                row[0]
                for row in self.database.execute_sql(
                    "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                    " WHERE t.tgname = %s AND c.relnamespace = current_schema()::regnamespace",
                    (FENCE_TRIGGER,),
                ).fetchall()
            }
            for table in tables:
                if table not in present:
                    self.database.execute_sql(
                        f"CREATE TRIGGER {FENCE_TRIGGER} BEFORE INSERT OR UPDATE OR DELETE"
                        f' ON "{table}" FOR EACH STATEMENT EXECUTE FUNCTION referralbot_fence()'
                    )

    def _get_device_ids(self, account: Any, devices: Sequence[Any]) -> list[int]:
        # nio's version is raw SQLite SQL (`?`, `==`).
        ids: list[int] = []
        pairs = [(d.user_id, d.id) for d in devices]
        for start in range(0, len(pairs), 300):
            chunk = pairs[start : start + 300]
            query = DeviceKeys.select(DeviceKeys.id).where(
                (DeviceKeys.account == account.id)
                & peewee.Tuple(DeviceKeys.user_id, DeviceKeys.device_id).in_(chunk)
            )
            ids.extend(int(d.id) for d in query)
        return ids

    def close(self) -> None:
        self.database.close()


def crypto_store_factory(postgres: Postgres, epoch: int | None) -> Callable[..., Any]:
    """What to give nio's `AsyncClientConfig(store=…)`: it makes the store itself."""

    def make(*args: Any, **kwargs: Any) -> PostgresCryptoStore:
        return PostgresCryptoStore(*args, postgres=postgres, epoch=epoch, **kwargs)

    return make
