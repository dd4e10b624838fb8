"""Wiring: config → store, client, pipeline, sync loop; start, run, shut down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

from nio import AsyncClient, JoinResponse, RoomResolveAliasResponse

from bot.checkpoint_file import check_appendable
from bot.checkpoints import Anchor, run_checkpoints
from bot.cross_signing import Outcome, ensure_for_client, password_reader
from bot.device_files import CREDENTIALS, device_files_for
from bot.device_import import move_local_device
from bot.device_trust import DeviceTrust
from bot.http_ops import OpsMetrics, OpsServer
from bot.maintenance import database_location
from bot.messenger import MatrixMessenger
from bot.pipeline import Pipeline
from bot.reload import ConfigReloader, log_outcome
from bot.session import close_crypto_store, open_client, secure_dir
from bot.sync_loop import SyncLoop
from bot.timers import run_deadline_clock
from bot.verification import Verifier
from handlers.settings import CurrentSettings, Settings
from schemas.config import Config, ConfigError
from storage.engine import Store
from storage.keyring import Keyring

log = logging.getLogger(__name__)


class BotApp:
    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        # Re-read by !reload and SIGHUP; without it the configuration cannot be reloaded.
        self.config_path = config_path
        self.store: Store | None = None
        self.client: AsyncClient | None = None
        self.pipeline: Pipeline | None = None
        self.sync: SyncLoop | None = None
        self.cross_signing: Outcome | None = None
        self.trust: DeviceTrust | None = None
        self.verifier: Verifier | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._clock_task: asyncio.Task[None] | None = None
        self._resume_task: asyncio.Task[None] | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self.anchor: Anchor | None = None
        self.started_at = time.monotonic()
        self.stopping = False
        self.metrics = OpsMetrics()
        self.ops: OpsServer | None = None
        # PostgreSQL active/standby (docs/HA-DESIGN.md): "standby" while another process
        # holds the database, "leader" once this one does; /healthz and /metrics say which.
        self.role = "starting"
        self._session_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Log in, open the database, resume unfinished work and start syncing."""
        cfg = self.config
        if cfg.http is not None:  # first, so /healthz says 503 while logging in
            self.ops = OpsServer(self, cfg.http.host, cfg.http.port, self.metrics)
            await self.ops.start()
        data_dir = secure_dir(cfg.storage.data_dir)
        if cfg.integrity.checkpoint_file is not None:
            # A path the bot cannot append to stops it now, not silently later.
            check_appendable(cfg.integrity.checkpoint_file)
        store_key = cfg.storage.store_key.read()
        try:
            keyring = Keyring(cfg.storage.database_key.read())
        except ValueError as exc:
            raise ConfigError([f"storage.database_key: {exc}"]) from None
        failover = cfg.storage.failover_seconds
        self.store = await Store.open(
            database_location(cfg),
            keyring,
            standby=self._standing_by,
            failover_s=failover,
        )
        self.role = "leader"
        if self.store.epoch is not None:
            log.info("leading: epoch=%d", self.store.epoch)
            self._session_task = asyncio.create_task(
                self.store.watch_session(failover), name="session-watch"
            )
        # Files in data_dir on SQLite; sealed rows and nio's store in PostgreSQL.
        files = device_files_for(self.store, data_dir, store_key)
        await move_local_device(files, store_key)  # an older version's device in data_dir
        creds_exist = await files.read(CREDENTIALS) is not None
        password = None if creds_exist else cfg.bot.password.read()
        self.client = await open_client(
            homeserver=cfg.homeserver.url,
            user_id=cfg.bot.user_id,
            password=password,
            device_name=cfg.bot.device_name,
            files=files,
            store_key=store_key,
        )
        self.cross_signing = await ensure_for_client(
            self.client,
            files=files,
            store_key=store_key,
            password=password_reader(password, cfg.bot.password),
        )
        team_room = await self._resolve_room(cfg.rooms.advice_team)
        # One holder for every component: a reload swaps its value for all of them.
        settings = CurrentSettings(Settings.from_config(cfg, team_room))
        self.trust = DeviceTrust(
            self.client,
            self.store,
            settings,
            strict=cfg.trust.mode == "strict",
            pinned=cfg.trust.pinned_devices,
        )
        await self.trust.load()
        messenger = MatrixMessenger(self.client, cfg.is_allowed_user, self.trust)
        self.pipeline = Pipeline(self.store, settings, messenger)
        self.pipeline.may_send.clear()  # until the first sync (_resume_after_first_sync)
        self.pipeline.use_media(messenger)
        if self.config_path is not None:
            self.pipeline.reloader = ConfigReloader(self.config_path, cfg, settings)
        self.pipeline.on_ack_sent = self.metrics.observe_ack
        await self.trust.apply_all()  # the mode or the pinned devices may have changed
        self.verifier = Verifier(self.client, self.store, settings, self.trust)
        self.sync = SyncLoop(
            self.client, self.store, self.pipeline, cfg.is_allowed_user, self.verifier
        )
        self._sync_task = asyncio.create_task(self._run_sync(), name="sync")
        self._resume_task = asyncio.create_task(self._resume_after_first_sync(), name="resume")
        self._clock_task = asyncio.create_task(
            run_deadline_clock(self.pipeline), name="deadline-clock"
        )
        await self._start_checkpoints()

    def _standing_by(self) -> None:
        """Another process leads (PostgreSQL): wait, without logging in or syncing."""
        if self.role != "standby":
            log.info("standby: another referral-bot process leads; taking over when it stops")
        self.role = "standby"

    async def _start_checkpoints(self) -> None:
        """Anchor the running records outside the database (bot/checkpoints.py)."""
        integrity = self.config.integrity
        if integrity.checkpoint_file is None:
            log.warning(
                "integrity.checkpoint_file is not set: deleted newest running-record "
                "entries, a deleted referral or a database restored from an older copy "
                "cannot be detected (README, Checkpoints)"
            )
            return
        assert self.store is not None and self.pipeline is not None
        audit_room = None
        if integrity.audit_room is not None:
            audit_room = await self._resolve_room(integrity.audit_room)
        self.anchor = Anchor(
            self.store,
            integrity.checkpoint_file,
            audit_room=audit_room,
            audit_interval_s=integrity.audit_interval_seconds,
        )
        self.anchor.on_enqueued = self.pipeline.outbox_workers.kick_all
        self._checkpoint_task = asyncio.create_task(
            run_checkpoints(self.anchor, integrity.checkpoint_seconds), name="checkpoints"
        )

    async def _resume_after_first_sync(self) -> None:
        """Pick up what the last run left once the first sync has told nio which rooms the
        bot is in: sending before that only fails and retries."""
        assert self.sync is not None and self.pipeline is not None
        await self.sync.ready.wait()
        self.pipeline.may_send.set()
        await self.pipeline.resume()

    async def _run_sync(self) -> None:
        assert self.sync is not None
        try:
            await self.sync.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sync loop stopped by an error")
            raise

    @property
    def sync_failed(self) -> bool:
        task = self._sync_task
        return task is not None and task.done()

    async def _resolve_room(self, room: str) -> str:
        assert self.client is not None
        if room.startswith("#"):
            resp = await self.client.room_resolve_alias(room)
            if not isinstance(resp, RoomResolveAliasResponse):
                raise RuntimeError(f"cannot resolve the advice-team room alias {room}")
            room = resp.room_id
        joined = await self.client.joined_rooms()
        if room not in getattr(joined, "rooms", []):
            result = await self.client.join(room)
            if not isinstance(result, JoinResponse):
                log.warning("not in the advice-team room yet (invite the bot): room=%s", room)
        return room

    async def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.sync is not None and self._sync_task is not None
        ready = asyncio.create_task(self.sync.ready.wait())
        done, _ = await asyncio.wait(
            {ready, self._sync_task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if self._sync_task in done:
            ready.cancel()
            self._sync_task.result()  # raises the sync loop's error
        if ready not in done:
            ready.cancel()
            raise TimeoutError("the bot did not complete its first sync in time")
        log.info("ready in %.2f s", time.monotonic() - self.started_at)

    async def shutdown(self, drain_timeout: float = 10.0) -> None:
        """Stop syncing, finish the events in hand, flush the outbox, close. Never logs out."""
        lost = self.store is not None and self.store.lost.is_set()
        for task in (
            self._clock_task,
            self._resume_task,
            self._checkpoint_task,
            self._session_task,
        ):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.stopping = True
        if lost and self.pipeline is not None:
            # No longer the leader, or no database session: another process may be
            # sending already. Nothing more is sent or written here, starting now.
            await self.pipeline.stop()
        log.info("shutting down: finishing the events in hand and flushing the outbox")
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sync_task
        if self.pipeline is not None and not lost:
            self.pipeline.stopping = True  # summaries waiting to be batched go now
            try:
                # The sync task may have been cancelled after storing events but before
                # handing them to the workers: pick up everything stored, then drain.
                await self.pipeline.resume()
                if not self.pipeline.may_send.is_set():  # stopped before the first sync
                    await self.pipeline.stop()
                await asyncio.wait_for(self.pipeline.wait_idle(), drain_timeout)
            except TimeoutError:
                log.warning("shutdown: work left in the outbox is sent on the next start")
            except Exception as exc:  # the database went away meanwhile: close the rest
                log.error("shutdown: draining failed (%s)", type(exc).__name__)
            await self.pipeline.stop()
        if self.anchor is not None and not lost:
            # The entries of the last seconds are anchored too (not posted to the audit
            # room: the outbox has stopped).
            self.anchor.audit_room = None
            self.anchor.on_enqueued = None
            try:
                await self.anchor.checkpoint()
            except Exception as exc:
                log.error("last checkpoint failed: %s: %s", type(exc).__name__, exc)
        try:
            if self.client is not None:
                await self.client.close()
                close_crypto_store(self.client)
            if self.ops is not None:
                await self.ops.stop()
        finally:
            if self.store is not None:
                await self.store.close()  # always: an open connection keeps a thread
        log.info("stopped")

    def reload_from_signal(self) -> None:
        """SIGHUP: re-read the configuration file; the log says what happened."""
        if self.pipeline is None or self.pipeline.reloader is None:
            log.warning("SIGHUP ignored: not started yet, or no configuration file to re-read")
            return
        log_outcome(self.pipeline.reloader.reload(), "SIGHUP")

    async def run_forever(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_from_signal)
        try:
            await self.start()
        except BaseException:
            await self.shutdown()
            raise
        assert self._sync_task is not None
        assert self.store is not None
        stopper = asyncio.create_task(stop.wait())
        # A PostgreSQL session that ends under the bot takes its locks with it: stop (the
        # supervisor restarts the bot, which takes the database again) rather than go on.
        lost = asyncio.create_task(self.store.lost.wait())
        await asyncio.wait({stopper, lost, self._sync_task}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        lost.cancel()
        failed = self._sync_task.done() and not self._sync_task.cancelled()
        await self.shutdown()
        if self.store.lost.is_set():
            raise RuntimeError("the database session was lost; see the log above")
        if failed and self._sync_task.exception() is not None:
            raise RuntimeError("the sync loop failed; see the log above")
