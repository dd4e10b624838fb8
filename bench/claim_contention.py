"""Claim contention: N advice workers `!claim` the same referral at the same moment.

    python -m bench.claim_contention --workers 20 --rounds 10

Starts its own local Synapse (127.0.0.1) and referral-bot as an operator runs it (its own
process, config from bot/world.py with the N workers in `[team] advice_team`). Each worker
is a real matrix-nio client with its own device and an encrypted DM with the bot (the bot
takes team commands in a private DM, and one room per worker lets the bot's per-room
workers run them in parallel, which is where contention shows). A practitioner sends a
referral; once it is acknowledged, all N workers send `!claim REF` at once. For each
worker: the time from starting the send to receiving the bot's decrypted answer. Checks,
per round: every worker answered exactly once, exactly one "You have claimed", and the
other N-1 "already claimed by <that winner>".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import begin_run, cpu_seconds, percentile, round1, wind_down, write_results
from bench.seed_db import fake_referral
from bot.chat_user import ChatUser
from bot.devprocess import BotProcess, free_port
from bot.devserver import DevSynapse
from bot.world import World, make_world

REF_RE = re.compile(r"REF-\d{4}-\d{6}")
ANSWER_TIMEOUT_S = 60.0


@dataclass
class ClaimOptions:
    workers: int = 20
    rounds: int = 10
    out: Path | None = None
    keep: bool = False
    database: str | None = None  # a PostgreSQL URL for the bot's tables (default: SQLite)


@dataclass
class Round:
    ref: str
    answered: int
    duplicates: int
    winners: list[str]
    losers_naming_winner: int
    unexpected: list[str]  # answers that are neither (first 80 characters)
    send_spread_ms: float  # first send started -> last send accepted by the homeserver
    latencies_ms: list[float]

    @property
    def ok(self) -> bool:
        return (
            len(self.winners) == 1
            and self.losers_naming_winner == self.answered - 1
            and self.duplicates == 0
            and not self.unexpected
        )


async def _dm_each(users: list[ChatUser], bot_user: str) -> list[str]:
    rooms = [await u.create_room(invite=[bot_user], encrypted=True) for u in users]
    for user, room in zip(users, rooms, strict=True):
        await user.wait_joined(room, bot_user, timeout=60)
    # The first message of a room sets up its Megolm session: not part of the measurement.
    ids = [await u.send(r, "!help") for u, r in zip(users, rooms, strict=True)]
    for user, event_id in zip(users, ids, strict=True):
        await user.wait_reply(event_id, timeout=60)
    return rooms


async def claim_round(workers: list[ChatUser], rooms: list[str], ref: str, bot_user: str) -> Round:
    """All workers send `!claim REF` at once; collect and classify the answers."""
    go = asyncio.Event()

    async def one(worker: ChatUser, room: str) -> tuple[str, float, float]:
        await go.wait()
        t0 = time.monotonic()
        event_id = await worker.send(room, f"!claim {ref}")
        return event_id, t0, time.monotonic()

    tasks = [asyncio.create_task(one(w, r)) for w, r in zip(workers, rooms, strict=True)]
    await asyncio.sleep(0)  # every task is now waiting on `go`
    go.set()
    sent = await asyncio.gather(*tasks)
    spread = max(done for _, _, done in sent) - min(t0 for _, t0, _ in sent)

    answers = await asyncio.gather(
        *(
            w.wait_reply(event_id, timeout=ANSWER_TIMEOUT_S)
            for w, (event_id, _, _) in zip(workers, sent, strict=True)
        )
    )
    await asyncio.sleep(0.5)  # room for a second answer to show up
    duplicates = sum(
        sum(1 for r in w.received if r.sender == bot_user and r.in_reply_to == event_id) - 1
        for w, (event_id, _, _) in zip(workers, sent, strict=True)
    )
    winners = [
        w.user_id
        for w, a in zip(workers, answers, strict=True)
        if a.body.startswith(f"You have claimed {ref}")
    ]
    named = winners[0] if len(winners) == 1 else None
    losers = sum(
        1 for a in answers if named is not None and f"{ref} is already claimed by {named}" in a.body
    )
    unexpected = [
        a.body[:80]
        for a in answers
        if not a.body.startswith(f"You have claimed {ref}")
        and "is already claimed by" not in a.body
    ]
    return Round(
        ref=ref,
        answered=len(answers),
        duplicates=duplicates,
        winners=winners,
        losers_naming_winner=losers,
        unexpected=unexpected,
        send_spread_ms=round(spread * 1000, 1),
        latencies_ms=[
            round((a.at - t0) * 1000, 1) for a, (_, t0, _) in zip(answers, sent, strict=True)
        ],
    )


async def run_claims(opts: ClaimOptions, hs: DevSynapse | None = None) -> dict[str, Any]:
    base, hs, own_hs, results = await begin_run("claim_contention", opts, hs)
    tag = secrets.token_hex(3)
    world: World | None = None
    bot: BotProcess | None = None
    rng = random.Random(6)
    try:
        world = await make_world(
            hs,
            base / "world",
            bot_name=f"referral-bot-{tag}",
            worker_name=f"advice-worker-{tag}",
            log_level="WARNING",
        )
        # The world's own worker stays in the team room (it receives the team summaries)
        # but takes no part: stop its client so the load generator does only the work below.
        await world.worker.stop()
        world.users.remove(world.worker)
        workers = list(
            await asyncio.gather(
                *(world.add_user(f"adviser{i:02d}-{tag}") for i in range(opts.workers))
            )
        )
        practitioner = await world.add_user(f"claims-nurse-{tag}")
        port = free_port()
        world.configure(
            http_listen=f"127.0.0.1:{port}",
            advice_team=[world.worker.user_id, *(w.user_id for w in workers)],
            database=opts.database,
        )
        bot = BotProcess(world.config_path, base / "referral-bot.log", http_port=port)
        await bot.start()
        await bot.wait_healthy()
        rooms = await _dm_each(workers, world.bot_user)
        (referrer_room,) = await _dm_each([practitioner], world.bot_user)

        bot_pid = bot.proc.pid if bot.proc else None
        cpu_before = {"synapse": cpu_seconds(hs.pid), "referral-bot": cpu_seconds(bot_pid)}
        rounds: list[Round] = []
        for _ in range(opts.rounds):
            form = await practitioner.send(
                referrer_room, fake_referral(rng.randrange(10**6), rng, datetime.now(UTC))
            )
            ack = await practitioner.wait_reply(form, timeout=ANSWER_TIMEOUT_S)
            ref = REF_RE.findall(ack.body)[0]
            result = await claim_round(workers, rooms, ref, world.bot_user)
            rounds.append(result)
            print(
                json.dumps(
                    {
                        "ref": ref,
                        "ok": result.ok,
                        "p50_ms": percentile(result.latencies_ms, 50),
                        "max_ms": max(result.latencies_ms),
                        "send_spread_ms": result.send_spread_ms,
                    }
                ),
                flush=True,
            )
        latencies = [v for r in rounds for v in r.latencies_ms]
        results["rounds"] = [{**asdict(r), "ok": r.ok} for r in rounds]
        results["cpu_s"] = {
            "synapse": round(cpu_seconds(hs.pid) - cpu_before["synapse"], 1),
            "referral-bot": round(cpu_seconds(bot_pid) - cpu_before["referral-bot"], 1),
        }
        results["summary"] = {
            "workers": opts.workers,
            "rounds": len(rounds),
            "answers": len(latencies),
            "all_rounds_ok": all(r.ok for r in rounds),
            "rounds_with_exactly_one_winner": sum(1 for r in rounds if len(r.winners) == 1),
            "p50_ms": round1(percentile(latencies, 50)),
            "p95_ms": round1(percentile(latencies, 95)),
            "p99_ms": round1(percentile(latencies, 99)),
            "max_ms": round1(max(latencies) if latencies else None),
            "send_spread_ms_max": max((r.send_spread_ms for r in rounds), default=None),
        }
        results["peak_rss_mb"] = round1(bot.peak_rss_mb())
        results["bot_exit_code"] = await bot.stop()
        bot = None
        results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return results
    finally:
        await wind_down(base, opts.keep, bot=bot, world=world, hs=hs if own_hs else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    args = parser.parse_args()
    opts = ClaimOptions(workers=args.workers, rounds=args.rounds, out=args.out, keep=args.keep)
    results = asyncio.run(run_claims(opts))
    write_results(results, opts.out, show="summary")


if __name__ == "__main__":
    main()
