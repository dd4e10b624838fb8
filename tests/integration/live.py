"""What the integration tests share: a running bot, a practitioner's DM, the stored rows."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bot.app import BotApp
from bot.chat_user import ChatUser
from bot.maintenance import database_location
from bot.world import World
from tests.engines import sql


@asynccontextmanager
async def running(world: World) -> AsyncIterator[BotApp]:
    """The bot, in this process, from the world's config file, until the block ends."""
    app = BotApp(world.config)
    await app.start()
    try:
        await app.wait_ready()
        yield app
    finally:
        await app.shutdown()


def db_rows(world: World, query: str, *args: object) -> list[tuple[object, ...]]:
    """Rows as stored: what an auditor with the database (file) would see."""
    return sql(database_location(world.config), query, *args)


async def open_dm(world: World, name: str) -> tuple[ChatUser, str]:
    """A new practitioner with an encrypted DM that the bot has joined."""
    user = await world.add_user(name)
    room = await user.create_room(invite=[world.bot_user], encrypted=True)
    await user.wait_joined(room, world.bot_user)
    return user, room


def team_summaries(world: World) -> Counter[str]:
    """How many times each reference was announced in the advice-team room (a message can
    carry several summaries: see intake.team_summary_batch_seconds)."""
    return Counter(
        ref
        for r in world.worker.received
        if r.room_id == world.team_room and r.sender == world.bot_user
        for ref in re.findall(r"New .*?: (REF-\d{4}-\d{6})", r.body)
    )


async def client_api(world: World, token: str, method: str, path: str, **body: Any) -> Any:
    """One client-server API call with `token` (the bot's own, to look at its account)."""
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
        session.request(
            method, f"{world.hs.url}/_matrix/client/v3{path}", json=body or None
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


@dataclass(frozen=True)
class AccountView:
    """The bot's account as the homeserver shows it: which device the token is, every
    device of the account, and the published cross-signing master key."""

    device: str
    devices: frozenset[str]
    master_keys: Any
    # The whole /keys/query answer (device signatures), not compared.
    keys: Any = field(compare=False, repr=False, default=None)


async def account_view(world: World, token: str) -> AccountView:
    who = await client_api(world, token, "GET", "/account/whoami")
    devices = await client_api(world, token, "GET", "/devices")
    keys = await client_api(world, token, "POST", "/keys/query", device_keys={world.bot_user: []})
    return AccountView(
        str(who["device_id"]),
        frozenset(d["device_id"] for d in devices["devices"]),
        keys["master_keys"],
        keys,
    )
