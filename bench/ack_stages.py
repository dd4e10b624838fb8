"""Where the time of each acknowledgement went, from a kept benchmark run.

    python -m bench.ack_latency --rates 10 --samples --keep --out run.json
    python -m bench.ack_stages run.json /tmp/referral-bot-bench-XXXX

Joins the load generator's per-message samples (send time, latency) with the bot's own
timestamps in its database (no key needed: these columns are not encrypted):

- to homeserver:   practitioner starts the send → the homeserver stamps the event
                   (`origin_server_ts`);
- to bot's inbox:  → the bot has the decrypted event stored (sync, decryption, inbox
                   transaction);
- handling:        → the event's handler has committed (queue wait + handler transaction);
- sending:         → the acknowledgement's send has returned (outbox pick-up,
                   encryption, the PUT);
- to practitioner: → the practitioner's client has the decrypted acknowledgement (sync,
                   decryption).

The bot's timestamps have millisecond resolution; all clocks are this machine's.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

STAGES = ("to homeserver", "to bot's inbox", "handling", "sending", "to practitioner")


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def stages(
    results: dict[str, Any], db_path: Path, rate: float | None = None
) -> list[dict[str, Any]]:
    """One row per acknowledged referral: its latency and the five stages in ms."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    rows: list[dict[str, Any]] = []
    for phase in results["phases"]:
        if phase["target"] != "referral-bot" or (rate is not None and phase["rate"] != rate):
            continue
        for event_id, sent_at, latency_ms in phase.get("samples", []):
            found = db.execute(
                "SELECT r.received_at, i.received_at, i.handled_at, o.sent_at"
                " FROM referrals r JOIN inbox i ON i.event_id = r.event_id"
                " JOIN outbox o ON o.referral_id = r.id AND o.purpose = 'ack'"
                " WHERE r.event_id = ?",
                (event_id,),
            ).fetchone()
            if found is None or None in found:
                continue
            origin, stored, handled, acked = (_ts(t) for t in found)
            reply = sent_at + latency_ms / 1000
            marks = (sent_at, origin, stored, handled, acked, reply)
            row = {"event_id": event_id, "rate": phase["rate"], "latency_ms": latency_ms}
            row.update(
                {
                    s: round((b - a) * 1000, 1)
                    for s, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True)
                }
            )
            rows.append(row)
    db.close()
    return rows


def summary(rows: list[dict[str, Any]], slowest: float = 0.01) -> str:
    ordered = sorted(rows, key=lambda r: r["latency_ms"])
    k = max(1, round(len(ordered) * slowest))
    tail, rest = ordered[-k:], ordered[:-k]
    lines = [f"{len(rows)} acknowledgements; the slowest {k} against the others (median ms):"]
    lines.append(f"{'stage':16} {'others':>8} {'slowest':>8}")
    for stage in (*STAGES, "latency_ms"):
        a = statistics.median(r[stage] for r in rest) if rest else float("nan")
        b = statistics.median(r[stage] for r in tail)
        lines.append(f"{stage:16} {a:8.1f} {b:8.1f}")
    lines.append("slowest, one by one:")
    for r in tail[::-1]:
        lines.append("  " + " ".join(f"{s}={r[s]}" for s in ("latency_ms", *STAGES)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="JSON from bench.ack_latency --samples")
    parser.add_argument("kept", type=Path, help="the directory that --keep left")
    parser.add_argument("--rate", type=float)
    parser.add_argument("--slowest", type=float, default=0.01, help="fraction (0.01: 1%%)")
    args = parser.parse_args()
    dbs = sorted(args.kept.glob("**/referrals.db"))
    if len(dbs) != 1:
        raise SystemExit(f"expected one referrals.db under {args.kept}, found {len(dbs)}")
    rows = stages(json.loads(args.results.read_text()), dbs[0], args.rate)
    print(summary(rows, args.slowest))


if __name__ == "__main__":
    main()
