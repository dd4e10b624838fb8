"""What is stored: personal fields encrypted, the key checked, the file private and locked."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import date
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from schemas.messages import InboxItem
from storage.engine import DatabaseInUse, Store, WrongDatabaseKey, _split_sql
from storage.keyring import Keyring
from storage.migrations import MIGRATIONS
from tests.engines import location, on_postgres
from tests.forms import referral
from tests.keys import KEYRING
from tests.unit.rig import DM, NURSE, START, dump, file_bytes, opened, rig_at, sql

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")

SECRETS = {
    "Child name": "Quillon Marchbanks",
    "Address": "77 Zephyrine Lane, QX9 9QX",
    "Description": "Found Quillon alone at the Brackenfold depot; he said nobody came home.",
    "Child's views": "Says he likes the Vexillology club best.",
    "Referrer name": "Pomeroy Haddlesworth",
}
NEEDLES = [
    "Quillon",
    "Marchbanks",
    "Zephyrine",
    "QX9 9QX",
    "Brackenfold",
    "Vexillology",
    "Haddlesworth",
]


def secret_referral() -> str:
    return referral(**{k.replace(" ", "_").replace("'", ""): v for k, v in SECRETS.items()})


def assert_nothing_readable(data_dir: Path, db_path: Path) -> None:
    for path, data in file_bytes(data_dir).items():
        for needle in NEEDLES:
            for form in (needle, needle.lower(), needle.upper()):
                assert form.encode() not in data, f"{needle!r} readable in {path.name}"
    text = dump(db_path)
    for needle in NEEDLES:
        assert needle.lower() not in text.lower(), f"{needle!r} in sqlite3 .dump"


async def test_personal_fields_never_reach_the_file_in_clear(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db_path = data_dir / "referrals.db"
    async with rig_at(db_path) as rig:
        event_id = await rig.send(secret_referral())
        # And one message still waiting in the inbox, one undecryptable.
        async with rig.store.transaction() as tx:
            await tx.add_inbox(
                [
                    InboxItem(
                        "$waiting", DM, NURSE, 1, True, "pending", {"body": secret_referral()}
                    ),
                    InboxItem("$megolm", DM, NURSE, 2, True, "undecrypted", {"content": SECRETS}),
                ]
            )
        # While the bot runs: database, WAL and shared-memory file.
        assert on_postgres() or (data_dir / "referrals.db-wal").exists()
        assert_nothing_readable(data_dir, db_path)

        # ... while the code above the store sees plain values.
        async with rig.store.transaction() as tx:
            stored = await tx.referral_by_event(event_id)
            assert stored is not None
            assert stored.form["child"]["full_name"] == "Quillon Marchbanks"
            entries = await tx.record_of(stored.id)
            assert entries[0].detail["declared_by"] == NURSE
            waiting = await tx.next_pending(DM)
            assert waiting is not None and "Quillon" in waiting.body
    assert_nothing_readable(data_dir, db_path)

    # Every column that can hold personal data is ciphertext, and bound to its row.
    for table, column in (
        ("referrals", "form"),
        ("record_entries", "detail"),
        ("outbox", "content"),
        ("inbox", "payload"),
    ):
        values = [v for (v,) in sql(db_path, f"SELECT {column} FROM {table}") if v is not None]  # noqa: S608
        assert values and all(str(v).startswith("enc1:") for v in values), (table, column)
    # The matching key is the keyed hash of name and date of birth, not the name.
    [(child_key,)] = sql(db_path, "SELECT child_key FROM referrals")
    assert child_key == KEYRING.child_key("Quillon Marchbanks", date(2014, 5, 2))
    assert child_key != Keyring("another-key-" + "k" * 30).child_key(
        "Quillon Marchbanks", date(2014, 5, 2)
    )


async def test_a_ciphertext_moved_to_another_row_does_not_decrypt(tmp_path: Path) -> None:
    async with rig_at(tmp_path / "r.db") as rig:
        first = await rig.send(referral(Child_name="First Child"))
        second = await rig.send(referral(Child_name="Second Child"))
    sql(
        tmp_path / "r.db",
        "UPDATE referrals SET form = (SELECT form FROM referrals WHERE event_id = ?)"
        " WHERE event_id = ?",
        first,
        second,
    )
    async with opened(tmp_path / "r.db") as store:
        with pytest.raises(InvalidTag):
            async with store.transaction() as tx:
                await tx.referral_by_event(second)


async def test_the_wrong_database_key_is_refused_at_start(tmp_path: Path) -> None:
    async with opened(tmp_path / "r.db"):
        pass
    with pytest.raises(WrongDatabaseKey, match="database_key"):
        await Store.open(location(tmp_path / "r.db"), Keyring("not-the-key-" + "x" * 30))
    # ... and the refusal released the lock: the right key still opens it.
    async with opened(tmp_path / "r.db"):
        pass


async def test_one_process_at_a_time_holds_the_database(tmp_path: Path) -> None:
    async with opened(tmp_path / "r.db"):
        with pytest.raises(DatabaseInUse, match="stop the bot"):
            await Store.open(location(tmp_path / "r.db"), KEYRING)
        async with opened(tmp_path / "r.db", exclusive=False):
            pass
    async with opened(tmp_path / "r.db"):
        pass


async def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    if on_postgres():
        pytest.skip("SQLite's files; on PostgreSQL the server owns the files")
    old = os.umask(0o022)
    try:
        async with rig_at(tmp_path / "data" / "referrals.db") as rig:
            await rig.send(referral())
            data_dir = tmp_path / "data"
            names = {p.name for p in data_dir.iterdir()}
            assert {"referrals.db", "referrals.db-wal", "referrals.db-shm"} <= names
            for path in data_dir.iterdir():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
            assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    finally:
        os.umask(old)


async def test_rows_from_before_field_encryption_are_sealed_on_upgrade(tmp_path: Path) -> None:
    """A database written by schema step 1 (plain JSON) is encrypted and chained on open."""
    if on_postgres():
        pytest.skip("no PostgreSQL database predates field encryption")
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for statement in _split_sql(MIGRATIONS[0][1]):
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    form = {"child": {"full_name": "Legacy Oldname", "date_of_birth": "2014-05-02"}}
    db.execute(
        "INSERT INTO referrals (id, ref, year, year_seq, event_id, room_id, sender, received_at,"
        " declared_type, declared_by, current_type, immediate_danger, state, decision_due, form)"
        " VALUES (1, 'REF-2026-000001', 2026, 1, '$old', ?, ?, ?, 'contact', ?, 'contact', 0,"
        " 'received', ?, ?)",
        (DM, NURSE, START.isoformat(), NURSE, START.isoformat(), json.dumps(form)),
    )
    received = {"event_id": "$old", "declared_type": "contact", "declared_by": NURSE}
    db.execute(
        "INSERT INTO record_entries (referral_id, at, actor, kind, detail) VALUES"
        " (1, ?, ?, 'received', ?), (1, ?, 'referral-bot', 'ack_sent', '{}')",
        (START.isoformat(), NURSE, json.dumps(received), START.isoformat()),
    )
    db.execute(
        "INSERT INTO outbox (txn_id, room_id, content, sensitive, referral_id, purpose,"
        " created_at) VALUES ('t', ?, ?, 1, 1, 'ack', 't')",
        (DM, json.dumps({"room_id": DM, "body": "Legacy Oldname ack", "html": ""})),
    )
    db.execute(
        "INSERT INTO inbox (event_id, room_id, sender, origin_ts, room_encrypted, state,"
        " payload, received_at) VALUES ('$p', ?, ?, 1, 1, 'pending', ?, 't')",
        (DM, NURSE, json.dumps({"body": "!refer Legacy Oldname"})),
    )
    db.commit()
    db.close()
    assert b"Oldname" in path.read_bytes()

    async with opened(path) as store, store.snapshot() as tx:
        report = await tx.check_chains()
        referral_row = await tx.referral_by_ref("REF-2026-000001")
        assert referral_row is not None
        assert referral_row.form == form
        assert [e.detail for e in await tx.record_of(1)] == [received, {}]
    assert report.breaks == [] and report.entries == 2
    for data in file_bytes(tmp_path).values():
        assert b"Oldname" not in data
