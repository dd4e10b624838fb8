"""Nothing of the bot on local disk with PostgreSQL (issue 13, part 2), on a real Synapse.

The bot runs as its own process with data_dir A, takes a referral in an encrypted DM and
stops; then it is started with a new, empty data_dir B (another machine) and the same
database, without its password. It must be the same device (whoami with the stored token,
still one device on the account), with the same cross-signing identity, and decrypt and
acknowledge the next referrals: in the same room (the Megolm session it kept) and from a
practitioner it has never met (Olm with its kept account). Neither data_dir holds a
credentials file, a key file or an E2EE store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cross_signing import PublishedIdentity, device_is_cross_signed
from bot.device_files import CREDENTIALS, DatabaseFiles
from bot.devprocess import BotProcess, free_port
from bot.maintenance import database_location
from bot.session import parse_credentials
from bot.world import World
from storage.engine import Store
from storage.keyring import Keyring
from tests.forms import referral
from tests.integration.live import account_view, db_rows

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("engine", ["postgresql"], indirect=True),
]

LOCAL_STATE = ("credentials.json", "cross_signing.json", "e2ee")


async def stored_credentials(world: World) -> tuple[str, str]:
    """(device ID, access token) as the bot keeps them, unsealed with the store key."""
    config = world.config
    store = await Store.open(
        database_location(config), Keyring(config.storage.database_key.read()), exclusive=False
    )
    try:
        files = DatabaseFiles(store, config.storage.store_key.read(), world.base / "nowhere")
        text = await files.read(CREDENTIALS)
    finally:
        await store.close()
    assert text is not None
    creds = parse_credentials(text)
    return creds.device_id, creds.access_token


def local_state(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []


async def test_a_bot_started_elsewhere_is_the_same_device(engine: str, world: World) -> None:
    port = free_port()
    world.configure(http_listen=f"127.0.0.1:{port}")
    data_a = world.config.storage.data_dir
    bot = BotProcess(world.config_path, world.base / "bot.log", http_port=port)
    nurse = await world.add_user(f"nls-nurse-{world.bot_user[1:5]}")
    async with bot:
        await bot.wait_healthy(timeout=60)
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        first = await nurse.send(dm, referral(Child_name="Elsewhere Childone"))
        assert "REF-" in (await nurse.wait_reply(first, timeout=30)).body
    assert await bot.stop() == 0
    device_a, token = await stored_credentials(world)
    before = await account_view(world, token)
    assert before.device == device_a
    assert not [n for n in LOCAL_STATE if n in local_state(data_a)], local_state(data_a)

    # Another machine: a new, empty data_dir, the same database; no password to log in.
    text = world.config_path.read_text(encoding="utf-8")
    world.config_path.write_text(text.replace('data_dir = "data"', 'data_dir = "data-b"', 1))
    (world.base / "secrets" / "bot-password").unlink()
    data_b = world.config.storage.data_dir
    assert data_b != data_a and not data_b.exists()
    bot_b = BotProcess(world.config_path, world.base / "bot-b.log", http_port=port)
    async with bot_b:
        await bot_b.wait_healthy(timeout=60)
        second = await nurse.send(dm, referral(Child_name="Elsewhere Childtwo"))
        reply = await nurse.wait_reply(second, timeout=30)
        assert reply.decrypted and "REF-" in reply.body
        # A practitioner the bot never met: Olm sessions from the kept account.
        stranger = await world.add_user(f"nls-new-{world.bot_user[1:5]}")
        dm2 = await stranger.create_room(invite=[world.bot_user], encrypted=True)
        await stranger.wait_joined(dm2, world.bot_user)
        third = await stranger.send(dm2, referral(Child_name="Elsewhere Childthree"))
        reply = await stranger.wait_reply(third, timeout=30)
        assert reply.decrypted and "REF-" in reply.body

        # The same device with the same token, no new login (the account's other device
        # is the one its registration made), the same cross-signing identity.
        after = await account_view(world, token)
    assert await bot_b.stop() == 0

    assert after == before
    published = PublishedIdentity.from_query(after.keys, world.bot_user, device_a)
    assert device_is_cross_signed(published, world.bot_user, device_a)
    assert await stored_credentials(world) == (device_a, token)
    assert not [n for n in LOCAL_STATE if n in local_state(data_b)], local_state(data_b)
    assert {str(e) for (e,) in db_rows(world, "SELECT event_id FROM referrals")} == {
        first,
        second,
        third,
    }
    assert db_rows(world, "SELECT COUNT(*) FROM accounts") == [(1,)]
