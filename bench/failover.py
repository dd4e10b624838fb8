"""Failover on PostgreSQL: how long referrers wait when the leading bot process dies.

Two `referral-bot run` processes with one config on one throwaway PostgreSQL (fsync on)
and a throwaway Synapse, each with its own (empty) data_dir, as on two machines.
Practitioners send referrals at a steady rate into encrypted DMs; every `--every` seconds
the leader is killed with SIGKILL, and then started again, when it waits as the standby.
For each kill: seconds until the standby's /healthz says "ok" (takeover), seconds until
the first acknowledgement sent after the kill, and the worst acknowledgement latency of a
referral sent around the kill. At the end every referral must have been acknowledged
exactly once, by one device.

    python -m bench.failover --kills 5 --rate 2 --out run.json
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.common import begin_run, open_dms, wind_down, write_results
from bench.seed_db import fake_referral
from bot.chat_user import ChatUser
from bot.devpostgres import DevPostgres
from bot.devprocess import BotProcess, free_port
from bot.world import World, make_world


async def _send_steadily(
    users: list[ChatUser],
    rooms: list[str],
    rate: float,
    stop: asyncio.Event,
    sent: dict[str, float],
) -> None:
    """Round-robin over the practitioners, `rate` referrals a second in all."""
    n = 0
    rng = random.Random(13)
    next_at = time.monotonic()
    while not stop.is_set():
        user, room = users[n % len(users)], rooms[n % len(users)]
        t0 = time.monotonic()
        event_id = await user.send(room, fake_referral(n, rng, datetime.now(UTC)))
        sent[event_id] = t0
        n += 1
        next_at += 1 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def _acks(users: list[ChatUser], bot: str, sent: dict[str, float]) -> dict[str, list[float]]:
    """For each referral sent, when each acknowledgement of it arrived."""
    out: dict[str, list[float]] = {}
    for user in users:
        for r in user.received:
            if r.sender == bot and r.in_reply_to in sent:
                out.setdefault(str(r.in_reply_to), []).append(r.at)
    return out


async def _first_ack_after(
    users: list[ChatUser], bot: str, sent: dict[str, float], since: float
) -> float:
    """Seconds from `since` to the first acknowledgement that arrived after it."""
    while True:
        after = [t for times in _acks(users, bot, sent).values() for t in times if t > since]
        if after:
            return min(after) - since
        await asyncio.sleep(0.01)


async def run(kills: int, every: float, rate: float, practitioners: int, out: Path | None) -> None:
    pg = DevPostgres.find(durable=True)
    if pg is None:
        raise SystemExit("no PostgreSQL server binaries found (initdb, pg_ctl, postgres)")
    base, hs, _, results = await begin_run("failover")
    await asyncio.to_thread(pg.start)
    world: World | None = None
    bots: list[BotProcess] = []
    try:
        tag = secrets.token_hex(3)
        world = await make_world(hs, base / "world", bot_name=f"ha-bot-{tag}", log_level="INFO")
        await world.worker.stop()
        world.users.remove(world.worker)
        ports = free_port(), free_port()
        world.configure(
            http_listen=f"127.0.0.1:{ports[0]}",
            database=await asyncio.to_thread(pg.create_database, "referral_bot"),
        )
        config_b = world.second_machine("machine-b", ports[1])
        bots = [
            BotProcess(world.config_path, base / "bot-a.log", http_port=ports[0]),
            BotProcess(config_b, base / "bot-b.log", http_port=ports[1]),
        ]
        await bots[0].start()
        await bots[0].wait_healthy()
        await bots[1].start()
        await bots[1].wait_status("standby")
        users = list(
            await asyncio.gather(
                *(world.add_user(f"ha{i:02d}-{tag}") for i in range(practitioners))
            )
        )
        rooms = await open_dms(users, world.bot_user)
        sent: dict[str, float] = {}
        stop = asyncio.Event()
        sender = asyncio.create_task(_send_steadily(users, rooms, rate, stop, sent))
        leader, standby = bots
        per_kill: list[dict[str, float]] = []
        for _ in range(kills):
            await asyncio.sleep(every)
            await leader.kill9()
            killed = time.monotonic()
            takeover = await standby.wait_status("ok")
            first_ack = await _first_ack_after(users, world.bot_user, sent, killed)
            per_kill.append(
                {"takeover_s": takeover, "first_ack_after_kill_s": first_ack, "killed_at": killed}
            )
            await leader.start()
            await leader.wait_status("standby")
            leader, standby = standby, leader
        await asyncio.sleep(every)
        stop.set()
        await sender
        deadline = time.monotonic() + 120
        while len(_acks(users, world.bot_user, sent)) < len(sent):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)
        acks = _acks(users, world.bot_user, sent)
        counts = Counter(len(v) for v in acks.values())
        latency = {e: (min(acks[e]) - t0) for e, t0 in sent.items() if e in acks}
        for k in per_kill:
            near = [
                v for e, v in latency.items() if k["killed_at"] - 2 <= sent[e] <= k["killed_at"] + 2
            ]
            k["worst_ack_near_kill_s"] = max(near) if near else float("nan")
            del k["killed_at"]
        takeovers = [k["takeover_s"] for k in per_kill]
        firsts = [k["first_ack_after_kill_s"] for k in per_kill]
        results.update(
            {
                "referrals": len(sent),
                "acknowledged": len(acks),
                "acknowledged_more_than_once": sum(n for c, n in counts.items() if c > 1),
                "kills": [{k: round(v, 3) for k, v in d.items()} for d in per_kill],
                "takeover_s_median": round(statistics.median(takeovers), 3),
                "takeover_s_max": round(max(takeovers), 3),
                "first_ack_after_kill_s_median": round(statistics.median(firsts), 3),
                "first_ack_after_kill_s_max": round(max(firsts), 3),
                "ack_latency_s_median_overall": round(statistics.median(latency.values()), 3),
                "logins": sum(b.log().count("logged in as a new device") for b in bots),
            }
        )
    finally:
        for bot in bots:
            await bot.stop()
        await wind_down(base, False, bot=None, world=world, hs=hs)
        await asyncio.to_thread(pg.stop)
    write_results(results, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between kills")
    parser.add_argument("--rate", type=float, default=2.0, help="referrals a second, in all")
    parser.add_argument("--practitioners", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    asyncio.run(run(args.kills, args.every, args.rate, args.practitioners, args.out))


if __name__ == "__main__":
    main()
