"""Running the bot as an operator does: `referral-bot run` in its own process, watched
through /healthz and /metrics, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter

import pytest

from bot.app import BotApp
from bot.devprocess import BotProcess, free_port
from bot.http_ops import OpsServer
from bot.world import World
from tests.forms import referral
from tests.integration.live import db_rows

pytestmark = pytest.mark.integration


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    return None


async def test_health_is_503_with_a_reason_until_logged_in(world: World) -> None:
    app = BotApp(world.config)
    assert await OpsServer(app, "127.0.0.1", 0, app.metrics).health() == "not logged in"


async def test_run_is_watched_over_http_and_stops_cleanly_on_sigterm(world: World) -> None:
    port = free_port()
    world.configure(http_listen=f"127.0.0.1:{port}", log_format="json")
    bot = BotProcess(world.config_path, world.base / "bot.log", http_port=port)
    async with bot:
        await bot.wait_healthy(timeout=30)
        nurse = await world.add_user(f"ops-nurse-{world.bot_user[1:5]}")
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        first = await nurse.send(dm, referral(Child_name="Opsname Childone"))
        await nurse.wait_reply(first)
        await world.worker.wait_for(lambda r: r.room_id == world.team_room, timeout=20)

        text = await bot.metrics()
        assert (
            metric(
                text, "referralbot_referrals", type="child_protection_referral", state="received"
            )
            == 1
        )
        assert metric(text, "referralbot_ack_latency_seconds_count") == 1
        assert metric(text, "referralbot_outbox_depth") == 0
        assert metric(text, "referralbot_decisions_overdue") == 0
        assert metric(text, "referralbot_decrypt_failures") == 0
        assert metric(text, "referralbot_ready") == 1
        assert "Opsname" not in text and nurse.user_id not in text

        # Referrals arrive; SIGTERM as soon as the first of them is acknowledged.
        burst = [await nurse.send(dm, referral(Child_name=f"Opsname Burst {n}")) for n in range(5)]
        await nurse.wait_for(lambda r: r.in_reply_to in set(burst), timeout=20)
        exit_code = await bot.stop(timeout=20)  # SIGTERM

    assert exit_code == 0
    # Everything in hand was finished: nothing pending, nothing left in the outbox.
    assert db_rows(world, "SELECT COUNT(*) FROM inbox WHERE state = 'pending'") == [(0,)]
    assert db_rows(world, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
    recorded = {e for (e,) in db_rows(world, "SELECT event_id FROM referrals")}
    assert first in recorded

    # Logs: JSON lines with IDs, never names.
    log = bot.log()
    lines = [line for line in log.splitlines() if not line.startswith("---- start")]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len(lines), "every log line is one JSON object"
    assert any(r.get("event") == first and r.get("ref") for r in records)
    assert "Opsname" not in log

    # What the bot had not stored yet is taken on the next start, and nothing twice.
    app = BotApp(world.config)
    await app.start()
    try:
        await app.wait_ready()
        await nurse.wait_for(lambda r: r.in_reply_to in set(burst), timeout=30, count=5)
        await asyncio.sleep(1.0)
    finally:
        await app.shutdown()
    acks = Counter(r.in_reply_to for r in nurse.received if r.sender == world.bot_user)
    assert all(acks[e] == 1 for e in [first, *burst])
