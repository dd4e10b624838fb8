"""A user on a server that is not allowed gets nothing: the invite is declined, messages
are neither answered nor stored."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bot.app import BotApp
from bot.world import World
from tests.forms import referral

pytestmark = pytest.mark.integration


async def test_users_of_a_server_not_allowed_are_ignored_and_nothing_is_stored(
    world: World,
) -> None:
    # Every user of the test homeserver is now "foreign" to the bot.
    text = world.config_path.read_text(encoding="utf-8")
    allowed = f'allowed_homeservers = ["{world.hs.server_name}"]'
    assert allowed in text
    world.config_path.write_text(
        text.replace(allowed, 'allowed_homeservers = ["elsewhere.example"]'), encoding="utf-8"
    )
    app = BotApp(world.config)
    await app.start()  # joins the team room it is configured with, as an operator set it up
    try:
        await app.wait_ready()
        in_team = await world.worker.send(world.team_room, referral(Child_name="Foreign Teamchild"))
        help_in_team = await world.worker.send(world.team_room, "!help")
        # The invite comes after those messages, so the sync that shows it to the bot has
        # shown them too.
        stranger = await world.add_user(f"stranger-{world.bot_user[1:5]}")
        dm = await stranger.create_room(invite=[world.bot_user], encrypted=True)
        in_dm = await stranger.send(dm, referral(Child_name="Foreign Dmchild"))
        membership = None
        for _ in range(200):  # the invite is declined on the bot's next sync
            state = await stranger.client.room_get_state_event(dm, "m.room.member", world.bot_user)
            membership = getattr(state, "content", {}).get("membership")
            if membership != "invite":
                break
            await asyncio.sleep(0.05)
        assert membership == "leave"
        assert app.sync is not None and app.pipeline is not None
        syncs = app.sync.syncs
        # One more sync (woken by one more message) proves that the one that declined the
        # invite has finished storing whatever it kept.
        await world.worker.send(world.team_room, "just chatting")
        for _ in range(200):
            if app.sync.syncs > syncs:
                break
            await asyncio.sleep(0.05)
        await app.pipeline.wait_idle()
        await asyncio.sleep(0.5)  # time for a reply to arrive, if one were sent
    finally:
        await app.shutdown()

    answered = {
        r.in_reply_to for u in world.users for r in u.received if r.sender == world.bot_user
    }
    assert not answered & {in_dm, in_team, help_in_team}
    db = sqlite3.connect(world.config.storage.data_dir / "referrals.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM inbox").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM referrals").fetchone() == (0,)
    finally:
        db.close()
    for path in world.config.storage.data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"Dmchild" not in data and b"Teamchild" not in data, path.name
