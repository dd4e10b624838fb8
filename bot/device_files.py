"""Where the bot's device is kept: its credentials, cross-signing keys and E2EE store.

- SQLite (the default): files in `data_dir`, as always: `credentials.json`,
  `cross_signing.json` (0600) and matrix-nio's SQLite store in `data_dir/e2ee/`.
- PostgreSQL (`[storage] database`): nothing on local disk. The two files are rows of
  `device_files` sealed with AES-256-GCM under a key derived from `storage.store_key`
  (the access token is never stored in clear; each row is bound to its name), and nio's
  store is in the same database (bot/crypto_store_pg.py). A bot started on any machine
  with the same config is the same device with the same cross-signing identity.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from storage.engine import Postgres, Store

CREDENTIALS = "credentials.json"
CROSS_SIGNING = "cross_signing.json"
E2EE_DIR = "e2ee"
_SEALED_VERSION = b"\x01"


class DeviceFileError(Exception):
    """A stored device file exists but cannot be used; it is never overwritten by the bot."""


class DeviceFiles(ABC):
    """Where the device's files are kept. Text in, text out; the place decides how."""

    @abstractmethod
    async def read(self, name: str) -> str | None:
        """The file's text, None if there is none; DeviceFileError if it cannot be used."""

    @abstractmethod
    async def write(self, name: str, text: str) -> None:
        """Replace the file, durably (fsynced file, or a committed row)."""

    @abstractmethod
    def describe(self, name: str) -> str:
        """Where `name` is, for messages."""

    @abstractmethod
    def crypto_store(self) -> tuple[Callable[..., Any], str]:
        """nio's store class (or factory) and its `store_path`."""

    def after_login(self) -> None:  # noqa: B027 - optional hook
        """Called once the client's store is open."""


def secure_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Owner-only, fsynced, replaced atomically: never a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class DataDirFiles(DeviceFiles):
    """SQLite installs: files in `data_dir`, the E2EE store in `data_dir/e2ee/`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def read(self, name: str) -> str | None:
        path = self.data_dir / name
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise DeviceFileError(f"{path} cannot be read: {exc}") from exc

    async def write(self, name: str, text: str) -> None:
        write_private(secure_dir(self.data_dir) / name, text)

    def describe(self, name: str) -> str:
        return str(self.data_dir / name)

    def crypto_store(self) -> tuple[Callable[..., Any], str]:
        from bot.trust_cache import TrustCachingStore

        return TrustCachingStore, str(secure_dir(self.data_dir / E2EE_DIR))

    def after_login(self) -> None:
        for f in (self.data_dir / E2EE_DIR).iterdir():
            os.chmod(f, 0o600)


def _cipher(store_key: str) -> AESGCM:
    return AESGCM(
        HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"referral-bot/v1",
            info=b"device-files",
        ).derive(store_key.encode("utf-8"))
    )


def seal(store_key: str, name: str, text: str) -> bytes:
    nonce = os.urandom(12)
    box = _cipher(store_key).encrypt(nonce, text.encode("utf-8"), name.encode("utf-8"))
    return _SEALED_VERSION + nonce + box


def unseal(store_key: str, name: str, content: bytes) -> str:
    """The text of a sealed row; InvalidTag for another key, another name or damage."""
    if content[:1] != _SEALED_VERSION or len(content) < 1 + 12 + 16:
        raise ValueError("not a sealed device file")
    plain = _cipher(store_key).decrypt(content[1:13], content[13:], name.encode("utf-8"))
    return plain.decode("utf-8")


class DatabaseFiles(DeviceFiles):
    """PostgreSQL installs: sealed rows of `device_files`, nio's store in the database.

    `data_dir` is only looked at to refuse a device kept there by an older version (a new
    login would make a second device and lose its keys)."""

    def __init__(self, store: Store, store_key: str, data_dir: Path) -> None:
        assert isinstance(store.where, Postgres)
        self.store = store
        self._key = store_key
        self.data_dir = data_dir

    async def read(self, name: str) -> str | None:
        async with self.store.snapshot() as tx:
            content = await tx.get_device_file(name)
        if content is None:
            if name == CREDENTIALS and (self.data_dir / CREDENTIALS).exists():
                raise DeviceFileError(
                    f"the database has no device yet but {self.data_dir / CREDENTIALS} exists "
                    "(a bot that kept its device in data_dir): starting would log in as a new "
                    "device. Move data_dir aside to do that on purpose."
                )
            return None
        try:
            return unseal(self._key, name, content)
        except (InvalidTag, ValueError, UnicodeDecodeError) as exc:
            raise DeviceFileError(
                f"{self.describe(name)} cannot be decrypted with storage.store_key (changed key?)"
            ) from exc

    async def write(self, name: str, text: str) -> None:
        async with self.store.transaction() as tx:
            await tx.put_device_file(name, seal(self._key, name, text))

    def describe(self, name: str) -> str:
        return f"{name} in the database ({self.store.describe()}, table device_files)"

    def crypto_store(self) -> tuple[Callable[..., Any], str]:
        from bot.crypto_store_pg import crypto_store_factory

        assert isinstance(self.store.where, Postgres)
        # nio loads its store only with a store_path: any text; nothing is written there.
        return crypto_store_factory(self.store.where, self.store.epoch), "postgresql"


def device_files_for(store: Store, data_dir: Path, store_key: str) -> DeviceFiles:
    """Files in `data_dir` with SQLite, rows in the database with PostgreSQL."""
    if isinstance(store.where, Postgres):
        return DatabaseFiles(store, store_key, data_dir)
    return DataDirFiles(data_dir)
