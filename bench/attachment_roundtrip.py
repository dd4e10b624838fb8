"""A large attachment's round trip on loopback: in (practitioner -> bot, stored) and out
(`!attachments` -> the worker's client, decrypted), with real E2EE both ways.

    python -m bench.attachment_roundtrip --mb 20 --rounds 3

Starts its own local Synapse (127.0.0.1) and the bot as an operator runs it (its own
process). Each round a practitioner's client encrypts a file of `--mb` MB (a PDF header and
random bytes), uploads it and sends it in the referral's thread; the bot downloads it,
checks its hash, decrypts it, checks its type, stores it encrypted and says "Added to".
Then an advice-team worker sends `!attachments REF-…`; the bot decrypts it from the
database, encrypts it with a fresh key, uploads and sends it; the worker's client downloads
and decrypts it and it must be byte-identical. Reported per round: the client's own
encrypt+upload, file event sent -> "Added" received (the bot's whole side of "in"),
command sent -> media event received (the bot's side of "out"), the worker's download and
decrypt; and the bot's peak RSS (VmHWM) before the first file and at the end.
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nio.crypto.attachments import encrypt_attachment

from bench.common import begin_run, bench_world, cpu_seconds, round1, wind_down, write_results
from bench.seed_db import fake_referral
from bot.chat_user import Received
from bot.devprocess import BotProcess
from bot.devserver import DevSynapse
from bot.world import World

REF_RE = re.compile(r"REF-\d{4}-\d{6}")
TIMEOUT_S = 300.0


@dataclass(frozen=True)
class RoundTripOptions:
    mb: float = 20.0
    rounds: int = 3
    out: Path | None = None
    keep: bool = False


def big_pdf(size: int) -> bytes:
    """`size` bytes that the bot takes as a PDF: the header, then random bytes (which do
    not compress, so nothing along the way gets it cheaper than a real scan would)."""
    head = b"%PDF-1.7\n%"
    return head + os.urandom(size - len(head))


def _added(name: str) -> Callable[[Received], bool]:
    return lambda r: f"{name} (PDF" in r.body


def _file_sent(ask: str, name: str) -> Callable[[Received], bool]:
    return lambda r: r.in_reply_to == ask and "file" in r.content and r.body == name


async def run_roundtrip(opts: RoundTripOptions, hs: DevSynapse | None = None) -> dict[str, Any]:
    base, hs, own_hs, results = await begin_run("attachment_roundtrip", opts, hs)
    size = int(opts.mb * 1_000_000)
    results["bytes"] = size
    tag = secrets.token_hex(3)
    world: World | None = None
    bot: BotProcess | None = None
    try:
        world, port = await bench_world(hs, base, tag)
        with world.config_path.open("a", encoding="utf-8") as fh:
            limit = max(size + 1024, 20 * 1024 * 1024)
            fh.write(f"\n[attachments]\nmax_bytes = {limit}\nmax_per_referral = 200\n")
        bot = BotProcess(world.config_path, base / "referral-bot.log", http_port=port)
        await bot.start()
        await bot.wait_healthy()
        nurse = await world.add_user(f"attach-nurse-{tag}")
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        # A warm-up referral: the bot's first referral costs more than the rest.
        warm = await nurse.send(dm, fake_referral(0, random.Random(0), datetime.now(UTC)))
        await nurse.wait_reply(warm, timeout=60)
        results["peak_rss_mb_before_files"] = round1(bot.peak_rss_mb())
        bot_pid = bot.proc.pid if bot.proc else None
        cpu_before = {"synapse": cpu_seconds(hs.pid), "referral-bot": cpu_seconds(bot_pid)}
        rounds: list[dict[str, Any]] = []
        for n in range(opts.rounds):
            # A referral per round, so that `!attachments` sends this round's file alone.
            form = await nurse.send(dm, fake_referral(n + 1, random.Random(n), datetime.now(UTC)))
            ack = await nurse.wait_reply(form, timeout=60)
            ref = REF_RE.findall(ack.body)[0]
            data = big_pdf(size)
            name = f"bench-{n}.pdf"
            t0 = time.monotonic()
            ciphertext, keys = await asyncio.to_thread(encrypt_attachment, data)
            url = await nurse.upload(ciphertext)
            t1 = time.monotonic()
            content = {
                "msgtype": "m.file",
                "body": name,
                "info": {"mimetype": "application/pdf", "size": len(data)},
                "file": {"v": "v2", "url": url, **keys},
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": form,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": form},
                },
            }
            del ciphertext
            await nurse.client.room_send(
                dm, "m.room.message", content, ignore_unverified_devices=True
            )
            t2 = time.monotonic()
            await nurse.wait_for(_added(name), timeout=TIMEOUT_S)
            t3 = time.monotonic()
            if n == 0:
                results["peak_rss_mb_after_first_in"] = round1(bot.peak_rss_mb())
            ask = await world.worker.send(world.team_room, f"!attachments {ref}")
            t4 = time.monotonic()
            got = await world.worker.wait_for(_file_sent(ask, name), timeout=TIMEOUT_S)
            t5 = time.monotonic()
            plain = await world.worker.open_file(got[0].content)
            t6 = time.monotonic()
            same = plain == data
            del plain
            row = {
                "round": n + 1,
                "client_encrypt_upload_s": round(t1 - t0, 3),
                "in_event_to_added_s": round(t3 - t2, 3),
                "out_command_to_file_event_s": round(t5 - t4, 3),
                "client_download_decrypt_s": round(t6 - t5, 3),
                "round_trip_s": round(t6 - t0, 3),
                "byte_identical": same,
            }
            rounds.append(row)
            print(json.dumps(row), flush=True)
        results["rounds"] = rounds
        results["cpu_s"] = {
            "synapse": round(cpu_seconds(hs.pid) - cpu_before["synapse"], 1),
            "referral-bot": round(cpu_seconds(bot_pid) - cpu_before["referral-bot"], 1),
        }
        results["peak_rss_mb"] = round1(bot.peak_rss_mb())
        results["summary"] = {
            "mb": opts.mb,
            "rounds": len(rounds),
            "all_byte_identical": all(r["byte_identical"] for r in rounds),
            **{
                f"{k}_max": max(r[k] for r in rounds)
                for k in (
                    "in_event_to_added_s",
                    "out_command_to_file_event_s",
                    "round_trip_s",
                )
            },
            "peak_rss_mb_before_files": results["peak_rss_mb_before_files"],
            "peak_rss_mb_after_first_in": results.get("peak_rss_mb_after_first_in"),
            "peak_rss_mb": results["peak_rss_mb"],
        }
        results["bot_exit_code"] = await bot.stop()
        bot = None
        return results
    finally:
        await wind_down(base, opts.keep, bot=bot, world=world, hs=hs if own_hs else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=20.0, help="file size in MB (10^6 bytes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    args = parser.parse_args()
    opts = RoundTripOptions(mb=args.mb, rounds=args.rounds, out=args.out, keep=args.keep)
    results = asyncio.run(run_roundtrip(opts))
    write_results(results, opts.out, show="summary")


if __name__ == "__main__":
    main()
