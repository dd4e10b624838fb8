"""Guided referral: answer → next question latency, against the echo-bot baseline.

    python -m bench.guided_latency --practitioners 5 --rounds 10

Starts its own local Synapse (127.0.0.1), referral-bot as an operator runs it (its own
process) and the echo bot (`bench/echo_bot.py`, its own process). Each practitioner (a
real matrix-nio client) has an encrypted DM with both. Rounds alternate between the two
bots (echo, guided, guided, echo, …) so that load from other users of the machine falls
on both alike. In a guided round every practitioner, at the same time, makes one whole
guided referral by text (`!refer`, 17 answers, `send`) and each answer is timed from
starting its send to the practitioner's client receiving, decrypted, the bot's next
message (the next question, the poll or the review). In an echo round each practitioner
sends the same number of messages to the echo bot, one after the other, timing each to
its decrypted reply. Every guided referral must end acknowledged. `--think S` makes
every practitioner wait S seconds after each reply before answering (0: at once), for
both bots alike.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

from bench.common import EchoProcess, begin_run, open_dms, percentile, wind_down, write_results
from bot.chat_user import ChatUser
from bot.devprocess import BotProcess, free_port
from bot.world import make_world

POLL_START = "org.matrix.msc3381.poll.start"
POLL_END = "org.matrix.msc3381.poll.end"
# The child of tests/forms.py, one answer a message, in the order the bot asks.
ANSWERS = (
    "no",
    "Alex Benchchild",
    "02/05/2014",
    "2 Example Road, ZZ1 1ZZ",
    "Example Primary",
    "skip",
    "neglect, physical abuse",
    'Bruises on both arms; said: "dad was angry".',
    "Wants to stay with gran.",
    "Informed the designated safeguarding lead.",
    "yes",
    "skip",
    "child protection referral",
    "Sam Referrer",
    "Health visitor",
    "health",
    "01632 960 123",
)


async def _next_from(user: ChatUser, room: str, sender: str, after: float) -> float:
    """When the first message from `sender` in `room` arrived after `after`."""
    found = await user.wait_for(
        lambda r: r.room_id == room and r.sender == sender and r.at >= after and r.type != POLL_END,
        timeout=60,
    )
    return found[0].at


async def guided_round(
    user: ChatUser, room: str, bot: str, first: bool, think: float = 0.0
) -> list[float]:
    """One whole guided referral; the latency of each answer in ms. After the first, the
    referrer's kept details are offered and taken with one answer ("yes")."""
    started = time.monotonic()
    await user.send(room, "!refer")
    # The first question is a poll after a line of introduction: wait for the poll, or
    # it would arrive during the first answer and be taken for that answer's reply.
    await user.wait_for(
        lambda r: r.room_id == room and r.at >= started and r.type == POLL_START, timeout=60
    )
    latencies = []
    for answer in ANSWERS if first else (*ANSWERS[:13], "yes"):
        await asyncio.sleep(think)
        t0 = time.monotonic()
        await user.send(room, answer)
        latencies.append((await _next_from(user, room, bot, t0) - t0) * 1000)
    send = await user.send(room, "send")
    ack = await user.wait_reply(send, timeout=60)
    assert "recorded as a CHILD PROTECTION REFERRAL" in ack.body, ack.body[:200]
    await asyncio.sleep(0.3)  # let the poll ends and the saved-details note arrive
    return latencies


async def echo_round(user: ChatUser, room: str, think: float = 0.0) -> list[float]:
    latencies = []
    for answer in ANSWERS:
        await asyncio.sleep(think)
        t0 = time.monotonic()
        event_id = await user.send(room, answer)
        reply = await user.wait_reply(event_id, timeout=60)
        latencies.append((reply.at - t0) * 1000)
    return latencies


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) or 0, 1),
        "p95_ms": round(percentile(values, 95) or 0, 1),
        "p99_ms": round(percentile(values, 99) or 0, 1),
        "max_ms": round(max(values), 1) if values else None,
    }


async def run(
    practitioners: int, rounds: int, out: Path | None, think: float = 0.0
) -> dict[str, Any]:
    base, hs, _, results = await begin_run("guided_latency")
    tag = secrets.token_hex(3)
    echo = EchoProcess(hs, base, f"echo-bot-{tag}")
    bot: BotProcess | None = None
    world = None
    try:
        world = await make_world(
            hs, base / "world", bot_name=f"referral-bot-{tag}", log_level="WARNING"
        )
        port = free_port()
        world.configure(http_listen=f"127.0.0.1:{port}")
        await world.worker.stop()
        world.users.remove(world.worker)
        bot = BotProcess(world.config_path, base / "referral-bot.log", http_port=port)
        await bot.start()
        await bot.wait_healthy()
        await echo.start()
        users = list(
            await asyncio.gather(
                *(world.add_user(f"guided{i:02d}-{tag}") for i in range(practitioners))
            )
        )
        bot_rooms = await open_dms(users, world.bot_user)
        echo_rooms = await open_dms(users, echo.user_id)
        # Warm-up: the first message of each room sets up its session; not measured.
        for user, room in zip(users, echo_rooms, strict=True):
            await user.wait_reply(await user.send(room, "warm-up"), timeout=60)
        for user, room in zip(users, bot_rooms, strict=True):
            await user.wait_reply(await user.send(room, "!help"), timeout=60)

        guided: list[float] = []
        # The slowest answers, by their place in the referral (which question follows).
        slowest: list[tuple[float, int, int]] = []
        baseline: list[float] = []
        made = 0
        for k in range(rounds):
            order = ("echo", "guided") if k % 2 == 0 else ("guided", "echo")
            for which in order:
                if which == "echo":
                    parts = await asyncio.gather(
                        *(echo_round(u, r, think) for u, r in zip(users, echo_rooms, strict=True))
                    )
                    baseline += [v for p in parts for v in p]
                else:
                    parts = await asyncio.gather(
                        *(
                            guided_round(u, r, world.bot_user, first=made == 0, think=think)
                            for u, r in zip(users, bot_rooms, strict=True)
                        )
                    )
                    guided += [v for p in parts for v in p]
                    slowest += [(v, made, i) for p in parts for i, v in enumerate(p)]
                    slowest = sorted(slowest, reverse=True)[:5]
                    made += 1
            print(f"round {k + 1}/{rounds} done", flush=True)
        results["echo"] = _summary(baseline)
        results["guided"] = _summary(guided)
        results["ratio_p50"] = round(results["guided"]["p50_ms"] / results["echo"]["p50_ms"], 2)
        results["ratio_p99"] = round(results["guided"]["p99_ms"] / results["echo"]["p99_ms"], 2)
        results["guided_referrals"] = practitioners * made
        results["guided_slowest"] = [
            {"ms": round(v, 1), "round": r, "answer": i} for v, r, i in slowest
        ]
    finally:
        await wind_down(base, False, bot=bot, world=world, hs=hs, echo=echo)
    write_results(results, out)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--practitioners", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10, help="alternating echo/guided rounds")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="seconds each practitioner waits after a reply before answering (both bots)",
    )
    args = parser.parse_args()
    asyncio.run(run(args.practitioners, args.rounds, args.out, args.think))


if __name__ == "__main__":
    main()
