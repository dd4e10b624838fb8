"""Time and peak memory to build a report (figures and chart) on a seeded database.

    python -m bench.seed_db --db /tmp/s/referrals.db --key-file /tmp/s/key --count 100000
    python -m bench.report_build --db /tmp/s/referrals.db --key-file /tmp/s/key --runs 5

Each run is a fresh process, like a bot that has never drawn a chart: it loads what the
running bot has loaded anyway (matrix-nio, the other use cases) and opens the store, then
imports the report code (Pillow and the chart; the bot does this at start), then builds the
report for the last complete month (`!report month`): the SQL figures and the PNG. It
reports the time of each step and the peak resident memory above what the process had
before the import (the kernel's high-water mark, reset just before, so the import and
the build both count). Targets (issue 14): under 2 s and under 50 MB extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from storage.engine import Store
from storage.keyring import Keyring

SEED_AGENCIES = ("health", "school", "police", "GP", "early years", "housing", "probation")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


async def _one_run(db: Path, key: str, period_kind: str) -> dict[str, float]:
    # What a running bot has loaded anyway (matrix-nio, the other use cases), so that
    # the import measured below is the report's own: Pillow and the chart code.
    import nio  # noqa: F401

    from handlers import intake, meetings, views, workflow  # noqa: F401

    store = await Store.open(db, Keyring(key))
    try:
        # What the bot already holds before anyone asks for a report.
        async with store.snapshot() as tx:
            await tx.referral_count()
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark
        before_kb = _status_kb("VmRSS")
        t0 = time.perf_counter()
        from handlers import reports
        from handlers.settings import Settings
        from schemas.config import AgencyConfig

        t1 = time.perf_counter()
        imported_kb = _status_kb("VmRSS")
        settings = Settings(
            bot_user_id="@referral-bot:localhost",
            advice_team_room="!team:localhost",
            agencies={a: AgencyConfig(name=a.title()) for a in SEED_AGENCIES[:4]},
        )
        async with store.transaction() as tx:
            period = reports.last_complete(period_kind, tx.now.astimezone(reports.LONDON).date())
            t2 = time.perf_counter()
            report = await reports.build_report(tx, settings, period)
            t3 = time.perf_counter()
            body, html = reports.report_doc(report).render()
        t4 = time.perf_counter()
        # The same figures again, warm (as a second !report would be).
        async with store.transaction() as tx:
            t5 = time.perf_counter()
            await reports.build_report(tx, settings, period)
            t6 = time.perf_counter()
        peak_kb = _status_kb("VmHWM")
    finally:
        await store.close()
    return {
        "period_days": (period.end - period.start).days + 1,
        "received": report.figures.received,
        "decided": report.figures.decided,
        "png_bytes": len(report.png),
        "import_s": t1 - t0,
        "build_s": t3 - t2,
        "total_s": t4 - t0,
        "warm_build_s": t6 - t5,
        "rss_before_mb": before_kb / 1024,
        "import_mb": (imported_kb - before_kb) / 1024,
        "peak_extra_mb": (peak_kb - before_kb) / 1024,
        "text_chars": len(body) + len(html),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--period", choices=("week", "month", "quarter"), default="month")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the runs as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    key = args.key_file.read_text(encoding="utf-8").strip()
    if args.child:
        print(json.dumps(asyncio.run(_one_run(args.db, key, args.period))))
        return
    runs = []
    for _ in range(args.runs):
        cmd = [sys.executable, "-m", "bench.report_build", "--child", "--db", str(args.db)]
        cmd += ["--key-file", str(args.key_file), "--period", args.period]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]))
    summary = {
        key: {
            "median": statistics.median(r[key] for r in runs),
            "max": max(r[key] for r in runs),
        }
        for key in (
            "import_s",
            "import_mb",
            "build_s",
            "total_s",
            "warm_build_s",
            "peak_extra_mb",
        )
    }
    print(json.dumps({"period": args.period, "runs": len(runs), **summary}, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
