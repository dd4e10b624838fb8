"""Running the bot as an operator does: `referral-bot run` in its own process, watched
through /healthz and /metrics, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from bot.app import BotApp
from bot.http_ops import OpsServer
from bot.world import World
from tests.forms import referral
from tests.integration.live import db_rows

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def get(url: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        return resp.status, await resp.text()


async def wait_healthy(base: str, proc: asyncio.subprocess.Process, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise AssertionError(f"referral-bot exited early with code {proc.returncode}")
        try:
            status, _ = await get(f"{base}/healthz")
            if status == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("/healthz never answered 200")


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
    base = f"http://127.0.0.1:{port}"
    world.configure(http_listen=f"127.0.0.1:{port}", log_format="json")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.cli",
        "run",
        "-c",
        str(world.config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        await wait_healthy(base, proc)
        nurse = await world.add_user(f"ops-nurse-{world.bot_user[1:5]}")
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        first = await nurse.send(dm, referral(Child_name="Opsname Childone"))
        await nurse.wait_reply(first)
        await world.worker.wait_for(lambda r: r.room_id == world.team_room, timeout=20)

        status, text = await get(f"{base}/metrics")
        assert status == 200
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
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert proc.returncode == 0
    # Everything in hand was finished: nothing pending, nothing left in the outbox.
    assert db_rows(world, "SELECT COUNT(*) FROM inbox WHERE state = 'pending'") == [(0,)]
    assert db_rows(world, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
    recorded = {e for (e,) in db_rows(world, "SELECT event_id FROM referrals")}
    assert first in recorded

    # Logs: JSON lines with IDs, never names.
    lines = stderr.decode().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(records) == len(lines), "every log line is one JSON object"
    assert any(r.get("event") == first and r.get("ref") for r in records)
    assert "Opsname" not in stderr.decode()

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
