"""DevSynapse: start, register, log in, restart, log in again."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from bot.devserver import DevSynapse

pytestmark = pytest.mark.integration


async def _login(session: aiohttp.ClientSession, url: str, user: str, password: str) -> str:
    payload = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        "initial_device_display_name": "devserver test",
    }
    async with session.post(f"{url}/_matrix/client/v3/login", json=payload) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
    token: str = body["access_token"]
    return token


async def _whoami(session: aiohttp.ClientSession, url: str, token: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(f"{url}/_matrix/client/v3/account/whoami", headers=headers) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
    user_id: str = body["user_id"]
    return user_id


@pytest.mark.asyncio(loop_scope="session")
async def test_devserver_register_login_restart() -> None:
    async with DevSynapse() as hs:
        base_dir = hs.base_dir
        assert hs.url.startswith("http://127.0.0.1:")
        assert hs.last_start_seconds is not None
        port = hs.port

        alice = await hs.register("alice", "alice-password")
        bob = await hs.register("bob", "bob-password", admin=True)
        assert alice == "@alice:localhost"
        assert bob == "@bob:localhost"
        # Registering again is not an error.
        assert await hs.register("alice", "alice-password") == alice

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            token = await _login(session, hs.url, "alice", "alice-password")
            assert await _whoami(session, hs.url, token) == alice

            # Registration is closed to the public.
            async with session.post(
                f"{hs.url}/_matrix/client/v3/register",
                json={"username": "mallory", "password": "x" * 12},
            ) as resp:
                assert resp.status == 403

            await hs.stop()
            assert not hs.is_running
            await hs.start()
            assert hs.is_running
            assert hs.port == port

            # Same data: the old access token and the password both still work.
            assert await _whoami(session, hs.url, token) == alice
            token2 = await _login(session, hs.url, "alice", "alice-password")
            assert await _whoami(session, hs.url, token2) == alice
            assert (
                await _whoami(
                    session, hs.url, await _login(session, hs.url, "@bob:localhost", "bob-password")
                )
                == bob
            )

    assert not base_dir.exists(), "the owned temp dir is removed on exit"
