"""Shared fixtures: one real Synapse and (when installed) one throwaway PostgreSQL for the
whole test session, on loopback / a private Unix socket; and the Hypothesis profiles of
the property tests.

Property tests take their number of examples from the profile: `ci` (the default, what
`python3 tasks.py test` and CI run) keeps the whole suite quick; `HYPOTHESIS_PROFILE=thorough`
runs twenty times as many (minutes; for changes to parsing, intake or the fuzzed paths).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings

from bot.devpostgres import DevPostgres
from bot.devserver import DevSynapse
from bot.world import World, make_world
from storage.engine import Postgres
from tests import engines

# No deadline: the fuzzed paths run the real store, whose fsyncs vary with the machine's load.
settings.register_profile("ci", max_examples=100, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_names = itertools.count(1)

NO_POSTGRES = (
    "PostgreSQL half skipped: no PostgreSQL server binaries (initdb, pg_ctl, postgres) "
    "found on PATH or in /usr/lib/postgresql/*/bin"
)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[DevPostgres]:
    """A throwaway PostgreSQL cluster for the session (fsync off), with one database."""
    pg = DevPostgres.find()
    if pg is None:
        pytest.skip(NO_POSTGRES)
    pg.start()
    try:
        pg.create_database(engines.DATABASE)
        yield pg
    finally:
        pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a storage test on both engines: `tests.engines.location(path)` gives the
    database for this run (the SQLite file, or a schema of its own on PostgreSQL)."""
    if request.param == "postgresql":
        engines.CURRENT = request.getfixturevalue("postgres_server")
    try:
        yield str(request.param)
    finally:
        engines.CURRENT = None


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def synapse(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevSynapse]:
    hs = DevSynapse(tmp_path_factory.mktemp("synapse"))
    await hs.start()
    try:
        yield hs
    finally:
        await hs.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def world(
    synapse: DevSynapse, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    """A fresh bot account, config, advice-team worker and team room for one test; on
    PostgreSQL when the test also takes the `engine` fixture and runs on PostgreSQL."""
    if "engine" in request.fixturenames:
        request.getfixturevalue("engine")
    n = next(_names)
    w = await make_world(synapse, tmp_path, bot_name=f"b{n:03d}-bot", worker_name=f"worker{n}")
    where = engines.location(tmp_path / "data" / "referrals.db")
    if isinstance(where, Postgres):
        w.configure(database=where.dsn)
    try:
        yield w
    finally:
        await w.close()
