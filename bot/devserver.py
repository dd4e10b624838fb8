"""A throwaway local Synapse homeserver for tests, the demo and benchmarks.

``DevSynapse`` generates a Synapse config in a directory of its own, rewrites it for local
use (one plain-HTTP client listener on 127.0.0.1, SQLite, no federation, no registration,
rate limits out of the way), runs Synapse as a child process and makes users through the
shared-secret registration admin API.

    async with DevSynapse() as hs:
        user_id = await hs.register("alice", "secret")
        ...  # talk to hs.url

``stop()`` followed by ``start()`` restarts the same server: same directory, port and data.
Only loopback addresses are ever used.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import aiohttp
import yaml

logger = logging.getLogger(__name__)

__all__ = ["DevSynapse", "DevSynapseError"]

LOOPBACK: Final = "127.0.0.1"
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0
_POLL_INTERVAL_S: Final = 0.05
_LOG_TAIL_BYTES: Final = 4000

# Far above anything a test or benchmark does; Synapse reads these as floats / ints.
_NO_LIMIT: Final[dict[str, int]] = {"per_second": 100_000, "burst_count": 1_000_000}

# Every new-style rate limiter Synapse 1.163 reads (synapse/config/ratelimiting.py).
# Nested keys are parsed with a dotted path, e.g. "rc_login.address".
_RATE_LIMITS: Final[dict[str, Any]] = {
    "rc_message": _NO_LIMIT,
    "rc_registration": _NO_LIMIT,
    "rc_registration_token_validity": _NO_LIMIT,
    "rc_login": {
        "address": _NO_LIMIT,
        "account": _NO_LIMIT,
        "failed_attempts": _NO_LIMIT,
    },
    "rc_admin_redaction": _NO_LIMIT,
    "rc_joins": {"local": _NO_LIMIT, "remote": _NO_LIMIT},
    "rc_joins_per_room": _NO_LIMIT,
    "rc_key_requests": _NO_LIMIT,
    "rc_3pid_validation": _NO_LIMIT,
    "rc_invites": {
        "per_room": _NO_LIMIT,
        "per_user": _NO_LIMIT,
        "per_issuer": _NO_LIMIT,
    },
    "rc_third_party_invite": _NO_LIMIT,
    "rc_media_create": _NO_LIMIT,
    "rc_presence": {"per_user": _NO_LIMIT},
    "rc_delayed_event_mgmt": _NO_LIMIT,
    "rc_room_creation": _NO_LIMIT,
    "rc_reports": _NO_LIMIT,
    "rc_user_directory": _NO_LIMIT,
    "rc_profile": _NO_LIMIT,
}

_CONFIG_NAME: Final = "homeserver.yaml"
_LOG_CONFIG_NAME: Final = "log.config.yaml"
_SYNAPSE_LOG_NAME: Final = "homeserver.log"
_PROCESS_LOG_NAME: Final = "synapse-process.log"
_DATA_DIR_NAME: Final = "data"


class DevSynapseError(RuntimeError):
    """Synapse could not be configured, started or used."""


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now (for Synapse, the bot's
    [http] listener, a test's proxy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_is_free(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:port (connections in TIME_WAIT don't count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _tail(path: Path, max_bytes: int = _LOG_TAIL_BYTES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


class DevSynapse:
    """A local Synapse homeserver run as a child process.

    Not safe to share between event loops; meant for one test session, demo or benchmark.
    """

    def __init__(self, base_dir: Path | None = None, server_name: str = "localhost") -> None:
        if base_dir is None:
            self._base_dir = Path(tempfile.mkdtemp(prefix="devsynapse-"))
            self._owns_dir = True
        else:
            self._base_dir = Path(base_dir).resolve()
            self._base_dir.mkdir(parents=True, exist_ok=True)
            self._owns_dir = False
        self._server_name = server_name
        self._port: int | None = None
        self._shared_secret: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._last_start_seconds: float | None = None

    # ------------------------------------------------------------------ properties

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def server_name(self) -> str:
        return self._server_name

    @property
    def port(self) -> int:
        if self._port is None:
            raise DevSynapseError("the port is chosen on the first start()")
        return self._port

    @property
    def url(self) -> str:
        """Client-server API base URL, e.g. ``http://127.0.0.1:40123``."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self._base_dir / _CONFIG_NAME

    @property
    def log_path(self) -> Path:
        """Synapse's own log (WARNING and above)."""
        return self._base_dir / _SYNAPSE_LOG_NAME

    @property
    def process_log_path(self) -> Path:
        """stdout/stderr of the Synapse process (start-up crashes land here)."""
        return self._base_dir / _PROCESS_LOG_NAME

    @property
    def pid(self) -> int | None:
        """The Synapse process ID while it runs (benchmarks read its CPU time)."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def last_start_seconds(self) -> float | None:
        """Wall time of the last successful start(), from spawn to /versions answering."""
        return self._last_start_seconds

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start Synapse (generating its config on the first start) and wait until it answers."""
        if self.is_running:
            logger.debug("DevSynapse at %s is already running", self._base_dir)
            return
        if not self.config_path.exists():
            await self._generate_config()
            self._port = free_port()
            self._rewrite_config()
        self._load_config()
        if not _port_is_free(self.port):
            # Without this check the readiness poll could be answered by whoever holds it.
            raise DevSynapseError(
                f"{LOOPBACK}:{self.port} is already in use (another Synapse on {self._base_dir}?)"
            )

        started = time.monotonic()
        with self.process_log_path.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "synapse.app.homeserver",
                "-c",
                str(self.config_path),
                cwd=self._base_dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # own process group: signals go to Synapse only
            )
        try:
            await self._wait_until_ready(started)
        except BaseException:
            await self.stop()
            raise
        self._last_start_seconds = time.monotonic() - started
        logger.info(
            "Synapse (pid %d) answering on %s after %.2f s",
            self._proc.pid,
            self.url,
            self._last_start_seconds,
        )

    async def stop(self) -> None:
        """SIGTERM Synapse, wait up to 10 s, then SIGKILL. Data and config stay."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            stopping = time.monotonic()
            self._signal(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=STOP_TIMEOUT_S)
            except TimeoutError:
                logger.warning(
                    "Synapse pid %d ignored SIGTERM for %.0f s; killing it",
                    proc.pid,
                    STOP_TIMEOUT_S,
                )
                self._signal(proc, signal.SIGKILL)
                await proc.wait()
            except asyncio.CancelledError:
                # Don't leave an orphan behind when the caller gives up waiting.
                self._signal(proc, signal.SIGKILL)
                raise
            logger.info(
                "Synapse pid %d stopped in %.2f s (exit code %s)",
                proc.pid,
                time.monotonic() - stopping,
                proc.returncode,
            )
        self._proc = None

    async def kill(self) -> None:
        """SIGKILL Synapse, as a crash would: requests in flight get no answer. Data stays."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            self._signal(proc, signal.SIGKILL)
            await proc.wait()
        self._proc = None

    def cleanup(self) -> None:
        """Delete the base directory if DevSynapse created it. Call after stop()."""
        if self.is_running:
            raise DevSynapseError("cleanup() while Synapse is running; stop() it first")
        if self._owns_dir:
            shutil.rmtree(self._base_dir, ignore_errors=True)

    async def __aenter__(self) -> DevSynapse:
        try:
            await self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.stop()
        finally:
            self.cleanup()

    # ------------------------------------------------------------------ users

    async def register(self, username: str, password: str, admin: bool = False) -> str:
        """Create a user with the shared-secret admin API and return its full user ID.

        A user that already exists is not an error: its ID is returned (the password is
        then not changed).
        """
        if self._shared_secret is None:
            self._load_config()
        secret = self._shared_secret
        if not secret:
            raise DevSynapseError("no registration_shared_secret in the config")
        user_id = f"@{username}:{self._server_name}"
        endpoint = f"{self.url}/_synapse/admin/v1/register"
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(endpoint) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise DevSynapseError(f"register nonce: HTTP {resp.status}: {body}")
                nonce: str = body["nonce"]
            mac = hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)
            mac.update(nonce.encode("utf-8"))
            mac.update(b"\x00")
            mac.update(username.encode("utf-8"))
            mac.update(b"\x00")
            mac.update(password.encode("utf-8"))
            mac.update(b"\x00")
            mac.update(b"admin" if admin else b"notadmin")
            payload = {
                "nonce": nonce,
                "username": username,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            }
            async with session.post(endpoint, json=payload) as resp:
                body = await resp.json()
                if resp.status == 200:
                    registered: str = body["user_id"]
                    return registered
                if resp.status == 400 and body.get("errcode") == "M_USER_IN_USE":
                    logger.debug("%s already exists", user_id)
                    return user_id
                raise DevSynapseError(f"register {username!r}: HTTP {resp.status}: {body}")

    # ------------------------------------------------------------------ internals

    async def _generate_config(self) -> None:
        data_dir = self._base_dir / _DATA_DIR_NAME
        data_dir.mkdir(exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "synapse.app.homeserver",
            "--server-name",
            self._server_name,
            "--config-path",
            str(self.config_path),
            "--data-directory",
            str(data_dir),
            "--generate-config",
            "--report-stats=no",
            cwd=self._base_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await proc.communicate()
        if proc.returncode != 0 or not self.config_path.exists():
            raise DevSynapseError(
                f"synapse --generate-config failed (exit {proc.returncode}):\n"
                + output.decode("utf-8", errors="replace")
            )

    def _rewrite_config(self) -> None:
        assert self._port is not None
        config: dict[str, Any] = yaml.safe_load(self.config_path.read_text("utf-8"))
        data_dir = self._base_dir / _DATA_DIR_NAME
        log_config = self._base_dir / _LOG_CONFIG_NAME
        log_config.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "formatters": {
                        "plain": {
                            "format": "%(asctime)s - %(name)s - %(lineno)d - "
                            "%(levelname)s - %(message)s"
                        }
                    },
                    "handlers": {
                        "file": {
                            "class": "logging.FileHandler",
                            "formatter": "plain",
                            "filename": str(self.log_path),
                            "encoding": "utf8",
                        }
                    },
                    "root": {"level": "WARNING", "handlers": ["file"]},
                    "disable_existing_loggers": False,
                }
            ),
            "utf-8",
        )
        config.update(
            {
                "server_name": self._server_name,
                "public_baseurl": f"http://{LOOPBACK}:{self._port}/",
                "listeners": [
                    {
                        "port": self._port,
                        "bind_addresses": [LOOPBACK],
                        "type": "http",
                        "tls": False,
                        "x_forwarded": False,
                        "resources": [{"names": ["client"], "compress": False}],
                    }
                ],
                "database": {
                    "name": "sqlite3",
                    "args": {"database": str(data_dir / "homeserver.db")},
                },
                "media_store_path": str(data_dir / "media_store"),
                "pid_file": str(self._base_dir / "homeserver.pid"),
                "log_config": str(log_config),
                "enable_registration": False,
                "trusted_key_servers": [],
                "suppress_key_server_warning": True,
                "report_stats": False,
                "enable_metrics": False,
                "presence": {"enabled": False},
                "url_preview_enabled": False,
                # Minimum bcrypt cost: every registration and password login hashes once;
                # the default (12) costs about a quarter of a second each time.
                "bcrypt_rounds": 4,
                **_RATE_LIMITS,
            }
        )
        tmp = self.config_path.with_suffix(".yaml.tmp")
        tmp.write_text(
            "# Rewritten by bot.devserver.DevSynapse for local, loopback-only use.\n"
            + yaml.safe_dump(config, sort_keys=False),
            "utf-8",
        )
        tmp.replace(self.config_path)
        # The generated log config is replaced by ours; drop it to avoid confusion.
        for unused in self._base_dir.glob("*.log.config"):
            unused.unlink()

    def _load_config(self) -> None:
        config: dict[str, Any] = yaml.safe_load(self.config_path.read_text("utf-8"))
        listeners = config.get("listeners") or []
        if not listeners:
            raise DevSynapseError(f"no listeners in {self.config_path}")
        self._port = int(listeners[0]["port"])
        secret = config.get("registration_shared_secret")
        self._shared_secret = str(secret) if secret else None
        name = config.get("server_name")
        if name and name != self._server_name:
            logger.warning(
                "%s is for server %r, not %r; using %r",
                self.config_path,
                name,
                self._server_name,
                name,
            )
            self._server_name = str(name)

    async def _wait_until_ready(self, started: float) -> None:
        proc = self._proc
        assert proc is not None
        versions = f"{self.url}/_matrix/client/versions"
        deadline = started + START_TIMEOUT_S
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if proc.returncode is not None:
                    raise DevSynapseError(
                        f"Synapse exited with code {proc.returncode} while starting.\n"
                        + self._log_tails()
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(versions) as resp:
                        if resp.status == 200:
                            await resp.read()
                            return
                if time.monotonic() > deadline:
                    raise DevSynapseError(
                        f"Synapse did not answer {versions} within {START_TIMEOUT_S:.0f} s.\n"
                        + self._log_tails()
                    )
                await asyncio.sleep(_POLL_INTERVAL_S)

    def _log_tails(self) -> str:
        parts = []
        for path in (self.process_log_path, self.log_path):
            if path.exists():
                parts.append(f"--- tail of {path} ---\n{_tail(path)}")
        return "\n".join(parts) or "(no log written)"

    @staticmethod
    def _signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        try:
            os.killpg(proc.pid, sig)  # start_new_session=True: pgid == pid
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
