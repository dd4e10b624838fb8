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

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    WhoamiResponse,
)

from bot.device_files import CREDENTIALS, DeviceFileError, DeviceFiles
from bot.device_files import secure_dir as secure_dir  # used by bot/app.py

log = logging.getLogger(__name__)


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
