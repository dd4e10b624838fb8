"""What the benchmarks share: the machine they ran on, the echo bot (the baseline), the
practitioners' DMs, percentiles, the start of a run (a temporary folder, a homeserver,
the results' header) and its end (`wind_down`, `write_results`)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bot.chat_user import ChatUser
from bot.devprocess import BotProcess, free_port, proc_status_kb
from bot.devserver import DevSynapse
from bot.world import World, make_world

ROOT = Path(__file__).resolve().parents[1]


async def begin_run(
    name: str, opts: object | None = None, hs: DevSynapse | None = None
) -> tuple[Path, DevSynapse, bool, dict[str, Any]]:
    """A temporary folder for run `name` (`bench.<name>`), the homeserver (started here
    unless given: then `own_hs` is True and `wind_down` stops it) and the results' header:
    the machine, the command line and the options."""
    base = Path(tempfile.mkdtemp(prefix=f"referral-bot-{name.replace('_', '-')}-"))
    own_hs = hs is None
    if hs is None:
        hs = DevSynapse(base / "synapse")
        await hs.start()
    results: dict[str, Any] = {
        "machine": machine(),
        "command": f"python -m bench.{name} " + " ".join(sys.argv[1:]),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if opts is not None and is_dataclass(opts) and not isinstance(opts, type):
        results["options"] = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()
        }
    return base, hs, own_hs, results


async def bench_world(hs: DevSynapse, base: Path, tag: str) -> tuple[World, int]:
    """The bot's account, config (operations endpoint on a free loopback port, returned)
    and advice team, for one run (`base/world`)."""
    world = await make_world(
        hs,
        base / "world",
        bot_name=f"referral-bot-{tag}",
        worker_name=f"advice-worker-{tag}",
        log_level="WARNING",
    )
    port = free_port()
    world.configure(http_listen=f"127.0.0.1:{port}")
    return world, port


def write_results(results: dict[str, Any], out: Path | None, show: str | None = None) -> None:
    """Write the results as JSON to `out` (if given) and print them (or only `show`)."""
    text = json.dumps(results, indent=2)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    print(text if show is None else json.dumps(results[show], indent=2))


def machine() -> dict[str, Any]:
    mem_kb = _proc_status_meminfo()
    return {
        "nproc": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "synapse": version("matrix-synapse"),
        "matrix_nio": version("matrix-nio"),
        "vodozemac": version("vodozemac"),
        "kernel": platform.release(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _proc_status_meminfo() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time a process has used so far (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EchoProcess:
    def __init__(self, hs: DevSynapse, base: Path, name: str) -> None:
        self.hs = hs
        self.base = base
        self.name = name
        self.user_id = ""
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        password = secrets.token_urlsafe(16)
        self.user_id = await self.hs.register(self.name, password)
        pw_file = self.base / "echo-password"
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.echo_bot",
            "--homeserver",
            self.hs.url,
            "--user",
            self.user_id,
            "--password-file",
            str(pw_file),
            "--store",
            str(self.base / "echo-store"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if line.strip() != b"READY":
            raise RuntimeError(f"echo bot did not start: {line!r}")

    def peak_rss_mb(self) -> float | None:
        kb = None if self.proc is None else proc_status_kb(self.proc.pid, "VmHWM")
        return None if kb is None else kb / 1024

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def open_dms(users: list[ChatUser], target_user: str) -> list[str]:
    rooms = []
    for user in users:
        room = await user.create_room(invite=[target_user], encrypted=True)
        rooms.append(room)
    for user, room in zip(users, rooms, strict=True):
        await user.wait_joined(room, target_user, timeout=60)
    return rooms


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def round1(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


async def wind_down(
    base: Path,
    keep: bool,
    *,
    bot: BotProcess | None,
    world: World | None,
    hs: DevSynapse | None,
    echo: EchoProcess | None = None,
) -> None:
    """How every benchmark ends, whatever happened: stop the bot and the echo bot, close
    the clients, stop the homeserver if the run started it (`hs`), and remove the run's
    files unless asked to keep them."""
    if bot is not None:
        await bot.stop()
    if echo is not None:
        await echo.stop()
    if world is not None:
        await world.close()
    if hs is not None:
        await hs.stop()
    if keep:
        print(f"files kept in {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
