"""Login and the encrypted E2EE store: one device for the bot's whole life.

The first start logs in with the password and keeps the access token and device ID next
to the E2EE store (files in data_dir, or sealed rows in PostgreSQL: bot/device_files.py);
every later start reuses them. The bot never logs out: logging out
deletes the device and with it every key the bot holds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    WhoamiResponse,
)
from nio.crypto import OlmDevice, TrustState
from nio.store import SqliteStore

from bot.device_files import (
    CREDENTIALS,
    DeviceFileError,
    DeviceFiles,
    secure_dir,
)

log = logging.getLogger(__name__)

__all__ = ["LoginFailed", "TrustCachingStore", "open_client", "secure_dir"]


class TrustCachingStore(SqliteStore):  # type: ignore[misc]
    """matrix-nio's SqliteStore with device trust answered from memory.

    nio asks the store whether the sender's device is verified for every event it
    decrypts, and about every device each time it shares a room key; the SqliteStore
    answers each question with two SQL queries through peewee (about 5 ms each here, the
    largest cost in the bot's own process under load). Trust only changes through the
    methods below, and device rows only through `save_device_keys`, so the answer is kept
    in memory and forgotten whenever either happens.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trust: dict[tuple[str, str], TrustState] = {}

    def _state(self, device: OlmDevice) -> TrustState:
        key = (device.user_id, device.id)
        state = self._trust.get(key)
        if state is None:
            if super().is_device_verified(device):
                state = TrustState.verified
            elif super().is_device_blacklisted(device):
                state = TrustState.blacklisted
            elif super().is_device_ignored(device):
                state = TrustState.ignored
            else:
                state = TrustState.unset
            self._trust[key] = state
        return state

    def is_device_verified(self, device: OlmDevice) -> bool:
        return bool(self._state(device) == TrustState.verified)

    def is_device_blacklisted(self, device: OlmDevice) -> bool:
        return bool(self._state(device) == TrustState.blacklisted)

    def is_device_ignored(self, device: OlmDevice) -> bool:
        return bool(self._state(device) == TrustState.ignored)

    def _changed(self, result: Any) -> Any:
        self._trust.clear()
        return result

    def verify_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().verify_device(device)))

    def unverify_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().unverify_device(device)))

    def blacklist_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().blacklist_device(device)))

    def unblacklist_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().unblacklist_device(device)))

    def ignore_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().ignore_device(device)))

    def unignore_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().unignore_device(device)))

    def ignore_devices(self, devices: list[OlmDevice]) -> None:
        self._changed(super().ignore_devices(devices))

    def save_device_keys(self, device_keys: Any) -> None:
        self._changed(super().save_device_keys(device_keys))


class LoginFailed(Exception):
    pass


@dataclass(frozen=True)
class Credentials:
    user_id: str
    device_id: str
    access_token: str


def parse_credentials(text: str) -> Credentials:
    data = json.loads(text)
    return Credentials(data["user_id"], data["device_id"], data["access_token"])


async def load_credentials(files: DeviceFiles) -> Credentials | None:
    try:
        text = await files.read(CREDENTIALS)
        return None if text is None else parse_credentials(text)
    except DeviceFileError as exc:
        raise LoginFailed(str(exc)) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise LoginFailed(f"{files.describe(CREDENTIALS)} is damaged: {exc}") from None


async def open_client(
    *,
    homeserver: str,
    user_id: str,
    password: str | None,
    device_name: str,
    files: DeviceFiles,
    store_key: str,
) -> AsyncClient:
    """Return a logged-in client whose E2EE store is loaded and whose keys are uploaded.

    `password` is only needed on the first start (when no credentials are stored).
    `files` says where the credentials and the E2EE store are kept (bot/device_files.py).
    """
    store, store_path = files.crypto_store()
    where = files.describe(CREDENTIALS)
    config = AsyncClientConfig(
        store=store,
        encryption_enabled=True,
        store_sync_tokens=False,  # we save the token ourselves, after handling the batch
        pickle_key=store_key,
        # Retried inside matrix-nio, forever: M_LIMIT_EXCEEDED / HTTP 429 after the
        # homeserver's retry_after_ms (5 s if it gives none), and connection errors and
        # timeouts with a backoff of 0.1 s doubling up to 10 s, so the bot is back within
        # 10 s of the homeserver.
        max_limit_exceeded=None,
        max_timeouts=None,
        max_timeout_retry_wait_time=10,
    )
    client = AsyncClient(homeserver, user_id, store_path=store_path, config=config)

    try:
        creds = await load_credentials(files)
    except LoginFailed:
        await client.close()
        raise
    if creds is not None:
        if creds.user_id != user_id:
            await client.close()
            raise LoginFailed(
                f"{where} belongs to {creds.user_id}, not {user_id}; use another data_dir "
                "(or database)"
            )
        client.restore_login(creds.user_id, creds.device_id, creds.access_token)
        who = await client.whoami()
        if not isinstance(who, WhoamiResponse):
            await client.close()
            raise LoginFailed(
                f"the stored access token was refused ({getattr(who, 'status_code', who)}). "
                "If the device was deleted on purpose, move the data directory aside (on "
                "PostgreSQL: use a new database or schema) to log in as a new device."
            )
        log.info("restored session: device=%s", creds.device_id)
    else:
        if not password:
            await client.close()
            raise LoginFailed("no stored session and no password to log in with")
        resp = await client.login(password, device_name=device_name)
        if not isinstance(resp, LoginResponse):
            await client.close()
            raise LoginFailed(f"login refused: {getattr(resp, 'message', resp)}")
        await files.write(
            CREDENTIALS,
            json.dumps(
                {
                    "user_id": resp.user_id,
                    "device_id": resp.device_id,
                    "access_token": resp.access_token,
                }
            ),
        )
        log.info("logged in as a new device: device=%s", resp.device_id)

    files.after_login()
    if client.should_upload_keys:
        await client.keys_upload()
    return client


def close_crypto_store(client: AsyncClient) -> None:
    """Close the E2EE store's own database connection (PostgreSQL), if it has one."""
    store = getattr(client, "store", None)
    close = getattr(store, "close", None)
    if callable(close):
        close()
