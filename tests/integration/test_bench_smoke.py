"""A few seconds of the benchmark, so that the command keeps working."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ack_latency import Options, run_benchmark
from bench.claim_contention import ClaimOptions, run_claims
from bench.flood import FloodOptions, run_flood
from bot.devserver import DevSynapse
from storage.engine import Postgres
from tests.engines import location, sql

pytestmark = pytest.mark.integration


async def test_benchmark_smoke_run(synapse: DevSynapse) -> None:
    results = await run_benchmark(
        Options(practitioners=2, rates=[2.0], duration=2.5, seed=20), hs=synapse
    )
    phases = {p["target"]: p for p in results["phases"]}
    assert set(phases) == {"echo", "referral-bot"}
    for phase in phases.values():
        assert phase["sent"] == 5
        assert phase["answered"] == 5 and phase["duplicates"] == 0
        assert phase["p50_ms"] is not None and phase["p50_ms"] > 0
    assert results["startup"]["launch_to_first_ack_received_s"] > 0
    assert results["peak_rss_mb"]["referral-bot"] > 0
    assert results["bot_exit_code"] == 0
    assert results["summary"][0]["rate"] == 2.0


async def test_claim_contention_smoke_run(engine: str, synapse: DevSynapse, tmp_path: Path) -> None:
    """Four workers claim one referral at once: one wins (on SQLite and on PostgreSQL)."""
    where = location(tmp_path / "claims.db")
    database = where.dsn if isinstance(where, Postgres) else None
    results = await run_claims(ClaimOptions(workers=4, rounds=1, database=database), hs=synapse)
    (only,) = results["rounds"]
    assert only["answered"] == 4 and only["duplicates"] == 0
    assert len(only["winners"]) == 1, only
    assert only["losers_naming_winner"] == 3 and only["unexpected"] == []
    assert results["summary"]["all_rounds_ok"] is True
    assert results["summary"]["p99_ms"] > 0
    assert results["bot_exit_code"] == 0
    if isinstance(where, Postgres):  # the referral and its claim are in PostgreSQL
        assert sql(where, "SELECT COUNT(*) FROM referrals WHERE state = 'claimed'") == [(1,)]


async def test_attachment_roundtrip_smoke_run(synapse: DevSynapse) -> None:
    from bench.attachment_roundtrip import RoundTripOptions, run_roundtrip

    results = await run_roundtrip(RoundTripOptions(mb=1.0, rounds=1), hs=synapse)
    (only,) = results["rounds"]
    assert only["byte_identical"] is True
    assert only["in_event_to_added_s"] > 0 and only["out_command_to_file_event_s"] > 0
    assert results["peak_rss_mb"] > 0 and results["bot_exit_code"] == 0


async def test_flood_benchmark_smoke_run(synapse: DevSynapse) -> None:
    results = await run_flood(
        FloodOptions(flood=12, referrals=2, interval=0.2, drain=2), hs=synapse
    )
    phases = {(p["target"], p["flood"]): p for p in results["phases"]}
    assert set(phases) == {(t, f) for t in ("echo", "referral-bot") for f in (False, True)}
    for phase in phases.values():
        assert phase["referrals_answered"] == 2 and phase["duplicates"] == 0
    assert phases[("echo", True)]["flooder_answers"] == 12
    assert phases[("referral-bot", True)]["flooder_answers"] == 3
    assert results["bot_exit_code"] == 0
