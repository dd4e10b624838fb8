"""The checkpoint file itself: one signed JSON line per checkpoint, appended (O_APPEND,
flock, fsync) to a file outside `data_dir`. What a line holds is explained in
bot/checkpoints.py."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.config import ConfigError
from storage.keyring import Keyring

log = logging.getLogger(__name__)

# The database remembers the last checkpoint written, so a file cut short shows.
LAST_KEY = "checkpoint_last"
ZERO = "0" * 64


def xor_hex(a: str, b: bytes) -> str:
    return (int(a, 16) ^ int.from_bytes(b, "big")).to_bytes(32, "big").hex()


def canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


@dataclass
class Line:
    """One checkpoint, as written to (and read back from) the file."""

    n: int
    at: str
    kind: str  # base | update | purge | rekey
    referrals: int
    entries: int
    last_entry: int
    digest: str
    key: str
    prev: str
    changed: list[list[Any]] = field(default_factory=list)  # [ref, entries, leaf hex]
    gone: list[str] = field(default_factory=list)
    note: str = ""
    mac: str = ""

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "n": self.n,
            "at": self.at,
            "kind": self.kind,
            "referrals": self.referrals,
            "entries": self.entries,
            "last_entry": self.last_entry,
            "digest": self.digest,
            "key": self.key,
            "prev": self.prev,
            "changed": self.changed,
            "gone": self.gone,
        }
        if self.note:
            data["note"] = self.note
        return data

    def seal(self, keyring: Keyring) -> str:
        self.mac = keyring.checkpoint_mac(canonical(self.body()))
        return canonical({**self.body(), "mac": self.mac}) + "\n"

    @classmethod
    def parse(cls, text: str) -> Line:
        """Raises ValueError if the text is not a checkpoint line."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        try:
            line = cls(
                n=int(data["n"]),
                at=str(data["at"]),
                kind=str(data["kind"]),
                referrals=int(data["referrals"]),
                entries=int(data["entries"]),
                last_entry=int(data["last_entry"]),
                digest=str(data["digest"]),
                key=str(data["key"]),
                prev=str(data["prev"]),
                changed=[[str(c[0]), int(c[1]), str(c[2])] for c in data["changed"]],
                gone=[str(g) for g in data["gone"]],
                note=str(data.get("note", "")),
                mac=str(data["mac"]),
            )
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"missing or wrong field: {exc}") from None
        return line

    def intact(self, keyring: Keyring) -> bool:
        return keyring.checkpoint_mac(canonical(self.body())) == self.mac

    @property
    def when(self) -> str:
        return f"checkpoint {self.n} at {self.at}"


# -- the file ------------------------------------------------------------------------------


class CheckpointFile:
    """The append-only file. Blocking calls: the bot runs them in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def locked(self, *, wait: bool = True) -> Iterator[int]:
        """The file opened for appending (created 0600) and locked against other writers
        (a `purge` beside the running bot). `wait=False`: BlockingIOError if locked."""
        created = not self.path.exists()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.fchmod(fd, 0o600)
            if created:
                fsync_dir(self.path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def size(fd: int) -> int:
        return os.fstat(fd).st_size

    @staticmethod
    def last_text(fd: int) -> str | None:
        """The last line of the file, or None if it is empty."""
        end = os.fstat(fd).st_size
        if end == 0:
            return None
        chunks: list[bytes] = []
        pos = end
        trailing = True  # skipping the newline(s) that end the file
        while pos > 0:
            step = min(64 * 1024, pos)
            pos -= step
            chunk = os.pread(fd, step, pos)
            if trailing:
                chunk = chunk.rstrip(b"\n")
                trailing = not chunk
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                chunks.append(chunk[cut + 1 :])
                break
            chunks.append(chunk)
        return b"".join(reversed(chunks)).decode("utf-8", "replace")

    @staticmethod
    def append(fd: int, text: str) -> int:
        """Write one line whole and fsync it; the file's new size."""
        data = text.encode("utf-8")
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to the checkpoint file ({written} of {len(data)})")
        os.fsync(fd)
        return os.fstat(fd).st_size

    def read_lines(self) -> list[str]:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f if line.strip()]


def check_appendable(path: Path) -> None:
    """ConfigError if the checkpoint file cannot be created or appended to."""
    try:
        with CheckpointFile(path).locked(wait=False):
            pass
    except BlockingIOError:
        pass  # `referral-bot purge` is adding a line
    except OSError as exc:
        raise ConfigError(
            [f"integrity.checkpoint_file: cannot open {path} for appending: {exc.strerror}"]
        ) from None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- computing a checkpoint ----------------------------------------------------------------
