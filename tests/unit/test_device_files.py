"""Where the device's files are kept (bot/device_files.py): files in data_dir on SQLite,
sealed rows of `device_files` on PostgreSQL, readable from any machine with the same
config and never in clear in the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.cross_signing import CrossSigningKeys, KeyFileError, load_stored_keys, seal_keys
from bot.device_files import (
    CREDENTIALS,
    CROSS_SIGNING,
    DatabaseFiles,
    DataDirFiles,
    DeviceFileError,
    device_files_for,
)
from storage.engine import Postgres
from tests.engines import dump, edit_by_hand, sql
from tests.unit.rig import opened

pytestmark = pytest.mark.usefixtures("engine")

STORE_KEY = "store-key-" + "s" * 30
USER = "@bot:example.org"
TOKEN = "syt_secret_access_token_0123456789"
CREDS = json.dumps({"user_id": USER, "device_id": "BOTDEVICE", "access_token": TOKEN})


async def test_device_files_round_trip_and_are_sealed(tmp_path: Path, engine: str) -> None:
    data_a, data_b = tmp_path / "machine-a", tmp_path / "machine-b"
    keys = CrossSigningKeys.generate()
    async with opened(tmp_path / "r.db") as store:
        files = device_files_for(store, data_a, STORE_KEY)
        assert await files.read(CREDENTIALS) is None
        await files.write(CREDENTIALS, CREDS)
        await files.write(CROSS_SIGNING, seal_keys(keys, USER, STORE_KEY))
        await files.write(CREDENTIALS, CREDS)  # written again: replaced, not added
        where = store.where
    if engine == "sqlite":
        assert isinstance(files, DataDirFiles)
        assert json.loads((data_a / CREDENTIALS).read_text()) == json.loads(CREDS)
        assert (data_a / CREDENTIALS).stat().st_mode & 0o777 == 0o600
        assert sql(where, "SELECT COUNT(*) FROM device_files") == [(0,)]
        return

    # PostgreSQL: nothing on disk; another machine (another, empty data_dir) reads it all.
    assert isinstance(files, DatabaseFiles)
    assert not data_a.exists() or not any(data_a.iterdir())
    async with opened(tmp_path / "r.db") as store:
        other = device_files_for(store, data_b, STORE_KEY)
        assert await other.read(CREDENTIALS) == CREDS
        loaded = await load_stored_keys(other, USER, STORE_KEY)
        assert loaded is not None and loaded.public("master") == keys.public("master")
        # Another store key opens nothing (and says so).
        wrong = device_files_for(store, data_b, "another-key-" + "w" * 30)
        with pytest.raises(DeviceFileError, match=r"cannot be decrypted with storage\.store_key"):
            await wrong.read(CREDENTIALS)
        with pytest.raises(KeyFileError):
            await load_stored_keys(wrong, USER, STORE_KEY)
    rows = sql(where, "SELECT name FROM device_files ORDER BY name")
    assert rows == [(CREDENTIALS,), (CROSS_SIGNING,)]
    # Neither the token, the device ID nor the user ID is in the table in clear.
    everything = dump(where)
    for secret in (TOKEN, "BOTDEVICE", USER, keys.public("master")):
        assert secret not in everything
        assert secret.encode().hex() not in everything


async def test_a_row_moved_to_another_name_does_not_open(tmp_path: Path, engine: str) -> None:
    if engine == "sqlite":
        pytest.skip("rows are used on PostgreSQL only")
    async with opened(tmp_path / "r.db") as store:
        files = device_files_for(store, tmp_path / "data", STORE_KEY)
        await files.write(CREDENTIALS, CREDS)
        await files.write(CROSS_SIGNING, "{}")
        assert isinstance(store.where, Postgres)
        edit_by_hand(
            store.where,
            "UPDATE device_files SET content = (SELECT content FROM device_files"
            " WHERE name = 'credentials.json') WHERE name = 'cross_signing.json'",
        )
        with pytest.raises(DeviceFileError):
            await files.read(CROSS_SIGNING)


async def test_a_device_left_in_data_dir_is_not_replaced_by_a_new_login(
    tmp_path: Path, engine: str
) -> None:
    """An older bot on PostgreSQL kept its device in data_dir: refuse, do not log in anew."""
    if engine == "sqlite":
        pytest.skip("PostgreSQL only")
    data = tmp_path / "data"
    data.mkdir()
    (data / CREDENTIALS).write_text(CREDS)
    async with opened(tmp_path / "r.db") as store:
        with pytest.raises(DeviceFileError, match="new device"):
            await device_files_for(store, data, STORE_KEY).read(CREDENTIALS)
