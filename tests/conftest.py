"""Shared fixtures: one real Synapse for the whole test session, on loopback; and the
Hypothesis profiles of the property tests.

Property tests take their number of examples from the profile: `ci` (the default, what
`python3 tasks.py test` and CI run) keeps the whole suite quick; `HYPOTHESIS_PROFILE=thorough`
runs twenty times as many (minutes; for changes to parsing, intake or the fuzzed paths).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings

from bot.devserver import DevSynapse
from bot.world import World, make_world

# No deadline: the fuzzed paths run the real store, whose fsyncs vary with the machine's load.
settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
    w = await make_world(synapse, tmp_path, bot_name=f"b{n:03d}-bot", worker_name=f"worker{n}")
    try:
        yield w
    finally:
        await w.close()
