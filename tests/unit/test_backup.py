"""Backup and the restore drill (SQLite): back up while the bot runs, take more referrals,
lose the data directory, restore, start: every referral in the backup is intact and
verifies; a restore over newer records is refused unless forced."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from nio.crypto import OlmAccount

from bot.crypto_store_pg import PostgresCryptoStore
from bot.device_files import CREDENTIALS, device_files_for
from bot.devpostgres import DevPostgres
from storage.engine import Postgres
from tests import engines
from tests.forms import referral
from tests.unit.rig import cli, rig_at, sql, write_config

NIO_STORE = "e2ee/@bot:example.org_BOTDEVICE.db"
STORE_KEY = "backup-test-store-key-" + "k" * 20


def fake_nio_state(data_dir: Path) -> None:
    """What matrix-nio and the session keep beside the database (contents made up)."""
    (data_dir / "e2ee").mkdir(mode=0o700, parents=True, exist_ok=True)
    db = sqlite3.connect(data_dir / NIO_STORE)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE accounts (pickle TEXT)")
    db.execute("INSERT INTO accounts VALUES ('olm-pickle-1')")
    db.commit()
    db.close()
    (data_dir / "credentials.json").write_text('{"device_id": "BOTDEVICE"}')
    (data_dir / "cross_signing.json").write_text('{"sealed": "keys"}')


def refs(db_path: Path) -> list[str]:
    return [str(r[0]) for r in sql(db_path, "SELECT ref FROM referrals ORDER BY id")]


async def test_the_restore_drill(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    data_dir = tmp_path / "data"
    db_path = data_dir / "referrals.db"
    backup_dir = tmp_path / "backup-1"
    async with rig_at(db_path) as rig:
        await rig.send(referral(Child_name="Before One"))
        await rig.send(referral(Child_name="Before Two"))
        fake_nio_state(data_dir)
        # Online: the bot is running (holds the database) while the backup is taken.
        assert await cli("backup", "-c", config, "-o", backup_dir) == 0
        before = refs(db_path)
        await rig.send(referral(Child_name="After Backup"))
    assert "Backed up 4 file(s)" in capsys.readouterr().out
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        "referrals.db",
        NIO_STORE,
        "credentials.json",
        "cross_signing.json",
    }
    assert manifest["marks"]["referrals"] == 2
    assert all(p.stat().st_mode & 0o077 == 0 for p in backup_dir.rglob("*"))
    # No key in the backup.
    secrets = [(tmp_path / "secrets" / n).read_bytes() for n in ("database-key", "store-key")]
    for p in backup_dir.rglob("*"):
        if p.is_file():
            assert not any(s in p.read_bytes() for s in secrets)

    # The database now holds a referral the backup does not: refused without --force.
    assert await cli("restore", "-c", config, "-i", backup_dir) == 1
    assert "NOT restored: the current database holds newer records" in capsys.readouterr().err
    assert len(refs(db_path)) == 3

    # While a bot runs, restore is refused whatever the flags.
    async with rig_at(db_path):
        assert await cli("restore", "-c", config, "-i", backup_dir, "--force") == 2
    assert "in use by another referral-bot process" in capsys.readouterr().err

    # The disk is lost; the backup comes back; the bot starts on it.
    shutil.rmtree(data_dir)
    assert await cli("restore", "-c", config, "-i", backup_dir) == 0
    out = capsys.readouterr().out
    assert "Restored 4 file(s)" in out and "2 referral(s)" in out and "every chain intact" in out
    assert refs(db_path) == before
    assert (data_dir / "credentials.json").read_text() == '{"device_id": "BOTDEVICE"}'
    nio = sqlite3.connect(data_dir / NIO_STORE)
    assert nio.execute("SELECT pickle FROM accounts").fetchall() == [("olm-pickle-1",)]
    nio.close()
    assert await cli("verify", "-c", config) == 0
    async with rig_at(db_path) as rig:
        async with rig.store.transaction() as tx:
            first = await tx.referral_by_ref(before[0])
            assert first is not None and first.form["child"]["full_name"] == "Before One"
            assert await tx.next_year_seq(2026) == 3  # numbering goes on from the backup
        await rig.send(referral(Child_name="After Restore"))
    assert len(refs(db_path)) == 3


async def test_a_damaged_or_unfinished_backup_is_not_restored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    db_path = tmp_path / "data" / "referrals.db"
    async with rig_at(db_path) as rig:
        await rig.send(referral())
    backup_dir = tmp_path / "b"
    assert await cli("backup", "-c", config, "-o", backup_dir) == 0
    assert await cli("backup", "-c", config, "-o", backup_dir) == 2  # not into a used folder
    copy = backup_dir / "data" / "referrals.db"
    data = bytearray(copy.read_bytes())
    data[-100] ^= 0xFF
    copy.write_bytes(bytes(data))
    shutil.rmtree(tmp_path / "data")
    assert await cli("restore", "-c", config, "-i", backup_dir) == 2
    assert "damaged (checksum): nothing restored" in capsys.readouterr().err
    assert not (tmp_path / "data" / "referrals.db").exists()
    (backup_dir / "manifest.json").unlink()
    assert await cli("restore", "-c", config, "-i", backup_dir) == 2
    assert "not a (finished) backup" in capsys.readouterr().err


async def test_the_restore_drill_on_postgresql(
    tmp_path: Path, postgres_server: DevPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented path: `pg_dump` of the bot's tables beside `referral-bot backup` of
    data_dir; the database is lost; `pg_restore`, `referral-bot restore`, start."""
    engines.CURRENT = postgres_server
    try:
        config = write_config(tmp_path)
        db_path = tmp_path / "data" / "referrals.db"
        schema = engines.schema_for(db_path)
        data_dir = tmp_path / "data"
        async with rig_at(db_path) as rig:
            await rig.send(referral(Child_name="Before One"))
            await rig.send(referral(Child_name="Before Two"))
            # The device lives in the database: its files and nio's E2EE store.
            files = device_files_for(rig.store, data_dir, STORE_KEY)
            await files.write(CREDENTIALS, '{"device_id": "BOTDEVICE"}')
            assert isinstance(rig.store.where, Postgres)
            nio = PostgresCryptoStore(
                "@bot:example.org", "BOTDEVICE", "-", STORE_KEY,
                postgres=rig.store.where, epoch=rig.store.epoch,
            )  # fmt: skip
            account = OlmAccount()
            nio.save_account(account)
            nio.close()
            dump = postgres_server.socket_dir / f"{schema}.dump"
            postgres_server.tool("pg_dump", "-d", engines.DATABASE, "-n", schema, "-Fc", "-f", dump)
            assert await cli("backup", "-c", config, "-o", tmp_path / "b") == 0
            before = refs(db_path)
            await rig.send(referral(Child_name="After Backup"))
        assert json.loads((tmp_path / "b" / "manifest.json").read_text())["engine"] == "postgresql"
        out = capsys.readouterr().out
        assert "pg_dump" in out and "Backed up 0 file(s)" in out
        assert not data_dir.exists() or not any(data_dir.iterdir())

        # Newer records in the database: refused.
        assert await cli("restore", "-c", config, "-i", tmp_path / "b") == 1
        # The database and the data directory are lost; both come back.
        postgres_server.sql(f"DROP SCHEMA {schema} CASCADE", engines.DATABASE)
        shutil.rmtree(data_dir, ignore_errors=True)
        postgres_server.tool("pg_restore", "-d", engines.DATABASE, dump)
        assert await cli("restore", "-c", config, "-i", tmp_path / "b") == 0
        assert refs(db_path) == before
        assert not data_dir.exists() or not any(data_dir.iterdir())
        assert await cli("verify", "-c", config) == 0
        async with rig_at(db_path) as rig:
            await rig.send(referral(Child_name="After Restore"))
            # The device came back with the tables, and its new leader can write to it.
            files = device_files_for(rig.store, data_dir, STORE_KEY)
            assert await files.read(CREDENTIALS) == '{"device_id": "BOTDEVICE"}'
            assert isinstance(rig.store.where, Postgres)
            nio = PostgresCryptoStore(
                "@bot:example.org", "BOTDEVICE", "-", STORE_KEY,
                postgres=rig.store.where, epoch=rig.store.epoch,
            )  # fmt: skip
            restored = nio.load_account()
            assert restored is not None and restored.identity_keys == account.identity_keys
            nio.save_sync_token("s_after_restore")
            nio.close()
        assert len(refs(db_path)) == 3
    finally:
        engines.CURRENT = None
