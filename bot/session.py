"""Login and the encrypted E2EE store: one device for the bot's whole life.

The first start logs in with the password and keeps the access token and device ID next
to the E2EE store; every later start reuses them. The bot never logs out: logging out
deletes the device and with it every key the bot holds.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    WhoamiResponse,
)
from nio.store import SqliteStore

log = logging.getLogger(__name__)


class LoginFailed(Exception):
    pass


@dataclass(frozen=True)
class Credentials:
    user_id: str
    device_id: str
    access_token: str


def secure_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_credentials(path: Path) -> Credentials | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Credentials(data["user_id"], data["device_id"], data["access_token"])


async def open_client(
    *,
    homeserver: str,
    user_id: str,
    password: str | None,
    device_name: str,
    data_dir: Path,
    store_key: str,
) -> AsyncClient:
    """Return a logged-in client whose E2EE store is loaded and whose keys are uploaded.

    `password` is only needed on the first start (when no credentials are stored).
    """
    secure_dir(data_dir)
    store_dir = secure_dir(data_dir / "e2ee")
    creds_path = data_dir / "credentials.json"
    config = AsyncClientConfig(
        store=SqliteStore,
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
    client = AsyncClient(homeserver, user_id, store_path=str(store_dir), config=config)

    creds = load_credentials(creds_path)
    if creds is not None:
        if creds.user_id != user_id:
            raise LoginFailed(
                f"{creds_path} belongs to {creds.user_id}, not {user_id}; use another data_dir"
            )
        client.restore_login(creds.user_id, creds.device_id, creds.access_token)
        who = await client.whoami()
        if not isinstance(who, WhoamiResponse):
            await client.close()
            raise LoginFailed(
                f"the stored access token was refused ({getattr(who, 'status_code', who)}). "
                "If the device was deleted on purpose, move the data directory aside to log in "
                "as a new device."
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
        _write_private(
            creds_path,
            json.dumps(
                {
                    "user_id": resp.user_id,
                    "device_id": resp.device_id,
                    "access_token": resp.access_token,
                }
            ),
        )
        log.info("logged in as a new device: device=%s", resp.device_id)

    for f in store_dir.iterdir():
        os.chmod(f, 0o600)
    if client.should_upload_keys:
        await client.keys_upload()
    return client
