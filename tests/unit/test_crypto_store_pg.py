"""matrix-nio's E2EE store on PostgreSQL (bot/crypto_store_pg.py): everything nio keeps
comes back from a second store on the same database (as on another machine), every
INSERT OR REPLACE path works twice, and a process holding a stale leader epoch cannot
change anything."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import peewee
import pytest
import pytest_asyncio
from nio.crypto import (
    InboundGroupSession,
    OlmAccount,
    OlmDevice,
    OutboundGroupSession,
    OutboundSession,
    TrustState,
)

from bot.crypto_store_pg import PostgresCryptoStore, libpq_dsn
from bot.trust_cache import TrustCachingStore
from storage.engine import Postgres, Store
from tests.engines import location, sql
from tests.keys import KEYRING

ON_POSTGRES = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)

BOT = "@bot:example.org"
DEVICE = "BOTDEVICE"
PICKLE_KEY = "store-key-" + "p" * 30
NIO_TABLES = (
    "accounts",
    "olmsessions",
    "megolminboundsessions",
    "forwardedchains",
    "devicekeys",
    "encryptedrooms",
    "outgoingkeyrequests",
    "storeversion",
    "keys",
    "synctokens",
    "devicetruststate",
)


@pytest_asyncio.fixture
async def leader(engine: str, tmp_path: Path) -> AsyncIterator[Store]:
    """The bot's store opened as the bot opens it: exclusively, so with an epoch."""
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    try:
        yield store
    finally:
        await store.close()


def open_crypto(where: Postgres, epoch: int | None) -> PostgresCryptoStore:
    return PostgresCryptoStore(BOT, DEVICE, "unused", PICKLE_KEY, postgres=where, epoch=epoch)


def test_libpq_dsn_moves_server_settings_into_options() -> None:
    dsn = "postgresql://postgres@/referrals?host=/run/pg%20x&search_path=t_abc&sslmode=disable"
    out = libpq_dsn(dsn, {"referralbot.epoch": "7"})
    assert out.startswith("postgresql://postgres@/referrals?")
    assert "host=%2Frun%2Fpg%20x" in out and "sslmode=disable" in out
    assert "search_path" not in out.split("options=")[0]
    assert "options=-c%20search_path%3Dt_abc%20-c%20referralbot.epoch%3D7" in out
    assert libpq_dsn("postgresql://u@h/db", {}) == "postgresql://u@h/db"


@ON_POSTGRES
async def test_everything_nio_keeps_comes_back_from_another_store(leader: Store) -> None:
    where = leader.where
    assert isinstance(where, Postgres) and leader.epoch is not None
    tables_sql = (
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    )
    # nio creates its tables with IF NOT EXISTS: a bot table of the same name would be
    # taken silently, so there must be none.
    bots = {str(r[0]) for r in sql(where, tables_sql)}
    assert "referrals" in bots and not bots & set(NIO_TABLES)
    store = open_crypto(where, leader.epoch)
    assert isinstance(store, TrustCachingStore)
    # nio's tables are beside the bot's, in the same schema, with no name in common.
    tables = {
        str(r[0])
        for r in sql(
            where,
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema()",
        )
    }
    assert set(NIO_TABLES) <= tables and "referrals" in tables

    account = OlmAccount()
    store.save_account(account)
    account.generate_one_time_keys(1)
    account.mark_keys_as_published()
    store.save_account(account)  # the second save updates the same row

    # An Olm session with a peer (INSERT OR REPLACE olmsessions, twice).
    peer = OlmAccount()
    peer.generate_one_time_keys(1)
    otk = next(iter(peer.one_time_keys["curve25519"].values()))
    olm = OutboundSession(account, peer.identity_keys["curve25519"], otk)
    store.save_session(peer.identity_keys["curve25519"], olm)
    olm.encrypt("hello")
    store.save_session(peer.identity_keys["curve25519"], olm)

    # A Megolm inbound session with a forwarding chain (forwardedchains, twice).
    outbound = OutboundGroupSession()
    megolm = InboundGroupSession(
        outbound.session_key, "ed-key", "curve-key", "!room:example.org", ["fwd-curve"]
    )
    store.save_inbound_group_session(megolm)
    store.save_inbound_group_session(megolm)

    # Device keys (keys, twice: a changed key replaces the row) and trust states
    # (devicetruststate, through every trust method and `ignore_devices`).
    nurse = OlmDevice("@nurse:example.org", "NURSEDEV", {"ed25519": "e1", "curve25519": "c1"})
    other = OlmDevice("@gp:example.org", "GPDEV", {"ed25519": "e2", "curve25519": "c2"})
    store.save_device_keys({nurse.user_id: {nurse.id: nurse}, other.user_id: {other.id: other}})
    nurse.keys["curve25519"] = "c1-new"
    store.save_device_keys({nurse.user_id: {nurse.id: nurse}})
    assert store.verify_device(nurse)
    assert store.blacklist_device(nurse)
    assert store.unblacklist_device(nurse)
    assert store.verify_device(nurse)
    store.ignore_devices([other])
    store.ignore_devices([other])

    store.save_sync_token("s1_token")
    store.save_sync_token("s2_token")  # synctokens, twice
    store.save_encrypted_rooms(["!room:example.org"])
    store.close()

    again = open_crypto(where, leader.epoch)
    try:
        loaded = again.load_account()
        assert loaded is not None
        assert loaded.identity_keys == account.identity_keys and loaded.shared == account.shared
        sessions = again.load_sessions()
        (got,) = sessions[peer.identity_keys["curve25519"]]
        assert got.id == olm.id
        groups = again.load_inbound_group_sessions()
        group = groups.get("!room:example.org", "curve-key", megolm.id)
        assert group is not None and group.forwarding_chain == ["fwd-curve"]
        # The Megolm key really works after the round trip.
        outbound.mark_as_shared()
        text = '{"type": "m.room.message", "content": {"body": "x"}, "room_id": "r"}'
        assert group.decrypt(outbound.encrypt(text))[0] == text
        devices = again.load_device_keys()
        assert devices["@nurse:example.org"]["NURSEDEV"].curve25519 == "c1-new"
        assert devices["@nurse:example.org"]["NURSEDEV"].trust_state == TrustState.verified
        assert devices["@gp:example.org"]["GPDEV"].trust_state == TrustState.ignored
        assert again.is_device_verified(nurse) and again.is_device_ignored(other)
        assert again.load_sync_token() == "s2_token"
        assert again.load_encrypted_rooms() == {"!room:example.org"}
    finally:
        again.close()
    # One row per unique key after every second write.
    for table, count in (
        ("olmsessions", 1),
        ("forwardedchains", 1),
        ("synctokens", 1),
        ("keys", 4),
        ("devicetruststate", 2),
        ("accounts", 1),
    ):
        assert sql(where, f"SELECT COUNT(*) FROM {table}") == [(count,)], table  # noqa: S608
    # The pickles are encrypted with the store key: no key material in clear.
    (pickled,) = sql(where, "SELECT account FROM accounts")
    assert isinstance(pickled[0], bytes)
    assert account.identity_keys["ed25519"].encode() not in pickled[0]


