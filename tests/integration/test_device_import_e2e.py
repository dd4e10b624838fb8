"""A device an older version kept in data_dir, moved into PostgreSQL on the first start
(bot/device_import.py), on a real Synapse.

The bot first runs with its device in data_dir (credentials.json, cross_signing.json and
nio's SQLite store, as the previous version kept them also on PostgreSQL) and takes a
referral in an encrypted DM. Then it starts with `storage.database` and the same data_dir,
without its password: it must stay the same device (same token, no new login, same
cross-signing identity), decrypt the next referral in the same room with the Megolm
session it had, and leave the local files renamed `*.moved-to-database`.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from bot.device_files import CREDENTIALS, CROSS_SIGNING
from bot.device_import import MOVED_SUFFIX
from bot.devprocess import BotProcess, free_port
from bot.world import World
from tests.forms import referral
from tests.integration.live import account_view, db_rows
from tests.integration.test_no_local_state_e2e import stored_credentials

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("engine", ["postgresql"], indirect=True),
]


async def test_a_device_kept_in_data_dir_is_moved_and_stays_the_same(
    engine: str, world: World
) -> None:
    port = free_port()
    world.configure(http_listen=f"127.0.0.1:{port}")
    on_postgres = world.config_path.read_text(encoding="utf-8")
    # The old layout: the device in data_dir (the bot's tables do not matter here).
    world.config_path.write_text(
        re.sub(r'^database = "postgresql://[^"]*"\n', "", on_postgres, count=1, flags=re.M),
        encoding="utf-8",
    )
    assert world.config.storage.database is None
    data = world.config.storage.data_dir
    nurse = await world.add_user(f"imp-nurse-{world.bot_user[1:5]}")
    old = BotProcess(world.config_path, world.base / "bot-old.log", http_port=port)
    async with old:
        await old.wait_healthy(timeout=60)
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        first = await nurse.send(dm, referral(Child_name="Moved Childone"))
        assert "REF-" in (await nurse.wait_reply(first, timeout=30)).body
    assert await old.stop() == 0
    creds = json.loads((data / CREDENTIALS).read_text())
    device, token = creds["device_id"], creds["access_token"]
    e2ee = data / "e2ee" / f"{world.bot_user}_{device}.db"
    assert e2ee.is_file() and (data / CROSS_SIGNING).is_file()
    before = await account_view(world, token)

    # The new version on PostgreSQL, the same data_dir, no password to log in with.
    world.config_path.write_text(on_postgres, encoding="utf-8")
    (world.base / "secrets" / "bot-password").unlink()

    # Without its E2EE store the device is not moved: the bot says why and stops.
    aside = e2ee.with_name("aside.db")
    e2ee.rename(aside)
    refused = BotProcess(world.config_path, world.base / "bot-refused.log", http_port=port)
    await refused.start()
    assert refused.proc is not None
    assert await asyncio.wait_for(refused.proc.wait(), 60) == 1
    said = refused.log()
    assert "referral-bot: cannot move the device" in said and "is missing" in said
    assert "Traceback" not in said
    assert (data / CREDENTIALS).is_file() and (data / CROSS_SIGNING).is_file()
    assert db_rows(world, "SELECT COUNT(*) FROM device_files") == [(0,)]
    aside.rename(e2ee)

    new = BotProcess(world.config_path, world.base / "bot-new.log", http_port=port)
    async with new:
        await new.wait_healthy(timeout=60)
        second = await nurse.send(dm, referral(Child_name="Moved Childtwo"))
        reply = await nurse.wait_reply(second, timeout=30)
        assert reply.decrypted and "REF-" in reply.body
        # The same device and token, no new login, the same cross-signing identity.
        after = await account_view(world, token)
    assert await new.stop() == 0

    assert after == before and after.device == device
    assert await stored_credentials(world) == (device, token)
    # Renamed, not deleted; nothing left that a later start would read.
    for path in (data / CREDENTIALS, data / CROSS_SIGNING, e2ee):
        assert not path.exists(), path
        assert path.with_name(path.name + MOVED_SUFFIX).is_file(), path
    assert db_rows(world, "SELECT COUNT(*) FROM accounts") == [(1,)]
    assert second in {str(e) for (e,) in db_rows(world, "SELECT event_id FROM referrals")}
