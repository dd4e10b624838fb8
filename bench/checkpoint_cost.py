"""What a checkpoint costs with many referrals (issue 10, part 5).

    python -m bench.checkpoint_cost --referrals 100000 --entries-each 6 --changed 20

Builds a database with the bot's schema and N referrals of K running-record entries each
(rows written straight with SQL: the checkpoint reads only references, entry counts and
hashes, so forms and details are placeholders), then times, through the store's read-only
connection as the bot does:

- the first checkpoint of a new file (every referral listed), and its size;
- the check at the first checkpoint of a run (does the database reach as far as the file);
- an ordinary checkpoint after `--changed` referrals got a new entry each;
- `verify`'s comparison of the database with the whole file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sqlite3
import tempfile
import time
from pathlib import Path

from bot.checkpoint_verify import check_database
from bot.checkpoints import Anchor
from storage.engine import Store
from storage.keyring import Keyring

KEY = "bench-database-key-" + "k" * 24


def fill(db_path: Path, referrals: int, each: int) -> None:
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA synchronous = OFF")
    rows = []
    entries = []
    entry_id = 0
    for n in range(1, referrals + 1):
        rows.append(
            (
                n,
                f"REF-2026-{n:06d}",
                2026,
                n,
                f"$ev{n}",
                "!dm:example.org",
                "@nurse:example.org",
                "2026-01-01T10:00:00.000+00:00",
                "contact",
                "@nurse:example.org",
                "contact",
                0,
                "decided",
                "2026-01-02T10:00:00.000+00:00",
                "enc1:placeholder",
            )
        )
        prev = ""
        for _ in range(each):
            entry_id += 1
            h = secrets.token_hex(32)
            entries.append(
                (entry_id, n, "2026-01-01T10:00:00.000+00:00", "bot", "x", "enc1:x", prev, h)
            )
            prev = h
    db.executemany(
        "INSERT INTO referrals (id, ref, year, year_seq, event_id, room_id, sender, received_at,"
        " declared_type, declared_by, current_type, immediate_danger, state, decision_due, form)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.executemany(
        "INSERT INTO record_entries (id, referral_id, at, actor, kind, detail, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        entries,
    )
    db.commit()
    db.close()


def add_entries(db_path: Path, referral_ids: list[int]) -> None:
    db = sqlite3.connect(db_path)
    for rid in referral_ids:
        db.execute(
            "INSERT INTO record_entries (referral_id, at, actor, kind, detail, prev_hash, hash)"
            " VALUES (?, '2026-01-03T10:00:00.000+00:00', 'bot', 'x', 'enc1:x', '', ?)",
            (rid, secrets.token_hex(32)),
        )
    db.commit()
    db.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--referrals", type=int, default=100_000)
    p.add_argument("--entries-each", type=int, default=6)
    p.add_argument("--changed", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        db_path = base / "data" / "referrals.db"
        keyring = Keyring(KEY)
        store = await Store.open(db_path, keyring)
        await store.close()
        t = time.perf_counter()
        fill(db_path, args.referrals, args.entries_each)
        print(f"filled {args.referrals} referrals in {time.perf_counter() - t:.1f} s")
        anchor_file = base / "anchor" / "checkpoints.jsonl"

        store = await Store.open(db_path, keyring)
        try:
            anchor = Anchor(store, anchor_file)
            t = time.perf_counter()
            line = await anchor.checkpoint()
            assert line is not None
            print(
                f"first checkpoint (every referral listed): {time.perf_counter() - t:.2f} s, "
                f"{os.path.getsize(anchor_file) / 1e6:.1f} MB"
            )
        finally:
            await store.close()

        step = max(1, args.referrals // args.changed)
        add_entries(db_path, list(range(1, args.referrals + 1, step))[: args.changed])
        store = await Store.open(db_path, keyring)
        try:
            anchor = Anchor(store, anchor_file)  # a new run: checks the database first
            t = time.perf_counter()
            line = await anchor.checkpoint()
            assert line is not None and line.kind == "update", line and line.note
            print(
                f"first checkpoint of a run ({args.changed} changed, with the check): "
                f"{(time.perf_counter() - t) * 1000:.0f} ms"
            )
            timings = []
            for _ in range(5):
                add_entries(db_path, list(range(7, args.referrals + 1, step))[: args.changed])
                t = time.perf_counter()
                line = await anchor.checkpoint()
                timings.append((time.perf_counter() - t) * 1000)
                assert line is not None and len(line.changed) == args.changed
            timings.sort()
            print(
                f"ordinary checkpoint ({args.changed} changed): median "
                f"{timings[len(timings) // 2]:.1f} ms, max {timings[-1]:.1f} ms"
            )
            t = time.perf_counter()
            async with store.snapshot() as tx:
                report = await check_database(tx, keyring, anchor_file)
            print(
                f"verify against the file: {time.perf_counter() - t:.2f} s, "
                f"problems: {len(report.problems)}"
            )
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
