"""A throwaway local PostgreSQL server for tests and benchmarks.

``DevPostgres`` makes a cluster with the machine's own ``initdb`` in a temporary directory
of its own, starts it with ``pg_ctl`` listening only on a Unix socket in that directory
(no TCP port at all), and removes everything on ``stop()``. PostgreSQL refuses to run as
root: when this process is root, the server runs as the ``postgres`` system user, which
owns the directory.

    pg = DevPostgres.find()   # None when no PostgreSQL server binaries are installed
    pg.start()
    dsn = pg.create_database("referrals")   # postgresql://postgres@/referrals?host=...
    ...
    pg.stop()

`durable=False` (the tests) turns off fsync; the benchmark keeps it on, as a real server
would, so that its figures compare with SQLite's `synchronous=FULL`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Final

__all__ = ["DevPostgres", "DevPostgresError", "find_binaries"]

SUPERUSER: Final = "postgres"
START_TIMEOUT_S: Final = 60
_SEARCH: Final = ("/usr/local/bin", "/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")


class DevPostgresError(RuntimeError):
    pass


def find_binaries() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres`, or None."""
    candidates: list[Path] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    for pattern in _SEARCH:
        candidates.extend(sorted(Path("/").glob(pattern.lstrip("/")), reverse=True))
    for folder in candidates:
        if all((folder / b).is_file() for b in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


class DevPostgres:
    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable
        self.base: Path | None = None
        self._run_as: list[str] = []

    @classmethod
    def find(cls, *, durable: bool = False) -> DevPostgres | None:
        bin_dir = find_binaries()
        return None if bin_dir is None else cls(bin_dir, durable=durable)

    @property
    def socket_dir(self) -> Path:
        assert self.base is not None, "not started"
        return self.base

    def dsn(self, database: str = SUPERUSER, **params: str) -> str:
        query = "&".join([f"host={self.socket_dir}", *(f"{k}={v}" for k, v in params.items())])
        return f"postgresql://{SUPERUSER}@/{database}?{query}"

    def _cmd(self, *args: str | Path) -> list[str]:
        return [*self._run_as, *(str(a) for a in args)]

    def _check(self, *args: str | Path, timeout: float = START_TIMEOUT_S) -> str:
        result = subprocess.run(
            self._cmd(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise DevPostgresError(
                f"{Path(str(args[0])).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout)[-2000:]}"
            )
        return result.stdout

    def start(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="rb-pg-"))  # short: a socket path has a limit
        self.base = base
        if os.geteuid() == 0:
            # PostgreSQL will not run as root: run it as the postgres system user.
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise DevPostgresError(
                    "running as root and there is no 'postgres' user to run PostgreSQL as"
                ) from None
            os.chown(base, user.pw_uid, user.pw_gid)
            self._run_as = ["runuser", "-u", "postgres", "--"]
        os.chmod(base, 0o700)
        data = base / "data"
        self._check(
            self.bin_dir / "initdb",
            "-D",
            data,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = [
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{base}'",
            "-c max_connections=200",
            "-c shared_buffers=64MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._check(
            self.bin_dir / "pg_ctl",
            "-D",
            data,
            "-l",
            base / "server.log",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            " ".join(options),
            "start",
        )

    def psql_command(self, database: str = SUPERUSER) -> list[str]:
        psql = self.bin_dir / "psql"
        return self._cmd(psql, "-h", self.socket_dir, "-U", SUPERUSER, "-d", database)

    def sql(self, statement: str, database: str = SUPERUSER) -> str:
        """Run one statement as the superuser (psql), for setting up databases."""
        return self._check(
            *self.psql_command(database)[len(self._run_as) :],
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            statement,
        )

    def tool(self, name: str, *args: str | Path) -> str:
        """Run one of PostgreSQL's client tools (pg_dump, pg_restore …) as the server's
        user, against this server."""
        return self._check(self.bin_dir / name, "-h", self.socket_dir, "-U", SUPERUSER, *args)

    def create_database(self, name: str) -> str:
        self.sql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def stop(self) -> None:
        if self.base is None:
            return
        with contextlib.suppress(DevPostgresError, subprocess.TimeoutExpired):
            self._check(
                self.bin_dir / "pg_ctl", "-D", self.base / "data", "-m", "immediate", "stop"
            )
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def log_tail(self, max_chars: int = 4000) -> str:
        if self.base is None:
            return ""
        try:
            return (self.base / "server.log").read_text(errors="replace")[-max_chars:]
        except OSError:
            return ""
