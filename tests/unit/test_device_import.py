"""A device an older version kept in data_dir, moved into PostgreSQL on the first start
(bot/device_import.py): the same account, Olm and Megolm sessions, device trust and sync
token come back from nio's store on PostgreSQL; the credentials and cross-signing keys are
sealed rows; the local files are renamed, not deleted; nothing is half-copied on failure."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from nio.crypto import (
    InboundGroupSession,
    InboundSession,
    OlmAccount,
    OlmDevice,
    OutboundGroupSession,
    OutboundSession,
    TrustState,
)

from bot.cross_signing import CrossSigningKeys, load_stored_keys, seal_keys
from bot.crypto_store_pg import PostgresCryptoStore
from bot.device_files import CREDENTIALS, CROSS_SIGNING, DeviceFileError, device_files_for
from bot.device_import import MOVED_SUFFIX, move_local_device
from bot.trust_cache import TrustCachingStore
from storage.engine import Postgres, Store
from tests.engines import dump, location, sql
from tests.keys import KEYRING

pytestmark = pytest.mark.parametrize("engine", ["postgresql"], indirect=True)

BOT = "@bot:example.org"
DEVICE = "OLDDEVICE"
STORE_KEY = "store-key-" + "s" * 30
TOKEN = "syt_old_access_token_0123456789"
ROOM = "!room:example.org"
SECRET = '{"type": "m.room.message", "content": {"body": "referral"}, "room_id": "r"}'


@dataclass
class OldDevice:
    data: Path
    account: OlmAccount
    peer: OlmAccount
    olm_id: str
    megolm_id: str
    encrypted_before: str
    keys: CrossSigningKeys

    @property
    def e2ee(self) -> Path:
        return self.data / "e2ee" / f"{BOT}_{DEVICE}.db"

    def local_files(self) -> dict[str, bytes]:
        return {
            p.relative_to(self.data).as_posix(): p.read_bytes()
            for p in self.data.rglob("*")
            if p.is_file()
        }


def make_old_device(data: Path) -> OldDevice:
    """data_dir as the previous version left it, written by a real nio SQLite store."""
    (data / "e2ee").mkdir(parents=True)
    store = TrustCachingStore(BOT, DEVICE, str(data / "e2ee"), STORE_KEY)
    account = OlmAccount()
    account.generate_one_time_keys(2)
    account.mark_keys_as_published()
    store.save_account(account)
    peer = OlmAccount()
    peer.generate_one_time_keys(1)
    otk = next(iter(peer.one_time_keys["curve25519"].values()))
    olm = OutboundSession(account, peer.identity_keys["curve25519"], otk)
    store.save_session(peer.identity_keys["curve25519"], olm)
    outbound = OutboundGroupSession()
    megolm = InboundGroupSession(outbound.session_key, "ed-key", "curve-key", ROOM, ["fwd"])
    store.save_inbound_group_session(megolm)
    outbound.mark_as_shared()
    encrypted = outbound.encrypt(SECRET)
    nurse = OlmDevice("@nurse:example.org", "NURSEDEV", {"ed25519": "e1", "curve25519": "c1"})
    gp = OlmDevice("@gp:example.org", "GPDEV", {"ed25519": "e2", "curve25519": "c2"})
    store.save_device_keys({nurse.user_id: {nurse.id: nurse}, gp.user_id: {gp.id: gp}})
    assert store.verify_device(nurse)
    store.ignore_devices([gp])
    store.save_sync_token("s42_old")
    store.save_encrypted_rooms([ROOM])
    store.database.close()
    creds = {"user_id": BOT, "device_id": DEVICE, "access_token": TOKEN}
    (data / CREDENTIALS).write_text(json.dumps(creds))
    keys = CrossSigningKeys.generate()
    (data / CROSS_SIGNING).write_text(seal_keys(keys, BOT, STORE_KEY))
    return OldDevice(data, account, peer, olm.id, megolm.id, encrypted, keys)


@pytest_asyncio.fixture
async def leader(engine: str, tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    try:
        yield store
    finally:
        await store.close()


async def start(leader: Store, data: Path, store_key: str = STORE_KEY) -> str | None:
    """What the bot does at start-up (bot/app.py): move a local device, then read."""
    files = device_files_for(leader, data, store_key)
    await move_local_device(files, store_key)
    return await files.read(CREDENTIALS)


def nio_rows(where: Postgres) -> int:
    """Rows in nio's tables on PostgreSQL (0 when the tables are not even there)."""
    tables = sql(
        where,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_name = ANY(?)",
        ["accounts", "olmsessions", "megolminboundsessions", "devicekeys", "synctokens"],
    )
    total = 0
    for (table,) in tables:
        ((n,),) = sql(where, f"SELECT COUNT(*) FROM {table}")  # noqa: S608
        total += int(str(n))
    return total


