"""Replay the bot's database work for one referral, many times, and time every transaction.

    python -m bench.store_latency --db path/to/referrals.db --key-file path/to/key --count 2000

No homeserver: this isolates the SQLite side of an acknowledgement. Per referral it runs
the same transactions, through the same store calls, as the running bot:

1. sync:    the inbox row and the sync token;
2. handle:  next pending event, `handle_message` (parse, record, queue two messages),
            mark handled;
3. unsent:  read the DM's outbox;
4. ack:     mark the acknowledgement sent (with its record entry);
5. summary: read the team room's outbox, check the ack has gone, mark the summary sent.

Run it on an empty database and on a copy of a seeded one (`bench.seed_db`) to see what
the database's size costs. Every transaction waits for `synchronous=FULL`, as in the bot.

    python -m bench.store_latency --postgres --key-file path/to/key --count 2000

does the same on a throwaway local PostgreSQL (fsync and synchronous_commit on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.seed_db import fake_referral
from bot.devpostgres import DevPostgres
from handlers.commands import handle_message
from handlers.settings import Settings
from schemas.messages import InboxItem
from storage.engine import Location, Postgres, Store
from storage.keyring import Keyring
from storage.tx import Tx

TEAM_ROOM = "!team:localhost"
STEPS = ("sync", "handle", "unsent", "ack", "summary")


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def _one(
    store: Store, n: int, rng: random.Random, settings: Settings, times: dict[str, list[float]]
) -> None:
    """The transactions of one referral, as the bot runs them."""

    async def timed(step: str, body: Callable[[Tx], Awaitable[None]]) -> None:
        started = time.perf_counter()
        async with store.transaction() as tx:
            await body(tx)
        times[step].append((time.perf_counter() - started) * 1000)

    room = f"!bench-dm-{n % 20:02d}:localhost"
    event_id = f"$bench{n:07d}-{secrets.token_hex(6)}"  # new on every run
    now = datetime.now(UTC)
    body = fake_referral(900_000 + n, rng, now)
    item = InboxItem(
        event_id,
        room,
        f"@practitioner{n % 20:02d}:localhost",
        int(now.timestamp() * 1000),
        True,
        "pending",
        {"body": body},
    )
    acknowledged: list[int] = []

    async def sync(tx: Tx) -> None:
        await tx.add_inbox([item])
        await tx.set_kv("sync_token", f"s{n}")

    async def handle(tx: Tx) -> None:
        msg = await tx.next_pending(room)
        assert msg is not None
        await handle_message(tx, msg, settings)
        await tx.mark_handled(msg.seq)

    async def unsent(tx: Tx) -> None:
        await tx.unsent(room, limit=20)

    async def ack(tx: Tx) -> None:
        for row in await tx.unsent(room, limit=20):
            await tx.mark_sent(row, f"$ack-{row.txn_id}")
            if row.referral_id is not None:
                acknowledged.append(row.referral_id)
                await tx.referral_received_at(row.referral_id)

    async def summary(tx: Tx) -> None:
        for row in await tx.unsent(TEAM_ROOM, limit=20):
            if row.referral_id is not None:
                await tx.ack_unsent(row.referral_id)
            await tx.mark_sent(row, f"$sum-{row.txn_id}")

    for step, work in (
        ("sync", sync),
        ("handle", handle),
        ("unsent", unsent),
        ("ack", ack),
        ("summary", summary),
    ):
        await timed(step, work)
    if not acknowledged:
        raise RuntimeError(f"referral {n} was not acknowledged: the form was refused")


async def replay(
    store: Store, count: int, *, rate: float, seed: int = 11
) -> dict[str, list[float]]:
    rng = random.Random(seed)
    settings = Settings(bot_user_id="@referral-bot:localhost", advice_team_room=TEAM_ROOM)
    times: dict[str, list[float]] = {step: [] for step in (*STEPS, "total")}
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    for n in range(count):
        if rate > 0:
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        started = time.perf_counter()
        await _one(store, n, rng, settings, times)
        times["total"].append((time.perf_counter() - started) * 1000)
    return times


def report(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for step, values in times.items():
        out[step] = {
            "p50": round(statistics.median(values), 2),
            "p95": round(_pct(values, 95), 2),
            "p99": round(_pct(values, 99), 2),
            "max": round(max(values), 2),
        }
    return out


async def run(db: Location, key: str, count: int, rate: float) -> dict[str, dict[str, float]]:
    store = await Store.open(db, Keyring(key))
    try:
        times = await replay(store, count, rate=rate)
    finally:
        await store.close()
    return report(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", type=Path, help="a SQLite database file")
    where.add_argument(
        "--postgres", action="store_true", help="a throwaway local PostgreSQL instead"
    )
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0.0, help="referrals per second; 0: flat out")
    args = parser.parse_args()
    key = args.key_file.read_text(encoding="utf-8").strip()
    pg = DevPostgres.find(durable=True) if args.postgres else None
    if args.postgres and pg is None:
        raise SystemExit("--postgres: no PostgreSQL server binaries found")
    try:
        db: Location = args.db
        if pg is not None:
            pg.start()
            db = Postgres(pg.create_database("referral_bot"))
        result = asyncio.run(run(db, key, args.count, args.rate))
    finally:
        if pg is not None:
            pg.stop()
    print(f"{'step':8} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8}  (ms)")
    for step, figures in result.items():
        print(f"{step:8} " + " ".join(f"{figures[k]:8.2f}" for k in ("p50", "p95", "p99", "max")))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
