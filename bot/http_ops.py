"""The operations endpoint: `/healthz` and `/metrics` on a loopback address.

`/healthz` answers 200 only when the bot is logged in, has finished its first sync and
can write to its database, and has synced successfully in the last two minutes; otherwise
503 with the reason. A standby (PostgreSQL
active/standby: another process leads) answers 200 `{"status": "standby"}`, so that an
orchestrator keeps it running. `/metrics` is Prometheus text:
referrals by type and state, decisions overdue, events waiting for a room key, outbox
depth, messages given up (refused for good by the homeserver) and the acknowledgement
latency histogram. Neither carries personal data: only
counts and timings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from bot.pipeline import Pipeline
from bot.sync_loop import SyncLoop
from storage.disk_faults import fault_reason
from storage.engine import Store
from storage.metrics import OpsCounts

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
# No successful sync for this long: unhealthy (a sync is a 30 s long poll, and failed
# syncs are retried after at most 30 s).
SYNC_STALE_S = 120.0
PROBE_KEY = "health_probe"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# From "as fast as the homeserver can carry it" to "acknowledged after the bot was down".
ACK_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60, 300, 900, 3600)


class RunningBot(Protocol):
    """What the endpoint reads of the running bot (`bot.app.BotApp`); each part is None
    until it has started."""

    @property
    def stopping(self) -> bool: ...
    @property
    def client(self) -> Any: ...  # nio's AsyncClient: `logged_in`
    @property
    def store(self) -> Store | None: ...
    @property
    def pipeline(self) -> Pipeline | None: ...
    @property
    def sync(self) -> SyncLoop | None: ...
    @property
    def sync_failed(self) -> bool: ...
    @property
    def role(self) -> str: ...  # "starting", "standby" or "leader" (bot/app.py)


class OpsMetrics:
    """The bot's own registry (not the process-global one, so several bots in one process,
    as in the tests, never share or clash)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.ack_latency = Histogram(
            "referralbot_ack_latency_seconds",
            "Time from a referral's origin_server_ts to its acknowledgement being sent",
            buckets=ACK_BUCKETS,
            registry=self.registry,
        )
        self.snapshot = _Snapshot()
        self.registry.register(self.snapshot)
        ProcessCollector(registry=self.registry)

    def observe_ack(self, seconds: float) -> None:
        self.ack_latency.observe(max(0.0, seconds))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Snapshot(Collector):
    """Values read from the database and the pipeline just before each scrape."""

    def __init__(self) -> None:
        self.counts: OpsCounts | None = None
        self.ready = False
        self.handled = 0
        self.sent = 0
        self.send_failures = 0
        self.syncs = 0
        self.role = "starting"

    def describe(self) -> list[Metric]:
        return []  # values are only known at scrape time

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("referralbot_ready", "1 when /healthz would answer 200", self.ready)
        yield CounterMetricFamily(
            "referralbot_events_handled", "Inbox events handled since start", self.handled
        )
        yield CounterMetricFamily(
            "referralbot_messages_sent", "Outbox messages delivered since start", self.sent
        )
        yield CounterMetricFamily(
            "referralbot_sends_failed",
            "Outbox messages given up since start: the homeserver refused them for good",
            self.send_failures,
        )
        yield CounterMetricFamily("referralbot_syncs", "Completed sync batches", self.syncs)
        role = GaugeMetricFamily(
            "referralbot_role",
            "1 for this process's role: leader, standby or starting",
            labels=["role"],
        )
        for name in ("leader", "standby", "starting"):
            role.add_metric([name], 1 if self.role == name else 0)
        yield role
        counts = self.counts
        if counts is None:
            return
        by_state = GaugeMetricFamily(
            "referralbot_referrals", "Referrals by current type and state", labels=["type", "state"]
        )
        for (rtype, state), n in sorted(counts.referrals.items()):
            by_state.add_metric([rtype.replace(" ", "_"), state], n)
        yield by_state
        yield GaugeMetricFamily(
            "referralbot_decisions_overdue",
            "Referrals still 'received' whose decision is past due",
            counts.decisions_overdue,
        )
        yield GaugeMetricFamily(
            "referralbot_decrypt_failures",
            "Inbox events not decrypted yet (waiting for their room key)",
            counts.undecrypted,
        )
        yield GaugeMetricFamily(
            "referralbot_outbox_depth", "Messages stored but not yet sent", counts.outbox_depth
        )
        yield GaugeMetricFamily(
            "referralbot_outbox_failed",
            "Messages given up (refused for good) and not requeued: referral-bot outbox --failed",
            counts.outbox_failed,
        )