async def test_the_old_device_is_moved_and_works_from_the_database(
    leader: Store, tmp_path: Path
) -> None:
    where = leader.where
    assert isinstance(where, Postgres)
    old = make_old_device(tmp_path / "data")
    before = old.local_files()

    text = await start(leader, old.data)
    assert text is not None and json.loads(text)["device_id"] == DEVICE

    # The local files are renamed, byte for byte, not deleted.
    after = old.local_files()
    assert after == {name + MOVED_SUFFIX: content for name, content in before.items()}

    # The credentials and keys are sealed rows (nothing in clear), readable from elsewhere.
    assert sql(where, "SELECT name FROM device_files ORDER BY name") == [
        (CREDENTIALS,),
        (CROSS_SIGNING,),
    ]
    everything = dump(where)
    assert TOKEN not in everything and TOKEN.encode().hex() not in everything
    elsewhere = device_files_for(leader, tmp_path / "other-machine", STORE_KEY)
    assert await elsewhere.read(CREDENTIALS) == text
    loaded_keys = await load_stored_keys(elsewhere, BOT, STORE_KEY)
    assert loaded_keys is not None
    assert loaded_keys.public("master") == old.keys.public("master")

    # nio's store on PostgreSQL is the same device.
    pg = PostgresCryptoStore(BOT, DEVICE, "x", STORE_KEY, postgres=where, epoch=leader.epoch)
    try:
        account = pg.load_account()
        assert account is not None and account.identity_keys == old.account.identity_keys
        (session,) = pg.load_sessions()[old.peer.identity_keys["curve25519"]]
        assert session.id == old.olm_id
        message = session.encrypt("still the same session")
        inbound = InboundSession(old.peer, message, old.account.identity_keys["curve25519"])
        assert inbound.decrypt(message) == "still the same session"
        group = pg.load_inbound_group_sessions().get(ROOM, "curve-key", old.megolm_id)
        assert group is not None and group.forwarding_chain == ["fwd"]
        assert group.decrypt(old.encrypted_before)[0] == SECRET
        devices = pg.load_device_keys()
        assert devices["@nurse:example.org"]["NURSEDEV"].trust_state == TrustState.verified
        assert devices["@gp:example.org"]["GPDEV"].trust_state == TrustState.ignored
        assert pg.load_sync_token() == "s42_old"
        assert pg.load_encrypted_rooms() == {ROOM}
        # The sequences go on after the copied ids: new rows can be added.
        new = OlmDevice("@sw:example.org", "SWDEV", {"ed25519": "e3", "curve25519": "c3"})
        pg.save_device_keys({new.user_id: {new.id: new}})
        assert pg.verify_device(new)
        pg.save_sync_token("s43_new")
        assert pg.load_device_keys()["@sw:example.org"]["SWDEV"].trust_state == (
            TrustState.verified
        )
    finally:
        pg.close()

    # A second start imports nothing again (no local credentials.json any more).
    assert await start(leader, old.data) == text
    assert old.local_files() == after
    assert sql(where, "SELECT token FROM synctokens") == [("s43_new",)]


