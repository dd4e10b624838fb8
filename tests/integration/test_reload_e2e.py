"""Roles reloaded without a restart, on a real Synapse with the bot run as an operator
runs it (`referral-bot run -c FILE`): by `!reload` from an admin, and by SIGHUP. A reload
reaches every part of the bot: emoji verification too, not only the team's commands."""

from __future__ import annotations

import re
import signal

import pytest

from bot.world import World
from tests.forms import referral
from tests.integration.botproc import BotProcess
from tests.integration.live import db_rows, open_dm

pytestmark = pytest.mark.integration


async def test_reload_by_admin_and_by_sighup(world: World) -> None:
    assert world.manager is not None
    admin, worker = world.manager, world.worker
    team = world.team_room
    # The worker's session is pinned (verified), so it may vouch for others' sessions.
    pin = (
        "\n[[trust.pinned_devices]]\n"
        f'user_id = "{worker.user_id}"\n'
        f'device_id = "{worker.client.device_id}"\n'
        f'ed25519 = "{worker.client.olm.account.identity_keys["ed25519"]}"\n'
    )
    text = world.config_path.read_text(encoding="utf-8") + pin
    managers_line = f'managers = ["{admin.user_id}"]'
    with_admin = text.replace(managers_line, f'{managers_line}\nadmins = ["{admin.user_id}"]')
    without_worker = with_admin.replace(f'advice_team = ["{worker.user_id}"]', "advice_team = []")
    world.config_path.write_text(with_admin, encoding="utf-8")

    async with BotProcess(world.config_path, world.base / "bot.log") as bot:
        nurse, dm = await open_dm(world, f"reload-{world.bot_user[1:5]}")
        root = await nurse.send(dm, referral())
        ref = re.findall(r"REF-\d{4}-\d{6}", (await nurse.wait_reply(root)).body)[0]
        await worker.wait_joined(team, world.bot_user)
        vouch = f"!verify-match {nurse.user_id} NOSUCHSESSION"
        may_vouch = await worker.wait_reply(await worker.send(team, vouch))

        world.config_path.write_text(without_worker, encoding="utf-8")
        reload = await admin.send(team, "!reload")
        reloaded = await admin.wait_reply(reload)
        refused = await worker.wait_reply(await worker.send(team, f"!claim {ref}"))
        vouch_refused = await worker.wait_reply(await worker.send(team, vouch))

        world.config_path.write_text(
            with_admin.replace("[team]", "[team]\nworkers = 3"), encoding="utf-8"
        )
        bad = await admin.wait_reply(await admin.send(team, "!reload"))
        still_refused = await worker.wait_reply(await worker.send(team, f"!claim {ref}"))

        world.config_path.write_text(with_admin, encoding="utf-8")
        mark = len(bot.log())
        bot.signal(signal.SIGHUP)
        await bot.wait_log("configuration reloaded (SIGHUP)", after=mark)
        claimed = await worker.wait_reply(await worker.send(team, f"!claim {ref}"))

    assert "Configuration reloaded" in reloaded.body
    assert f"team.advice_team: removed {worker.user_id}" in reloaded.body
    assert "Only members of the advice team" in refused.body
    assert "no verification of session NOSUCHSESSION" in may_vouch.body, "passed the role check"
    assert "advice team can use !verify-match for another person's session" in vouch_refused.body
    assert "NOT reloaded" in bad.body and "team.workers: unknown key" in bad.body
    assert "Only members of the advice team" in still_refused.body, "old settings kept"
    assert "You have claimed" in claimed.body
    assert db_rows(world, "SELECT claimed_by FROM referrals") == [(worker.user_id,)]