class OpsServer:
    def __init__(self, app: RunningBot, host: str, port: int, metrics: OpsMetrics) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.metrics = metrics
        self._runner: web.AppRunner | None = None
        self._probe: asyncio.Task[None] | None = None

    async def start(self) -> None:
        web_app = web.Application()
        web_app.router.add_get("/healthz", self._healthz)
        web_app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("operations endpoint on http://%s:%d (/healthz, /metrics)", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def health(self) -> str | None:
        """None when ready, else why not (a short fixed phrase, no data)."""
        app = self.app
        if app.stopping:
            return "shutting down"
        if app.client is None or not app.client.logged_in:
            return "not logged in"
        if app.sync is None or not app.sync.ready.is_set():
            return "first sync not done"
        if app.sync_failed:
            return "sync loop stopped"
        if app.store is None:
            return "database not open"
        if app.store.faults.reason is not None:
            # A write was refused (disk full, I/O error, read-only): until a write that needs
            # fresh space succeeds again (storage/disk_faults.py), whatever a probe here says.
            return f"database not writable ({app.store.faults.reason})"
        quiet = time.monotonic() - app.sync.last_ok
        if quiet > SYNC_STALE_S:
            # The homeserver has not answered a sync for a long time (cut off from it, or
            # it is down): nothing new is seen, so nothing is acknowledged. An orchestrator
            # restarts the process, and on PostgreSQL a standby takes over meanwhile.
            return f"no successful sync for {int(quiet)} s"
        # The probe is never cancelled half-way (that could leave a transaction open): a
        # slow one keeps running and the next request waits on the same one.
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._write_probe())
        try:
            await asyncio.wait_for(asyncio.shield(self._probe), PROBE_TIMEOUT_S)
        except TimeoutError:
            return "database busy for more than 2 s"
        except Exception as exc:
            return f"database not writable ({fault_reason(exc) or type(exc).__name__})"
        return None

    async def _write_probe(self) -> None:
        assert self.app.store is not None
        async with self.app.store.transaction() as tx:
            await tx.set_kv(PROBE_KEY, datetime.now(UTC).isoformat(timespec="seconds"))

    async def _healthz(self, request: web.Request) -> web.Response:
        if self.app.role == "standby" and not self.app.stopping:
            return web.json_response({"status": "standby"})
        reason = await self.health()
        if reason is None:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "unavailable", "reason": reason}, status=503)

    async def _metrics(self, request: web.Request) -> web.Response:
        app = self.app
        snap = self.metrics.snapshot
        snap.role = self.app.role
        snap.ready = snap.role != "standby" and await self.health() is None
        if app.pipeline is not None:
            snap.handled, snap.sent = app.pipeline.handled, app.pipeline.sent
            snap.send_failures = app.pipeline.send_failures
        if app.sync is not None:
            snap.syncs = app.sync.syncs
        if app.store is not None and not app.stopping:
            try:
                # A full count of the referrals table: on the read connection, so a scrape
                # never holds up the pipeline's transactions.
                async with app.store.reading() as tx:
                    snap.counts = await tx.ops_counts()
            except Exception as exc:  # scrape what we have; the gauges keep their last value
                log.warning("metrics: database counts unavailable (%s)", type(exc).__name__)
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})