async def test_a_start_stopped_before_renaming_finishes_it(leader: Store, tmp_path: Path) -> None:
    old = make_old_device(tmp_path / "data")
    text = await start(leader, old.data)
    # As if the process had died after the commit and before the renames.
    moved = old.data / (CREDENTIALS + MOVED_SUFFIX)
    shutil.copy(moved, old.data / CREDENTIALS)
    assert await start(leader, old.data) == text
    assert not (old.data / CREDENTIALS).exists()
    # The first renamed copy is kept; the second goes beside it.
    assert moved.exists() and (old.data / (CREDENTIALS + MOVED_SUFFIX + ".1")).exists()


async def test_another_device_in_data_dir_is_refused(leader: Store, tmp_path: Path) -> None:
    old = make_old_device(tmp_path / "data")
    text = await start(leader, old.data)
    other = make_old_device(tmp_path / "data2")
    creds = json.loads((other.data / CREDENTIALS).read_text())
    creds["device_id"] = "ANOTHERDEV"
    (other.data / CREDENTIALS).write_text(json.dumps(creds))
    (other.e2ee).rename(other.e2ee.with_name(f"{BOT}_ANOTHERDEV.db"))
    before = other.local_files()
    with pytest.raises(DeviceFileError, match="database already has a device"):
        await start(leader, other.data, STORE_KEY)
    assert other.local_files() == before
    assert await start(leader, old.data) == text  # the database's device is unchanged


async def test_credentials_without_their_e2ee_store_are_refused(
    leader: Store, tmp_path: Path
) -> None:
    where = leader.where
    assert isinstance(where, Postgres)
    old = make_old_device(tmp_path / "data")
    old.e2ee.unlink()
    before = old.local_files()
    with pytest.raises(DeviceFileError, match=r"E2EE store .*\.db is missing"):
        await start(leader, old.data, STORE_KEY)
    assert old.local_files() == before
    assert sql(where, "SELECT COUNT(*) FROM device_files") == [(0,)]


async def test_a_broken_sqlite_store_leaves_everything_as_it_was(
    leader: Store, tmp_path: Path
) -> None:
    where = leader.where
    assert isinstance(where, Postgres)
    old = make_old_device(tmp_path / "data")
    raw = bytearray(old.e2ee.read_bytes())
    raw[100:4096] = b"\xff" * (4096 - 100)  # the header's tail and the schema page
    old.e2ee.write_bytes(bytes(raw))
    before = old.local_files()
    with pytest.raises(DeviceFileError, match="is not a readable nio store"):
        await start(leader, old.data, STORE_KEY)
    assert old.local_files() == before
    assert sql(where, "SELECT COUNT(*) FROM device_files") == [(0,)]
    assert nio_rows(where) == 0


async def test_a_copy_the_database_refuses_is_rolled_back(leader: Store, tmp_path: Path) -> None:
    """A row PostgreSQL refuses half-way (a forwarding chain of no session: SQLite did not
    check that foreign key) leaves no row of the copy behind."""
    where = leader.where
    assert isinstance(where, Postgres)
    old = make_old_device(tmp_path / "data")
    with sqlite3.connect(old.e2ee) as conn:
        conn.execute(
            "INSERT INTO forwardedchains (sender_key, session_id) VALUES ('k', 'no-such-session')"
        )
    conn.close()
    before = old.local_files()
    with pytest.raises(DeviceFileError, match="the database refused the copy"):
        await start(leader, old.data, STORE_KEY)
    assert old.local_files() == before
    assert sql(where, "SELECT COUNT(*) FROM device_files") == [(0,)]
    assert nio_rows(where) == 0


