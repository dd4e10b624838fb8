"""`!reload` and SIGHUP: roles change from the next command on; a bad file changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from nio import AsyncClient

from bot.device_trust import DeviceTrust
from bot.reload import ConfigReloader
from bot.verification import Verifier
from handlers.settings import Settings
from schemas.config import load_config
from schemas.messages import InboxItem
from tests.unit.harness import MANAGER, NURSE, TEAM_ROOM, WORKER, WORKER2, Harness
from tests.unit.test_workflow import column, refer

ADMIN = "@admin:example.org"

CONFIG = """
[homeserver]
url = "http://127.0.0.1:8008"
[bot]
user_id = "@bot:example.org"
password = {{ env = "RB_TEST_PASSWORD" }}
[storage]
data_dir = "data"
store_key = {{ file = "key" }}
database_key = {{ file = "key" }}
[access]
allowed_homeservers = ["example.org"]
[rooms]
advice_team = "!team:example.org"
[team]
advice_team = [{workers}]
managers = ["{manager}"]
admins = ["{admin}"]
"""


def config_text(workers: tuple[str, ...] = (WORKER, WORKER2), admin: str = ADMIN) -> str:
    return CONFIG.format(workers=", ".join(f'"{w}"' for w in workers), manager=MANAGER, admin=admin)


@pytest_asyncio.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    path = tmp_path / "config.toml"
    path.write_text(config_text(), encoding="utf-8")
    harness = await Harness.open(tmp_path / "r.db")
    config = load_config(path)
    harness.pipeline.settings = Settings.from_config(config, TEAM_ROOM)
    harness.pipeline.reloader = ConfigReloader(path, config, harness.pipeline.current)
    yield harness
    await harness.store.close()


def rewrite(h: Harness, text: str) -> None:
    assert isinstance(h.pipeline.reloader, ConfigReloader)
    h.pipeline.reloader.path.write_text(text, encoding="utf-8")


async def test_a_worker_removed_and_reloaded_can_no_longer_claim(h: Harness) -> None:
    _, ref = await refer(h)
    rewrite(h, config_text(workers=(WORKER2,)))
    e = await h.send(ADMIN, "!reload", room=TEAM_ROOM)
    answer = h.reply(e)
    assert "Configuration reloaded" in answer
    assert f"team.advice_team: removed {WORKER}" in answer

    claim = await h.send(WORKER, f"!claim {ref}", room=TEAM_ROOM)
    assert "Only members of the advice team" in h.reply(claim)
    assert column(h, ref, "claimed_by") is None
    other = await h.send(WORKER2, f"!claim {ref}", room=TEAM_ROOM)
    assert "You have claimed" in h.reply(other)


async def test_a_bad_file_lists_its_problems_and_keeps_the_settings(h: Harness) -> None:
    _, ref = await refer(h)
    rewrite(h, config_text().replace("[team]", "[team]\nadvice_teem = []") + "\nmanagers2 = 1\n")
    before = h.pipeline.settings
    e = await h.send(ADMIN, "!reload", room=TEAM_ROOM)
    answer = h.reply(e)
    assert "NOT reloaded" in answer and "unchanged" in answer
    assert "team.advice_teem: unknown key" in answer and "team.managers2" in answer
    assert h.pipeline.settings is before
    claim = await h.send(WORKER, f"!claim {ref}", room=TEAM_ROOM)
    assert "You have claimed" in h.reply(claim)

    rewrite(h, "not toml [")
    e = await h.send(ADMIN, "!reload", room=TEAM_ROOM)
    assert "not valid TOML" in h.reply(e)
    assert h.pipeline.settings is before


async def test_keys_that_need_a_restart_are_kept_and_named(h: Harness) -> None:
    rewrite(
        h,
        config_text()
        .replace('url = "http://127.0.0.1:8008"', 'url = "http://127.0.0.1:9009"')
        .replace('allowed_homeservers = ["example.org"]', 'allowed_homeservers = ["evil.org"]')
        + "\n[deadlines]\nred_working_hours = 2\n",
    )
    e = await h.send(ADMIN, "!reload", room=TEAM_ROOM)
    answer = h.reply(e)
    assert "only applied at a restart" in answer and "homeserver, access" in answer
    assert "deadlines: changed" in answer
    settings = h.pipeline.settings
    assert settings.allowed_homeservers == frozenset({"example.org"})
    assert settings.deadlines.red_working_hours == 2


async def test_only_an_admin_may_reload_and_not_in_a_group_room(h: Harness) -> None:
    rewrite(h, config_text(workers=()))
    for who, room in ((MANAGER, TEAM_ROOM), (WORKER, TEAM_ROOM), (NURSE, None)):
        e = await h.send(who, "!reload", room=room)
        assert "Only an admin" in h.reply(e)
    group = await h.send(ADMIN, "!reload", room="!group:example.org", private=False)
    assert "advice-team room or in a direct message" in h.reply(group)
    assert WORKER in h.pipeline.settings.team

    dm = await h.send(ADMIN, "!reload")  # a direct message with the bot
    assert "Configuration reloaded" in h.reply(dm)
    assert WORKER not in h.pipeline.settings.team


async def test_admins_see_reload_in_help(h: Harness) -> None:
    assert "!reload" in h.reply(await h.send(ADMIN, "!help"))
    assert "!reload" not in h.reply(await h.send(WORKER, "!help", room=TEAM_ROOM))


async def test_a_worker_removed_and_reloaded_can_no_longer_vouch_for_a_session(h: Harness) -> None:
    """Verification shares the pipeline's settings: a reload reaches it too (it once kept
    the settings it was started with, so a removed worker could still `!verify-match`)."""
    client = AsyncClient("http://127.0.0.1:9", "@bot:example.org")
    trust = DeviceTrust(client, h.store, h.pipeline.current, strict=False)
    verifier = Verifier(client, h.store, h.pipeline.current, trust)

    async def verify_match(event_id: str) -> str:
        """`!verify-match` for the nurse's session, from a verified session of WORKER's
        (the proof `screen` takes from the message's keys is given here as `vouched`)."""
        item = InboxItem(event_id, TEAM_ROOM, WORKER, 0, True, "pending", {"body": "!verify-match"})
        verifier.command(item, "!verify-match", [NURSE, "PHONE"], None, True, readable=True)
        async with h.store.transaction() as tx:
            await verifier.write(tx)
            rooms = tx.touched_rooms
        h.pipeline.outbox_workers.kick_all(rooms)
        await h.pipeline.wait_idle()
        return h.reply(event_id)

    before = await verify_match("$vm-before")
    assert "no verification of session PHONE" in before, "the worker passes the role check"

    rewrite(h, config_text(workers=(WORKER2,)))
    assert "Configuration reloaded" in h.reply(await h.send(ADMIN, "!reload", room=TEAM_ROOM))
    after = await verify_match("$vm-after")
    assert "advice team can use !verify-match for another person's session" in after
    assert trust.settings is h.pipeline.settings and WORKER not in trust.settings.team
    await client.close()
