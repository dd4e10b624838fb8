"""Acknowledgement latency and throughput: referral-bot against an echo-bot baseline.

    python -m bench.ack_latency --practitioners 20 --rates 1,10 --duration 60 --seed 100000

Starts its own local Synapse (127.0.0.1), the referral bot as an operator runs it
(`referral-bot run -c config.toml`, its own process) and the baseline echo bot
(`bench/echo_bot.py`, its own process). N practitioners (real matrix-nio clients, each with
its own device) each open an encrypted DM with both bots. Then, for each rate, first the
echo bot and then referral-bot get complete referrals at that rate (spread round-robin
over the practitioners), and each sender measures the time from starting the send to
receiving the decrypted reply. Every message must be answered exactly once.

With `--seed N` the bot's database is first filled with N fake referrals (bench/seed_db)
and the bot restarted, giving the start-up figure (launch to the first referral answered)
and, at the end, the bot's peak RSS with that database. `--find-max` steps the rate up
(`--search-duration` seconds per step) until each bot no longer keeps up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import (
    EchoProcess,
    begin_run,
    cpu_seconds,
    open_dms,
    percentile,
    round1,
    wind_down,
)
from bench.seed_db import fake_referral, seed
from bot.chat_user import ChatUser
from bot.devpostgres import DevPostgres
from bot.devprocess import BotProcess, free_port
from bot.devserver import DevSynapse
from bot.world import World, make_world
from storage.keyring import Keyring

# A rate is "sustained" when every message is answered exactly once within DRAIN_S of the
# last send and the p99 latency stays under this: past it, a queue is building up.
SUSTAINED_P99_S = 2.0
DRAIN_S = 15.0


# -- processes ---------------------------------------------------------------------------


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    user_id: str
    rooms: list[str]  # one DM per practitioner, same order as the practitioners


@dataclass
class PhaseResult:
    target: str
    rate: float
    duration: float
    sent: int
    achieved_rate: float
    answered: int
    duplicates: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    sustained: bool
    # CPU seconds used during the phase (sending and draining), per process.
    cpu_s: dict[str, float] = field(default_factory=dict)
    # With --samples: [event ID, wall-clock time of the send, latency in ms] per message,
    # to join the slow ones with the bot's own timestamps (inbox, outbox) afterwards.
    samples: list[tuple[str, float, float]] = field(default_factory=list)


@dataclass
class _Raw:
    """What one stretch of sending to one bot produced."""

    planned: int
    sent: int
    failures: int
    answered: int
    duplicates: int
    send_span: float
    latencies_ms: list[float]
    cpu_s: dict[str, float]
    samples: list[tuple[str, float, float]]


async def _drive(
    users: list[ChatUser],
    target: Target,
    rate: float,
    duration: float,
    rng: random.Random,
    pids: dict[str, int | None],
) -> _Raw:
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    total = max(1, round(rate * duration))
    sent: list[tuple[str, float]] = []
    wall: dict[str, float] = {}
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        user = users[i % len(users)]
        body = fake_referral(rng.randrange(10**6), rng, datetime.now(UTC))
        t0 = time.monotonic()
        wall_t0 = time.time()
        try:
            event_id = await user.send(target.rooms[i % len(users)], body)
        except RuntimeError:
            failures += 1
            return
        sent.append((event_id, t0))
        wall[event_id] = wall_t0

    start = time.monotonic()
    tasks = []
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    # The planned span is total/rate: the last send is due at (total - 1)/rate.
    send_span = time.monotonic() - start + 1 / rate

    ids = {e for e, _ in sent}

    def replies() -> Counter[str]:
        return Counter(
            r.in_reply_to
            for user in users
            for r in user.received
            if r.sender == target.user_id and r.in_reply_to in ids
        )

    deadline = time.monotonic() + DRAIN_S
    # Polling: replies land in 20 clients' lists; nothing to wait on in one place.
    while time.monotonic() < deadline and len(replies()) < len(sent):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # room for a duplicate to show up
    counts = replies()
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}

    first_reply: dict[str, float] = {}
    for user in users:
        for r in user.received:
            if r.sender == target.user_id and r.in_reply_to in ids:
                first_reply.setdefault(r.in_reply_to, r.at)
    return _Raw(
        planned=total,
        sent=len(sent),
        failures=failures,
        answered=sum(1 for e, _ in sent if counts[e] >= 1),
        duplicates=sum(c - 1 for c in counts.values() if c > 1),
        send_span=send_span,
        latencies_ms=[(first_reply[e] - t0) * 1000 for e, t0 in sent if e in first_reply],
        cpu_s=cpu,
        samples=[
            (e, wall[e], round((first_reply[e] - t0) * 1000, 2))
            for e, t0 in sent
            if e in first_reply
        ],
    )


def _result(target: Target, rate: float, duration: float, raws: list[_Raw]) -> PhaseResult:
    latencies = [v for raw in raws for v in raw.latencies_ms]
    planned = sum(r.planned for r in raws)
    sent = sum(r.sent for r in raws)
    answered = sum(r.answered for r in raws)
    duplicates = sum(r.duplicates for r in raws)
    span = sum(r.send_span for r in raws)
    achieved = planned / span if span > 0 else float(planned)
    p99 = percentile(latencies, 99)
    cpu: dict[str, float] = {}
    for raw in raws:
        for name, seconds in raw.cpu_s.items():
            cpu[name] = round(cpu.get(name, 0.0) + seconds, 1)
    return PhaseResult(
        target=target.name,
        rate=rate,
        duration=duration,
        sent=sent,
        achieved_rate=round(achieved, 2),
        answered=answered,
        duplicates=duplicates,
        p50_ms=round1(percentile(latencies, 50)),
        p95_ms=round1(percentile(latencies, 95)),
        p99_ms=round1(p99),
        max_ms=round1(max(latencies) if latencies else None),
        sustained=(
            sum(r.failures for r in raws) == 0
            and answered == planned
            and duplicates == 0
            and p99 is not None
            and p99 <= SUSTAINED_P99_S * 1000
            and achieved >= 0.95 * rate
        ),
        cpu_s=cpu,
        samples=[s for raw in raws for s in raw.samples],
    )


async def run_phase(
    users: list[ChatUser],
    target: Target,
    rate: float,
    duration: float,
    rng: random.Random,
    pids: dict[str, int | None] | None = None,
) -> PhaseResult:
    """`duration` seconds of continuous sending to one bot."""
    pids = {**(pids or {}), "load-generator": os.getpid()}
    return _result(target, rate, duration, [await _drive(users, target, rate, duration, rng, pids)])


async def run_interleaved(
    users: list[ChatUser],
    targets: tuple[Target, Target],
    rate: float,
    duration: float,
    slice_s: float,
    rng: random.Random,
    pids: dict[str, int | None] | None = None,
) -> list[PhaseResult]:
    """`duration` seconds per bot, in alternating slices (A B B A A B ...), so that load
    from other users of the machine falls on both bots alike."""
    pids = {**(pids or {}), "load-generator": os.getpid()}
    raws: dict[str, list[_Raw]] = {t.name: [] for t in targets}
    slices = max(1, round(duration / slice_s))
    for k in range(slices):
        for target in targets if k % 2 == 0 else targets[::-1]:
            raws[target.name].append(
                await _drive(users, target, rate, duration / slices, rng, pids)
            )
    return [_result(t, rate, duration, raws[t.name]) for t in targets]


# -- the run -------------------------------------------------------------------------------


@dataclass
class Options:
    practitioners: int = 20
    rates: list[float] = field(default_factory=lambda: [1.0, 10.0])
    duration: float = 60.0
    slice_s: float = 0.0  # 0: each bot's duration in one stretch
    seed: int = 0
    find_max: bool = False
    search_start: float = 10.0
    search_step: float = 2.0
    search_duration: float = 20.0
    out: Path | None = None
    keep: bool = False
    samples: bool = False
    postgres: bool = False  # the bot's tables on a throwaway PostgreSQL (fsync on)


async def _warm_up(users: list[ChatUser], target: Target) -> None:
    """One message per DM first: the first message of a room sets up its session."""
    ids = [await u.send(r, "!help") for u, r in zip(users, target.rooms, strict=True)]
    for user, event_id in zip(users, ids, strict=True):
        await user.wait_reply(event_id, timeout=60)


async def run_benchmark(opts: Options, hs: DevSynapse | None = None) -> dict[str, Any]:
    base, hs, own_hs, results = await begin_run("ack_latency", opts, hs)
    results["phases"] = []
    bot: BotProcess | None = None
    pg: DevPostgres | None = None
    tag = secrets.token_hex(3)
    echo = EchoProcess(hs, base, f"echo-bot-{tag}")
    world: World | None = None
    rng = random.Random(6)
    try:
        world = await make_world(
            hs, base / "world", bot_name=f"referral-bot-{tag}", log_level="WARNING"
        )
        port = free_port()
        world.configure(http_listen=f"127.0.0.1:{port}")
        results["engine"] = "sqlite"
        if opts.postgres:
            # Durable, as a real server would run (fsync on, synchronous_commit on), so the
            # figures compare with SQLite's synchronous=FULL.
            pg = DevPostgres.find(durable=True)
            if pg is None:
                raise SystemExit("--postgres: no PostgreSQL server binaries found")
            await asyncio.to_thread(pg.start)
            dsn = await asyncio.to_thread(pg.create_database, "referral_bot")
            world.configure(database=dsn)
            results["engine"] = "postgresql"
        # The advice-team worker's client is not part of the measurement: stop its syncing
        # so the load generator only does the practitioners' work.
        await world.worker.stop()
        world.users.remove(world.worker)
        bot = BotProcess(world.config_path, base / "referral-bot.log", http_port=port)
        await bot.start()
        results["first_start_healthy_s"] = round(await bot.wait_healthy(), 2)
        await echo.start()

        users = list(
            await asyncio.gather(
                *(world.add_user(f"practitioner{i:02d}-{tag}") for i in range(opts.practitioners))
            )
        )
        referral = Target("referral-bot", world.bot_user, await open_dms(users, world.bot_user))
        baseline = Target("echo", echo.user_id, await open_dms(users, echo.user_id))
        await _warm_up(users, referral)
        await _warm_up(users, baseline)

        if opts.seed:
            if opts.postgres:
                raise SystemExit("--seed fills a SQLite database: not with --postgres")
            code = await bot.stop()
            db_path = world.config.storage.data_dir / "referrals.db"
            keyring = Keyring(world.config.storage.database_key.read())
            took = await seed(db_path, opts.seed, keyring)
            # The seeder leaves hundreds of MB of dirty pages for the kernel to write back;
            # without this the restart below would be timed against that write-back.
            flushed = time.monotonic()
            os.sync()
            results["seed"] = {
                "referrals": opts.seed,
                "seconds": round(took, 1),
                "sync_s": round(time.monotonic() - flushed, 2),
                "db_mb": round(db_path.stat().st_size / 1e6, 1),
                "exit_code_before_seed": code,
            }
            # A referral waits while the bot is down; time launch -> its acknowledgement.
            waiting = await users[0].send(
                referral.rooms[0], fake_referral(0, rng, datetime.now(UTC))
            )
            await bot.start()
            healthy = await bot.wait_healthy()
            ack = await users[0].wait_reply(waiting, timeout=60)
            results["startup"] = {
                "launch_to_healthy_s": round(healthy, 2),
                "launch_to_first_ack_received_s": round(ack.at - bot.launched_at, 2),
            }

        def pids() -> dict[str, int | None]:
            return {
                "synapse": hs.pid if hs is not None else None,
                "referral-bot": bot.proc.pid if bot and bot.proc else None,
                "echo": echo.proc.pid if echo.proc else None,
            }

        for rate in opts.rates:
            if opts.slice_s:
                phases = await run_interleaved(
                    users, (baseline, referral), rate, opts.duration, opts.slice_s, rng, pids()
                )
            else:
                phases = [
                    await run_phase(users, target, rate, opts.duration, rng, pids())
                    for target in (baseline, referral)
                ]
            for phase in phases:
                _record(results, phase, opts)

        if opts.find_max:
            # Step the rate up; at each step both bots get `search_duration` seconds of
            # continuous sending, until neither keeps up.
            best: dict[str, float | None] = {baseline.name: None, referral.name: None}
            still: set[str] = set(best)
            rate = opts.search_start
            while still:
                for target in (baseline, referral):
                    if target.name not in still:
                        continue
                    phase = await run_phase(users, target, rate, opts.search_duration, rng, pids())
                    _record(results, phase, opts, search=True)
                    if phase.sustained:
                        best[target.name] = rate
                    else:
                        still.discard(target.name)
                rate += opts.search_step
            results["max_search"] = best

        results["bot_metrics_tail"] = [
            line
            for line in (await bot.metrics()).splitlines()
            if line.startswith(
                (
                    "referralbot_ack_latency_seconds_count",
                    "referralbot_ack_latency_seconds_sum",
                    "referralbot_outbox_depth",
                    "referralbot_referrals{",
                )
            )
        ]
        results["peak_rss_mb"] = {
            "referral-bot": round1(bot.peak_rss_mb()),
            "echo": round1(echo.peak_rss_mb()),
        }
        results["bot_exit_code"] = await bot.stop()
        bot = None
        results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["summary"] = summarise(results["phases"])
        return results
    finally:
        if pg is not None:  # after the bot that uses it, before its files go
            if bot is not None:
                await bot.stop()
            await asyncio.to_thread(pg.stop)
        await wind_down(base, opts.keep, bot=bot, world=world, hs=hs if own_hs else None, echo=echo)


def _record(results: dict[str, Any], phase: PhaseResult, opts: Options, **extra: Any) -> None:
    row = {**asdict(phase), **extra}
    samples = row.pop("samples")
    print(json.dumps(row), flush=True)
    if opts.samples:
        row["samples"] = samples
    results["phases"].append(row)


def summarise(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rate (non-search phases): referral-bot over echo ratios."""
    rows = []
    by_rate: dict[float, dict[str, dict[str, Any]]] = {}
    for p in phases:
        if not p.get("search"):
            by_rate.setdefault(p["rate"], {})[p["target"]] = p
    for rate, pair in sorted(by_rate.items()):
        bot, echo = pair.get("referral-bot"), pair.get("echo")
        if not bot or not echo:
            continue
        row: dict[str, Any] = {"rate": rate}
        for q in ("p50_ms", "p95_ms", "p99_ms"):
            if bot[q] and echo[q]:
                row[f"{q[:-3]}_ratio"] = round(bot[q] / echo[q], 2)
        row["both_sustained"] = bot["sustained"] and echo["sustained"]
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--practitioners", type=int, default=20)
    parser.add_argument("--rates", default="1,10", help="referrals per second, comma-separated")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per rate and bot")
    parser.add_argument(
        "--slice",
        type=float,
        default=0.0,
        help="alternate the two bots in slices of this many seconds (0: one stretch each)",
    )
    parser.add_argument("--seed", type=int, default=0, help="fake referrals in the database")
    parser.add_argument("--find-max", action="store_true")
    parser.add_argument("--search-start", type=float, default=10.0)
    parser.add_argument("--search-step", type=float, default=2.0)
    parser.add_argument("--search-duration", type=float, default=20.0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    parser.add_argument(
        "--samples", action="store_true", help="per-message event ID, send time and latency"
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="the bot's tables on a throwaway local PostgreSQL (initdb/pg_ctl on PATH)",
    )
    args = parser.parse_args()
    opts = Options(
        practitioners=args.practitioners,
        rates=[float(r) for r in args.rates.split(",") if r.strip()],
        duration=args.duration,
        slice_s=args.slice,
        seed=args.seed,
        find_max=args.find_max,
        search_start=args.search_start,
        search_step=args.search_step,
        search_duration=args.search_duration,
        out=args.out,
        keep=args.keep,
        samples=args.samples,
        postgres=args.postgres,
    )
    results = asyncio.run(run_benchmark(opts))
    text = json.dumps(results, indent=2)
    if opts.out:
        opts.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
