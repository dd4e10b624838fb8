"""The bot as an operator runs it, for tests and benchmarks: `referral-bot run -c CONFIG`
in a process of its own, so that a caller can `kill -9` it, send it SIGHUP, watch its
/healthz and /metrics, measure its memory, and start it again on the same data.

Like `bot/devserver.py` (the throwaway Synapse), this is tooling around the bot, not part of
it: nothing in the running bot imports it. It needs no pytest, so `bench/` uses it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from bot.devserver import LOOPBACK, free_port

__all__ = ["BotProcess", "free_port", "poll_until", "proc_status_kb"]

ROOT = Path(__file__).resolve().parents[1]


def proc_status_kb(pid: int, key: str) -> int | None:
    """A kB figure from /proc/PID/status (VmRSS; VmHWM = peak RSS); None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def poll_until(done: Callable[[], bool], timeout: float, what: str) -> None:
    """Until `done()` is true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)


class BotProcess:
    """`referral-bot run -c CONFIG`, its output appended to `log_path`. With `http_port`
    (the port of the config's `[http] listen`), /healthz and /metrics can be read."""

    def __init__(self, config_path: Path, log_path: Path, *, http_port: int | None = None) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self.base = f"http://{LOOPBACK}:{http_port}" if http_port else ""
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.launched_at = 0.0

    async def start(self) -> None:
        assert self.proc is None or self.proc.returncode is not None
        self.starts += 1
        self.launched_at = time.monotonic()
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts} ----\n".encode())
            log.flush()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot.cli",
                "run",
                "-c",
                str(self.config_path),
                cwd=ROOT,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    async def kill9(self) -> None:
        """SIGKILL: no clean-up of any kind, like a power cut for the process."""
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, as an operator's service manager would, then SIGKILL after `timeout`
        seconds; the exit code (None if it was never started)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        return proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    async def wait_log(self, text: str, timeout: float = 20.0, after: int = 0) -> None:
        """Until `text` appears in the log past character `after`."""
        deadline = time.monotonic() + timeout
        while text not in self.log()[after:]:
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(
                    f"the bot exited ({self.proc.returncode}):\n{self.log()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the bot's log:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.05)

    async def wait_healthy(self, timeout: float = 60.0) -> float:
        """Seconds from launch to /healthz answering 200."""
        assert self.proc is not None and self.base, "started, with http_port"
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"referral-bot exited with {self.proc.returncode}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{self.base}/healthz") as resp:
                        if resp.status == 200:
                            return time.monotonic() - self.launched_at
                await asyncio.sleep(0.02)
        raise TimeoutError("referral-bot did not become healthy")

    async def status(self) -> str | None:
        """What /healthz says: "ok" (leading and ready), "standby", "unavailable", or None
        when it does not answer."""
        assert self.base, "needs http_port"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(f"{self.base}/healthz") as resp,
            ):
                return str((await resp.json())["status"])
        return None

    async def wait_status(self, wanted: str, timeout: float = 60.0) -> float:
        """Seconds until /healthz says `wanted` (polled every 20 ms)."""
        started = time.monotonic()
        while (await self.status()) != wanted:
            if self.proc is not None and self.proc.returncode is not None:
                raise RuntimeError(
                    f"the bot exited ({self.proc.returncode}):\n{self.log()[-3000:]}"
                )
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"/healthz never said {wanted!r}:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    async def metrics(self) -> str:
        assert self.base, "needs http_port"
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{self.base}/metrics") as resp,
        ):
            return await resp.text()

    def peak_rss_mb(self) -> float | None:
        kb = None if self.proc is None else proc_status_kb(self.proc.pid, "VmHWM")
        return None if kb is None else kb / 1024

    async def __aenter__(self) -> BotProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
