"""Shared fixtures: one real Synapse for the whole test session, on loopback."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.devserver import DevSynapse
from bot.world import World, make_world

_names = itertools.count(1)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevSynapse]:
    hs = DevSynapse(tmp_path_factory.mktemp("synapse"))
    await hs.start()
    try:
        yield hs
    finally:
        await hs.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def world(synapse: DevSynapse, tmp_path: Path) -> AsyncIterator[World]:
    """A fresh bot account, config, advice-team worker and team room for one test."""
    n = next(_names)
    # Tests name their users "<role>-" + bot_user[1:5]: that must differ for every world
    # (with "bot{n}", bot1 and bot10 collided).
    w = await make_world(synapse, tmp_path, bot_name=f"b{n:03d}", worker_name=f"worker{n}")
    try:
        yield w
    finally:
        await w.close()
