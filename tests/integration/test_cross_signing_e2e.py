"""The bot's cross-signing identity, as other users see it on a real Synapse.

The chain master key → self-signing key → the bot's device is checked with Synapse's own
signature library (signedjson), not with the bot's code, and, where Node.js is installed,
by Element's own crypto library (matrix-sdk-crypto as wasm, tests/interop/).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from bot.cross_signing import KEY_FILE, Outcome
from bot.world import World
from tests.integration.live import running

pytestmark = pytest.mark.integration

INTEROP = Path(__file__).resolve().parents[1] / "interop"


@pytest.fixture(scope="session")
def element_crypto() -> Path:
    """tests/interop/check_devices.mjs, its pinned npm dependency installed."""
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        pytest.skip("Node.js and npm are needed to check with Element's crypto library")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=INTEROP,
        check=True,
        timeout=300,
    )
    return INTEROP / "check_devices.mjs"


async def keys_query(world: World, access_token: str, user_id: str) -> dict[str, Any]:
    """POST /keys/query with a user's token: what that user's client is told of `user_id`."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{world.hs.url}/_matrix/client/v3/keys/query",
            json={"device_keys": {user_id: []}},
            headers={"Authorization": f"Bearer {access_token}"},
        ) as resp,
    ):
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data


async def seen_by_worker(world: World) -> dict[str, Any]:
    return await keys_query(world, world.worker.client.access_token, world.bot_user)


def _verify_key(public: str) -> Any:
    return decode_verify_key_bytes(f"ed25519:{public}", base64.b64decode(public + "=="))


def _only_key(obj: dict[str, Any], usage: str) -> str:
    assert obj["usage"] == [usage]
    ((key_id, public),) = obj["keys"].items()
    assert key_id == f"ed25519:{public}"
    return str(public)


@dataclass(frozen=True)
class Chain:
    master: str
    self_signing: str


def verified_chain(data: dict[str, Any], user_id: str, device_id: str) -> Chain:
    """Raise unless master → self-signing → device is a valid chain of signatures."""
    master_obj = data["master_keys"][user_id]
    ssk_obj = data["self_signing_keys"][user_id]
    device = data["device_keys"][user_id][device_id]
    master = _only_key(master_obj, "master")
    ssk = _only_key(ssk_obj, "self_signing")
    assert master_obj["user_id"] == ssk_obj["user_id"] == device["user_id"] == user_id

    verify_signed_json(ssk_obj, user_id, _verify_key(master))  # self-signing by master
    verify_signed_json(device, user_id, _verify_key(ssk))  # device by self-signing
    verify_signed_json(device, user_id, device_key(device))  # the device's own signature
    return Chain(master, ssk)


def device_key(device: dict[str, Any]) -> Any:
    key_id = f"ed25519:{device['device_id']}"
    return decode_verify_key_bytes(key_id, base64.b64decode(device["keys"][key_id] + "=="))


async def test_bot_device_is_cross_signed_and_identity_survives_restart(world: World) -> None:
    async with running(world) as app:
        assert app.client is not None
        device_id = app.client.device_id
        assert app.cross_signing is Outcome.CREATED
        # The device also signs the master key, as Element's devices do; Synapse shows
        # that signature to the account's owner only.
        own = await keys_query(world, app.client.access_token, world.bot_user)
        own_device = own["device_keys"][world.bot_user][device_id]
        master = own["master_keys"][world.bot_user]
        verify_signed_json(master, world.bot_user, device_key(own_device))
    first = verified_chain(await seen_by_worker(world), world.bot_user, device_id)

    key_file = world.config.storage.data_dir / KEY_FILE
    stored = key_file.read_bytes()
    assert first.master.encode() in stored  # the public half; the private half is sealed
    async with running(world) as app:
        assert app.client is not None and app.client.device_id == device_id
        assert app.cross_signing is Outcome.UNCHANGED
    again = verified_chain(await seen_by_worker(world), world.bot_user, device_id)
    assert again == first, "the identity must survive a restart"
    assert key_file.read_bytes() == stored


async def test_lost_data_dir_gets_a_new_identity_and_stale_copy_does_not_overwrite_it(
    world: World,
) -> None:
    """A new device (data directory lost) replaces the identity through password auth;
    an old data directory started later without the password leaves the new one alone."""
    data_dir = world.config.storage.data_dir
    async with running(world) as app:
        assert app.client is not None
        old_device = app.client.device_id
    old = verified_chain(await seen_by_worker(world), world.bot_user, old_device)
    shutil.move(data_dir, data_dir.with_name("data-old"))

    async with running(world) as app:  # first start again: logs in with the password
        assert app.client is not None
        new_device = app.client.device_id
        assert new_device != old_device
        assert app.cross_signing is Outcome.CREATED
    data = await seen_by_worker(world)
    new = verified_chain(data, world.bot_user, new_device)
    assert new.master != old.master
    with pytest.raises(SignatureVerifyException):
        verified_chain(data, world.bot_user, old_device)  # signed by the replaced identity

    # The old copy comes back, and the password is no longer configured.
    (world.base / "secrets" / "bot-password").unlink()
    shutil.move(data_dir, data_dir.with_name("data-new"))
    shutil.move(data_dir.with_name("data-old"), data_dir)
    async with running(world) as app:  # starts and syncs all the same
        assert app.client is not None and app.client.device_id == old_device
        assert app.cross_signing is Outcome.UNAVAILABLE
    data = await seen_by_worker(world)
    assert verified_chain(data, world.bot_user, new_device) == new


async def test_elements_crypto_library_sees_the_bot_device_as_cross_signed(
    world: World, element_crypto: Path
) -> None:
    """What Element decides: matrix-sdk-crypto fetches the keys and checks the signatures."""
    worker = world.worker
    async with running(world) as app:
        assert app.client is not None
        bot_device = f"{world.bot_user}:{app.client.device_id}"
        worker_device = f"{worker.user_id}:{worker.client.device_id}"
        node = await asyncio.create_subprocess_exec(
            "node",
            str(element_crypto),
            world.hs.url,
            worker.client.access_token,
            worker.user_id,
            bot_device,
            worker_device,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, err.decode(errors="replace")
    seen = json.loads(out)
    assert seen[bot_device] == {"known": True, "cross_signed_by_owner": True}
    # Control: the worker's nio device has no cross-signing, and the library says so.
    assert seen[worker_device] == {"known": True, "cross_signed_by_owner": False}