async def test_another_store_key_is_refused_before_anything_is_copied(
    leader: Store, tmp_path: Path
) -> None:
    where = leader.where
    assert isinstance(where, Postgres)
    old = make_old_device(tmp_path / "data")
    (old.data / CROSS_SIGNING).unlink()  # so the Olm account is what is checked
    before = old.local_files()
    other_key = "another-key-" + "k" * 30
    with pytest.raises(DeviceFileError, match=r"cannot be opened with storage\.store_key"):
        await start(leader, old.data, other_key)
    assert old.local_files() == before
    assert sql(where, "SELECT COUNT(*) FROM device_files") == [(0,)]


async def test_time_to_move_a_large_store(leader: Store, tmp_path: Path) -> None:
    """Not a limit: prints how long moving a store with many room keys takes (the report)."""
    where = leader.where
    assert isinstance(where, Postgres)
    old = make_old_device(tmp_path / "data")
    n = 5000
    with sqlite3.connect(old.e2ee) as conn:
        ((account_id, pickle, fp, sender),) = conn.execute(
            "SELECT account_id, session, fp_key, sender_key FROM megolminboundsessions"
        ).fetchall()
        conn.executemany(
            "INSERT INTO megolminboundsessions"
            " (sender_key, account_id, fp_key, room_id, session, session_id)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(sender, account_id, fp, f"!r{i}:example.org", pickle, f"s{i}") for i in range(n)],
        )
        conn.executemany(
            "INSERT INTO devicekeys (device_id, user_id, display_name, deleted, account_id)"
            " VALUES (?, ?, '', 0, ?)",
            [(f"D{i}", f"@u{i}:example.org", account_id) for i in range(n)],
        )
    conn.close()
    began = time.perf_counter()
    assert await start(leader, old.data, STORE_KEY) is not None
    took = time.perf_counter() - began
    print(f"moved {n + 1} room keys and {n + 2} devices into PostgreSQL in {took:.2f} s")
    assert sql(where, "SELECT COUNT(*) FROM megolminboundsessions") == [(n + 1,)]
    assert sql(where, "SELECT COUNT(*) FROM devicekeys") == [(n + 2,)]


async def test_a_store_left_by_a_crash_mid_write_is_moved_as_committed(
    leader: Store, tmp_path: Path
) -> None:
    """The old bot killed during a nio write leaves a hot journal: what is moved is the
    last committed state (SQLite's own recovery, on a private copy; the files as left)."""
    where = leader.where
    assert isinstance(where, Postgres)
    old = make_old_device(tmp_path / "data")
    conn = sqlite3.connect(old.e2ee, isolation_level=None)
    conn.execute("PRAGMA cache_size = 1")  # uncommitted pages reach the file
    conn.execute("BEGIN")
    conn.execute("UPDATE synctokens SET token = 'uncommitted'")
    (account_id,) = conn.execute("SELECT id FROM accounts").fetchone()
    conn.executemany(
        "INSERT INTO encryptedrooms (room_id, account_id) VALUES (?, ?)",
        [(f"!x{i}:example.org" + "x" * 200, account_id) for i in range(2000)],
    )
    shutil.copytree(old.data, tmp_path / "crashed")  # as a power cut would leave it
    conn.execute("ROLLBACK")
    conn.close()
    crashed = tmp_path / "crashed"
    journal = crashed / "e2ee" / f"{BOT}_{DEVICE}.db-journal"
    assert journal.stat().st_size > 0
    before = {p.name: p.read_bytes() for p in (crashed / "e2ee").iterdir()}

    assert await start(leader, crashed) is not None
    assert sql(where, "SELECT token FROM synctokens") == [("s42_old",)]
    assert sql(where, "SELECT COUNT(*) FROM encryptedrooms") == [(1,)]
    # Renamed as they were (the journal too), not rolled back in place.
    after = {p.name: p.read_bytes() for p in (crashed / "e2ee").iterdir()}
    assert after == {name + MOVED_SUFFIX: content for name, content in before.items()}
