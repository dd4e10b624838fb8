"""What one call into matrix-nio's E2EE store costs: SQLite file vs PostgreSQL.

    python -m bench.crypto_store_latency --count 300

nio calls its store synchronously from the event loop (bot/crypto_store_pg.py), so every
call's time is time the loop is blocked. Times the calls the bot makes while it works,
each `--count` times, on a SQLite store in a temporary folder and on the store in a
throwaway local PostgreSQL (fsync and synchronous_commit on, a Unix socket):

- save_sync_token / load_sync_token (a write / a read of one row, after the account);
- save_inbound_group_session (a room key arriving: two writes);
- save_session (an Olm session used: an upsert);
- is_device_verified with the trust cache cold (two reads), as after a key query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nio.crypto import (
    InboundGroupSession,
    OlmAccount,
    OlmDevice,
    OutboundGroupSession,
    OutboundSession,
)

from bot.crypto_store_pg import PostgresCryptoStore
from bot.devpostgres import DevPostgres
from bot.trust_cache import TrustCachingStore
from storage.engine import Postgres, Store
from storage.keyring import Keyring

BOT, DEVICE = "@bot:localhost", "BENCHDEVICE"
PICKLE_KEY = "bench-store-key-" + "x" * 24


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def measure(store: Any, count: int) -> dict[str, dict[str, float]]:
    account = OlmAccount()
    store.save_account(account)
    peer = OlmAccount()
    peer.generate_one_time_keys(1)
    otk = next(iter(peer.one_time_keys["curve25519"].values()))
    olm = OutboundSession(account, peer.identity_keys["curve25519"], otk)
    nurse = OlmDevice("@nurse:localhost", "NURSE", {"ed25519": "e", "curve25519": "c"})
    store.save_device_keys({nurse.user_id: {nurse.id: nurse}})
    state = {"n": 0}

    def sync_token() -> None:
        state["n"] += 1
        store.save_sync_token(f"s{state['n']}")

    def room_key() -> None:
        group = OutboundGroupSession()
        store.save_inbound_group_session(
            InboundGroupSession(group.session_key, "ed", "curve", "!room:localhost")
        )

    def trust_cold() -> None:
        store._trust.clear()
        store.is_device_verified(nurse)

    calls: dict[str, Callable[[], object]] = {
        "save_sync_token": sync_token,
        "load_sync_token": store.load_sync_token,
        "save_inbound_group_session": room_key,
        "save_session": lambda: store.save_session(peer.identity_keys["curve25519"], olm),
        "is_device_verified (cold)": trust_cold,
    }
    out: dict[str, dict[str, float]] = {}
    for name, call in calls.items():
        times = []
        for _ in range(count):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        out[name] = {
            "p50": round(statistics.median(times), 3),
            "p95": round(_pct(times, 95), 3),
            "max": round(max(times), 3),
        }
    return out


async def _leader(where: Postgres) -> tuple[Store, int]:
    store = await Store.open(where, Keyring("bench-database-key-" + "y" * 24))
    assert store.epoch is not None
    return store, store.epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    pg = DevPostgres.find(durable=True)
    if pg is None:
        raise SystemExit("no PostgreSQL server binaries found")
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        results["sqlite"] = measure(
            TrustCachingStore(BOT, DEVICE, str(Path(folder)), PICKLE_KEY), args.count
        )
    pg.start()
    try:
        where = Postgres(pg.create_database("crypto_bench"))
        loop = asyncio.new_event_loop()
        leader, epoch = loop.run_until_complete(_leader(where))
        store = PostgresCryptoStore(BOT, DEVICE, "-", PICKLE_KEY, postgres=where, epoch=epoch)
        try:
            results["postgresql"] = measure(store, args.count)
        finally:
            store.close()
            loop.run_until_complete(leader.close())
            loop.close()
    finally:
        pg.stop()
    print(f"{'call':28} {'engine':11} {'p50':>8} {'p95':>8} {'max':>8}  (ms)")
    for name in results["sqlite"]:
        for engine, figures in results.items():
            row = " ".join(f"{figures[name][k]:8.3f}" for k in ("p50", "p95", "max"))
            print(f"{name:28} {engine:11} {row}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
