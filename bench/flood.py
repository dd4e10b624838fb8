"""A flood from one sender against another sender's acknowledgements.

    python -m bench.flood --flood 300 --referrals 10 --interval 0.5 --rounds 2

Starts its own local Synapse (127.0.0.1), referral-bot as an operator runs it (its own
process) and the baseline echo bot (`bench/echo_bot.py`, which answers every message).
Two practitioners, real matrix-nio clients with their own devices, each with an encrypted
DM with each bot: the *flooder* and the *referrer*. For each bot (echo first) two phases:

- quiet: the referrer sends `--referrals` complete referrals, one every `--interval` s;
- flood: the same, while the flooder sends `--flood` messages as fast as its client can
  (alternately plain chatter and unknown commands), starting just before the referrals.

For each referral: the time from starting the send to the referrer's client holding the
decrypted answer. For the flooder: how many answers it got, counted `--drain` seconds
after its last message. Every referral must be answered exactly once. With `--rounds 2`
the four phases run again in reverse order (A B B A), and the summary pools the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.ack_stages import STAGES, stages
from bench.common import (
    EchoProcess,
    begin_run,
    bench_world,
    cpu_seconds,
    open_dms,
    percentile,
    round1,
    wind_down,
)
from bench.seed_db import fake_referral
from bot.chat_user import ChatUser
from bot.devprocess import BotProcess
from bot.devserver import DevSynapse
from bot.world import World

ANSWER_TIMEOUT_S = 60.0


@dataclass
class FloodOptions:
    flood: int = 300
    referrals: int = 10
    interval: float = 0.5
    drain: float = 8.0
    rounds: int = 1
    out: Path | None = None
    keep: bool = False


@dataclass
class FloodPhase:
    target: str
    flood: bool
    referrals_sent: int
    referrals_answered: int
    duplicates: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    latencies_ms: list[float]
    flood_sent: int = 0
    flood_seconds: float = 0.0
    flooder_answers: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    # [event ID, wall-clock time of the send, latency in ms] per referral (bench.ack_stages)
    samples: list[tuple[str, float, float]] = field(default_factory=list)
    # referral-bot only: median ms of each stage (bench.ack_stages.STAGES)
    stages_ms: dict[str, float] = field(default_factory=dict)


async def _referrals(
    user: ChatUser, room: str, n: int, interval: float, rng: random.Random
) -> list[tuple[str, float, float]]:
    """(event ID, monotonic and wall-clock time the send started) per referral."""
    sent: list[tuple[str, float, float]] = []
    for _ in range(n):
        t0, wall = time.monotonic(), time.time()
        body = fake_referral(rng.randrange(10**6), rng, datetime.now(UTC))
        sent.append((await user.send(room, body), t0, wall))
        await asyncio.sleep(max(0.0, t0 + interval - time.monotonic()))
    return sent


async def _flood(user: ChatUser, room: str, n: int) -> tuple[list[str], float]:
    started = time.monotonic()
    ids = []
    for i in range(n):
        body = f"!whatever {i}" if i % 2 else f"hello, is this working? ({i})"
        ids.append(await user.send(room, body))
    return ids, time.monotonic() - started


async def run_phase(
    referrer: ChatUser,
    referrer_room: str,
    flooder: ChatUser,
    flooder_room: str,
    target: str,
    target_user: str,
    opts: FloodOptions,
    flood: bool,
    rng: random.Random,
    pids: dict[str, int | None],
) -> FloodPhase:
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    flood_task = None
    if flood:
        flood_task = asyncio.create_task(_flood(flooder, flooder_room, opts.flood))
        await asyncio.sleep(0.3)  # the flood is under way before the first referral
    sent = await _referrals(referrer, referrer_room, opts.referrals, opts.interval, rng)
    flood_ids: list[str] = []
    flood_s = 0.0
    if flood_task is not None:
        flood_ids, flood_s = await flood_task
    latencies: list[float] = []
    samples: list[tuple[str, float, float]] = []
    answered = 0
    for event_id, t0, wall in sent:
        try:
            answer = await referrer.wait_reply(event_id, timeout=ANSWER_TIMEOUT_S)
        except TimeoutError:
            continue
        answered += 1
        latencies.append(round((answer.at - t0) * 1000, 1))
        samples.append((event_id, wall, latencies[-1]))
    await asyncio.sleep(opts.drain if flood else 1.0)  # late answers and duplicates show now
    ids = {e for e, _, _ in sent}
    replies = [r for r in referrer.received if r.sender == target_user and r.in_reply_to in ids]
    flood_set = set(flood_ids)
    flooder_answers = sum(
        1 for r in flooder.received if r.sender == target_user and r.in_reply_to in flood_set
    )
    return FloodPhase(
        target=target,
        flood=flood,
        referrals_sent=len(sent),
        referrals_answered=answered,
        duplicates=len(replies) - len({r.in_reply_to for r in replies}),
        p50_ms=round1(percentile(latencies, 50)),
        p95_ms=round1(percentile(latencies, 95)),
        p99_ms=round1(percentile(latencies, 99)),
        max_ms=round1(max(latencies) if latencies else None),
        latencies_ms=latencies,
        flood_sent=len(flood_ids),
        flood_seconds=round(flood_s, 2),
        flooder_answers=flooder_answers,
        cpu_s={name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in pids.items()},
        samples=samples,
    )


def _summary(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All rounds together, per bot and quiet / flooded."""
    rows = []
    for target in ("echo", "referral-bot"):
        for flood in (False, True):
            mine = [p for p in phases if p["target"] == target and p["flood"] == flood]
            latencies = [v for p in mine for v in p["latencies_ms"]]
            rows.append(
                {
                    "target": target,
                    "flood": flood,
                    "referrals_sent": sum(p["referrals_sent"] for p in mine),
                    "referrals_answered": sum(p["referrals_answered"] for p in mine),
                    "duplicates": sum(p["duplicates"] for p in mine),
                    "p50_ms": round1(percentile(latencies, 50)),
                    "p95_ms": round1(percentile(latencies, 95)),
                    "p99_ms": round1(percentile(latencies, 99)),
                    "max_ms": round1(max(latencies) if latencies else None),
                    "flood_sent": sum(p["flood_sent"] for p in mine),
                    "flooder_answers": [p["flooder_answers"] for p in mine],
                    "synapse_cpu_s": round(sum(p["cpu_s"].get("synapse", 0) for p in mine), 1),
                }
            )
    return rows


