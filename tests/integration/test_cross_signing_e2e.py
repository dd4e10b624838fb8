"""The bot's cross-signing identity, as other users see it on a real Synapse.

The chain is checked here the way a client checks it, with Synapse's own signature library
(signedjson), not with the bot's code: master key → self-signing key → the bot's device.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from bot.app import BotApp
from bot.cross_signing import KEY_FILE, Outcome
from bot.world import World

pytestmark = pytest.mark.integration


@asynccontextmanager
async def running(world: World) -> AsyncIterator[BotApp]:
    app = BotApp(world.config)
    await app.start()
    try:
        await app.wait_ready()
        yield app
    finally:
        await app.shutdown()


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
