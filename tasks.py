#!/usr/bin/env python3
"""The project's two commands, needing nothing but Python 3.11+:

    python3 tasks.py demo [--keep]   # throwaway Synapse + bot + demo users, one referral end to end
    python3 tasks.py test [pytest args]   # ruff, mypy and the whole pytest suite

Both create `.venv` beside this file and install the project into it when needed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"


def _run(*cmd: str | Path, timeout: float | None = None) -> None:
    try:
        result = subprocess.run([str(c) for c in cmd], cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"timed out after {timeout:.0f} s: {' '.join(map(str, cmd))}") from None
    if result.returncode != 0:
        raise SystemExit(result.returncode)


def ensure_venv(extra: str) -> None:
    if sys.version_info < (3, 11):
        raise SystemExit("referral-bot needs Python 3.11 or newer")
    if not (BIN / "python").exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extra}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    print(f"installing referral-bot[{extra}] into {VENV} ...", flush=True)
    _run(
        BIN / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-e",
        f".[{extra}]",
    )
    stamp.write_text(digest)


def postgres_note() -> str | None:
    """Why the PostgreSQL half of the storage tests will be skipped, or None."""
    sys.path.insert(0, str(ROOT))
    from bot.devpostgres import find_binaries  # stdlib only

    if find_binaries() is not None:
        return None
    return (
        "NOTE: no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: the "
        "PostgreSQL half of the storage tests is SKIPPED; only SQLite is tested."
    )


def test(args: list[str]) -> None:
    ensure_venv("test")
    _run(BIN / "ruff", "check", ".")
    _run(BIN / "mypy")
    note = postgres_note()
    if note:
        print(note, flush=True)
    # A hung test (or a thread left running at exit) must fail the run, not stall CI.
    _run(BIN / "python", "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args, timeout=1500)
    if note:
        print(note, flush=True)


def demo(args: list[str]) -> None:
    ensure_venv("demo")
    os.execv(str(BIN / "referral-bot"), [str(BIN / "referral-bot"), "demo", *args])


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in {"test", "demo"}:
        raise SystemExit(__doc__)
    {"test": test, "demo": demo}[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
