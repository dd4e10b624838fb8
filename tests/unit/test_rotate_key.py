"""`referral-bot rotate-key`: everything re-encrypted with the new key, nothing lost."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from handlers.ports import OutgoingMessage
from schemas.messages import InboxItem
from storage.engine import Store, WrongDatabaseKey
from storage.keyring import Keyring
from tests.engines import dump, location
from tests.forms import referral
from tests.keys import KEYRING
from tests.unit.rig import (
    DM,
    NURSE,
    cli,
    edit_by_hand,
    file_bytes,
    opened,
    rig_at,
    sql,
    write_config,
)

NEW_KEY = "the-new-database-key-" + "n" * 24
NEW = Keyring(NEW_KEY)
ENCRYPTED_COLUMNS = (
    ("referrals", "form"),
    ("record_entries", "detail"),
    ("outbox", "content"),
    ("inbox", "payload"),
)

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")


@dataclass
class Seen:
    """Everything a reader of the store gets back, to compare before and after."""

    forms: dict[str, dict[str, Any]]
    records: dict[str, list[tuple[str, str, dict[str, Any]]]]
    unsent: list[OutgoingMessage]
    pending: str | None


async def seen(store: Store) -> Seen:
    async with store.snapshot() as tx:
        forms: dict[str, dict[str, Any]] = {}
        records: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
        for n in range(1, 4):
            r = await tx.referral_by_ref(f"REF-2026-{n:06d}")
            assert r is not None
            forms[r.ref] = r.form
            records[r.ref] = [(e.actor, e.kind, e.detail) for e in await tx.record_of(r.id)]
        unsent = [row.message for row in await tx.unsent()]
        pending = await tx.next_pending(DM)
    return Seen(forms, records, unsent, None if pending is None else pending.body)


def ciphertexts(db_path: Path) -> list[bytes]:
    out = []
    for table, column in ENCRYPTED_COLUMNS:
        for (value,) in sql(db_path, f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"):  # noqa: S608
            # The raw AES-GCM bytes, and their base64 text as stored.
            raw = base64.b64decode(str(value)[len("enc1:") :])
            out += [raw[12:40], str(value)[5:45].encode()]
    return out


@pytest.fixture
async def filled(tmp_path: Path) -> Path:
    config = write_config(tmp_path)
    async with rig_at(tmp_path / "data" / "referrals.db") as rig:
        for name in ("Ada Rotate", "Ben Rotate", "Cy Rotate"):
            await rig.send(referral(Child_name=name))
        async with rig.store.transaction() as tx:  # work in hand: not handled, not sent
            await tx.add_inbox(
                [InboxItem("$later", DM, NURSE, 1, True, "pending", {"body": "!refer later"})]
            )
            await tx.enqueue(
                OutgoingMessage(DM, "queued reply", "<p>queued reply</p>"),
                txn_id="queued",
                purpose="help",
            )
    return config


async def test_rotation_reencrypts_everything_and_loses_nothing(
    tmp_path: Path, filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = tmp_path / "data" / "referrals.db"
    async with opened(db_path) as store:
        before = await seen(store)
    old_ciphertexts = ciphertexts(db_path)
    (tmp_path / "new-key").write_text(NEW_KEY + "\n")

    assert await cli("rotate-key", "-c", filled, "--new-key-file", tmp_path / "new-key") == 0
    out = capsys.readouterr().out
    assert "Re-encrypted 3 referral(s), 9 running-record entries, 7 outgoing and 1 incoming" in out
    assert "point storage.database_key at the new key" in out

    with pytest.raises(WrongDatabaseKey):
        await Store.open(location(db_path), KEYRING)
    async with opened(db_path, NEW) as store:
        assert await seen(store) == before
    assert before.pending == "!refer later" and [m.body for m in before.unsent] == ["queued reply"]
    # The matching key now comes from the new key.
    keys = {k for (k,) in sql(db_path, "SELECT child_key FROM referrals")}
    assert NEW.child_key("Ada Rotate", date(2014, 5, 2)) in keys
    assert KEYRING.child_key("Ada Rotate", date(2014, 5, 2)) not in keys
    # No ciphertext under the old key is left in the database or its WAL.
    for path, data in file_bytes(tmp_path / "data").items():
        for old in old_ciphertexts:
            assert old not in data, f"old ciphertext left in {path.name}"
    stored = dump(db_path)
    assert not any(old.decode("latin-1") in stored for old in old_ciphertexts[1::2])
    # With the config pointing at the new key, every chain verifies.
    (tmp_path / "secrets" / "database-key").write_text(NEW_KEY)
    assert await cli("verify", "-c", filled) == 0


async def test_the_new_key_can_come_from_the_environment(
    tmp_path: Path, filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEW_DB_KEY", NEW_KEY)
    assert await cli("rotate-key", "-c", filled, "--new-key-env", "NEW_DB_KEY") == 0
    async with opened(tmp_path / "data" / "referrals.db", NEW):
        pass


async def test_rotation_is_refused_while_the_bot_runs(
    tmp_path: Path, filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new_key_file = tmp_path / "new-key"
    new_key_file.write_text(NEW_KEY)
    async with opened(tmp_path / "data" / "referrals.db"):  # the running bot
        assert await cli("rotate-key", "-c", filled, "--new-key-file", new_key_file) == 2
    assert "stop the bot first" in capsys.readouterr().err
    async with opened(tmp_path / "data" / "referrals.db"):  # still the old key
        pass


async def test_rotation_is_refused_when_a_record_is_already_broken(
    tmp_path: Path, filled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = tmp_path / "data" / "referrals.db"
    edit_by_hand(db_path, "UPDATE record_entries SET actor = '@x:example.org' WHERE id = 4")
    untouched = sql(db_path, "SELECT form FROM referrals ORDER BY id")
    (tmp_path / "new-key").write_text(NEW_KEY)
    assert await cli("rotate-key", "-c", filled, "--new-key-file", tmp_path / "new-key") == 1
    err = capsys.readouterr().err
    assert "BROKEN: REF-2026-000002, running-record entry 4" in err
    assert "Key NOT rotated" in err
    assert sql(db_path, "SELECT form FROM referrals ORDER BY id") == untouched


@pytest.mark.parametrize(
    ("key", "message"),
    [("short", "too short"), ("unit-test-database-key-0123456789abcdef", "already")],
)
async def test_a_weak_or_unchanged_new_key_is_refused(
    tmp_path: Path, filled: Path, capsys: pytest.CaptureFixture[str], key: str, message: str
) -> None:
    (tmp_path / "new-key").write_text(key)
    assert await cli("rotate-key", "-c", filled, "--new-key-file", tmp_path / "new-key") == 2
    assert message in capsys.readouterr().err