async def run_flood(opts: FloodOptions, hs: DevSynapse | None = None) -> dict[str, Any]:
    base, hs, own_hs, results = await begin_run("flood", opts, hs)
    results["phases"] = []
    tag = secrets.token_hex(3)
    echo = EchoProcess(hs, base, f"echo-bot-{tag}")
    world: World | None = None
    bot: BotProcess | None = None
    rng = random.Random(6)
    try:
        world, port = await bench_world(hs, base, tag)
        await world.worker.stop()  # not part of the measurement (see bench.ack_latency)
        world.users.remove(world.worker)
        bot = BotProcess(world.config_path, base / "referral-bot.log", http_port=port)
        await bot.start()
        await bot.wait_healthy()
        await echo.start()
        referrer = await world.add_user(f"referrer-{tag}")
        flooder = await world.add_user(f"flooder-{tag}")
        rooms: dict[str, tuple[str, str]] = {}
        for name, user_id in (("echo", echo.user_id), ("referral-bot", world.bot_user)):
            (r_room,) = await open_dms([referrer], user_id)
            (f_room,) = await open_dms([flooder], user_id)
            rooms[name] = (r_room, f_room)
            # The first message of a room sets up its session: not part of the measurement.
            for user, room in ((referrer, r_room), (flooder, f_room)):
                await user.wait_reply(await user.send(room, "!help"), timeout=60)
        pids = {
            "synapse": hs.pid,
            "referral-bot": bot.proc.pid if bot.proc else None,
            "echo": echo.proc.pid if echo.proc else None,
        }
        users = {"echo": echo.user_id, "referral-bot": world.bot_user}
        order = [(name, flood) for name in users for flood in (False, True)]
        for n in range(opts.rounds):
            # A B B A ...: load from other users of the machine falls on all phases alike.
            for name, flood in order if n % 2 == 0 else order[::-1]:
                r_room, f_room = rooms[name]
                phase = await run_phase(
                    referrer, r_room, flooder, f_room, name, users[name], opts, flood, rng, pids
                )
                results["phases"].append({"round": n + 1, **asdict(phase)})
                summary = {
                    k: v for k, v in asdict(phase).items() if k not in ("latencies_ms", "samples")
                }
                print(json.dumps(summary), flush=True)
        results["summary"] = _summary(results["phases"])
        print(json.dumps(results["summary"], indent=2), flush=True)
        results["bot_exit_code"] = await bot.stop()
        bot = None
        # Where each acknowledgement's time went, from the bot's own timestamps.
        db_path = world.config.storage.data_dir / "referrals.db"
        for phase in results["phases"]:
            if phase["target"] != "referral-bot":
                continue
            rows = stages({"phases": [{**phase, "rate": 0}]}, db_path)
            phase["stages_ms"] = {
                s: round(statistics.median(r[s] for r in rows), 1) for s in STAGES if rows
            }
            print(phase["target"], "flood" if phase["flood"] else "quiet", phase["stages_ms"])
        for row in results["summary"]:
            if row["target"] == "referral-bot":
                rows = [
                    r
                    for phase in results["phases"]
                    if phase["target"] == row["target"] and phase["flood"] == row["flood"]
                    for r in stages({"phases": [{**phase, "rate": 0}]}, db_path)
                ]
                row["stages_p50_ms"] = {
                    s: round(statistics.median(r[s] for r in rows), 1) for s in STAGES if rows
                }
        results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return results
    finally:
        await wind_down(base, opts.keep, bot=bot, world=world, hs=hs if own_hs else None, echo=echo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flood", type=int, default=300, help="messages the flooder sends")
    parser.add_argument("--referrals", type=int, default=10, help="referrals per phase")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between referrals")
    parser.add_argument("--drain", type=float, default=8.0, help="seconds to wait for answers")
    parser.add_argument("--rounds", type=int, default=1, help="A B B A ... rounds of 4 phases")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    args = parser.parse_args()
    opts = FloodOptions(
        flood=args.flood,
        referrals=args.referrals,
        interval=args.interval,
        drain=args.drain,
        rounds=args.rounds,
        out=args.out,
        keep=args.keep,
    )
    results = asyncio.run(run_flood(opts))
    if opts.out:
        opts.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