@ON_POSTGRES
async def test_a_stale_epoch_cannot_write(leader: Store) -> None:
    where = leader.where
    assert isinstance(where, Postgres) and leader.epoch is not None
    store = open_crypto(where, leader.epoch)
    store.save_account(OlmAccount())
    store.save_sync_token("s1_leader")

    stale = open_crypto(where, leader.epoch - 1)
    unset = open_crypto(where, None)
    try:
        for writer in (stale, unset):
            with pytest.raises(peewee.DatabaseError, match="not the leader"):
                writer.save_sync_token("s2_stale")
            with pytest.raises(peewee.DatabaseError, match="not the leader"):
                writer.save_encrypted_rooms(["!stale:example.org"])
            # Reading is still allowed (a standby may look).
            assert writer.load_sync_token() == "s1_leader"
        assert sql(where, "SELECT token FROM synctokens") == [("s1_leader",)]
        assert sql(where, "SELECT COUNT(*) FROM encryptedrooms") == [(0,)]
        # Once another process takes the lead, the old leader's session is stale too.
        sql(where, "UPDATE leader SET epoch = epoch + 1")
        with pytest.raises(peewee.DatabaseError, match="not the leader"):
            store.save_sync_token("s3_old_leader")
        assert sql(where, "SELECT token FROM synctokens") == [("s1_leader",)]
    finally:
        for s in (store, stale, unset):
            s.close()


@ON_POSTGRES
async def test_a_session_ended_by_the_server_is_opened_again(leader: Store) -> None:
    where = leader.where
    assert isinstance(where, Postgres)
    store = open_crypto(where, leader.epoch)
    try:
        store.save_account(OlmAccount())
        store.save_sync_token("s1")
        (pid,) = store.database.execute_sql("SELECT pg_backend_pid()").fetchone()
        sql(where, "SELECT pg_terminate_backend(?)", pid)
        with pytest.raises(peewee.DatabaseError):  # the call that finds out fails
            store.save_sync_token("s2")
        store.save_sync_token("s3")  # the next one runs on a new session, still fenced
        assert store.load_sync_token() == "s3"
        assert sql(where, "SELECT token FROM synctokens") == [("s3",)]
    finally:
        store.close()


@ON_POSTGRES
async def test_per_call_latency_against_sqlite(leader: Store, tmp_path: Path) -> None:
    """Not a limit: prints what a store call costs on each (README / the report)."""
    where = leader.where
    assert isinstance(where, Postgres)
    stores = {
        "postgresql": open_crypto(where, leader.epoch),
        "sqlite": TrustCachingStore(BOT, DEVICE, str(tmp_path), PICKLE_KEY),
    }
    for name, store in stores.items():
        store.save_account(OlmAccount())
        n = 200
        start = time.perf_counter()
        for i in range(n):
            store.save_sync_token(f"s{i}")
        write_ms = (time.perf_counter() - start) / n * 1000
        start = time.perf_counter()
        for _ in range(n):
            store.load_sync_token()
        read_ms = (time.perf_counter() - start) / n * 1000
        print(f"{name}: save_sync_token {write_ms:.2f} ms, load_sync_token {read_ms:.2f} ms")
        assert store.load_sync_token() == f"s{n - 1}"
        if isinstance(store, PostgresCryptoStore):
            store.close()
