"""A decision's outcome is stored by its key (`early-help`), read back as an `Outcome`, and
shown by its text; decisions stored as text before migration 13 read back the same, and
their hash-chained running-record entries are left exactly as they were."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from schemas.domain import Outcome
from storage.migrations import MIGRATIONS
from tests.engines import on_postgres
from tests.forms import referral
from tests.unit.harness import NURSE, TEAM_ROOM, WORKER, Harness
from tests.unit.rig import cli, sql, write_config

pytestmark = pytest.mark.usefixtures("engine")

# The schema a database had before the outcome was stored by key (the step before 13).
BEFORE_KEYS = max(version for version, _ in MIGRATIONS if version < 13)


async def decided(h: Harness, outcome: Outcome) -> str:
    """A new referral, claimed and decided by the worker with `outcome`; its reference."""
    event_id = await h.send(NURSE, referral())
    found = re.search(r"REF-\d{4}-\d{6}", h.replies_to(event_id)[0].body)
    assert found
    ref = found.group()
    await h.send(WORKER, f"!claim {ref}", room=TEAM_ROOM)
    e = await h.send(WORKER, f"!decide {ref} {outcome.key} Reason given.", room=TEAM_ROOM)
    # A strategy discussion also calls a meeting: a second reply.
    assert f"{ref} decided: {outcome}." in h.replies_to(e)[0].body
    return ref


async def stored_outcome(h: Harness, ref: str) -> Outcome | None:
    async with h.store.snapshot() as tx:
        r = await tx.referral_by_ref(ref)
    assert r is not None
    return r.outcome


async def shown(h: Harness, ref: str) -> str:
    return h.reply(await h.send(WORKER, f"!show {ref}", room=TEAM_ROOM))


async def test_a_new_decision_is_stored_by_key_and_shown_by_its_text(tmp_path: Path) -> None:
    db = tmp_path / "data" / "referrals.db"
    h = await Harness.open(db)
    try:
        ref = await decided(h, Outcome.EARLY_HELP)
        assert sql(db, "SELECT outcome FROM referrals WHERE ref = ?", ref) == [("early-help",)]
        assert await stored_outcome(h, ref) is Outcome.EARLY_HELP
        assert "early help (by @worker:example.org)" in await shown(h, ref)
    finally:
        await h.close()

    out = tmp_path / "export"
    assert await cli("export", ref, "-c", write_config(tmp_path), "-o", out) == 0
    assert "outcome: early help" in (out / f"{ref}.md").read_text(encoding="utf-8")
    assert json.loads((out / f"{ref}.json").read_text(encoding="utf-8"))["outcome"] == "early help"


async def test_decisions_stored_as_text_upgrade_to_keys_and_read_back_the_same(
    tmp_path: Path,
) -> None:
    db = tmp_path / "referrals.db"
    h = await Harness.open(db)
    try:
        refs = {outcome: await decided(h, outcome) for outcome in Outcome}
    finally:
        await h.close()
    # As the bot before migration 13 left them: the display text in the column.
    for outcome, ref in refs.items():
        sql(db, "UPDATE referrals SET outcome = ? WHERE ref = ?", outcome.value, ref)
    if on_postgres():
        sql(db, "DELETE FROM schema_version WHERE version > ?", BEFORE_KEYS)
        sql(db, "DROP FUNCTION referralbot_fence()")
    else:
        sql(db, f"PRAGMA user_version = {BEFORE_KEYS:d}")
    # And what the steps after 13 made (step 14), so that they can run again.
    sql(db, "DROP TABLE device_files")
    sql(db, "DROP TABLE leader")
    record = sql(db, "SELECT * FROM record_entries ORDER BY id")
    assert {str(text) for (text,) in sql(db, "SELECT outcome FROM referrals")} == {
        o.value for o in Outcome
    }

    h = await Harness.open(db)  # upgrades
    try:
        assert sql(db, "SELECT ref, outcome FROM referrals ORDER BY ref") == sorted(
            (ref, outcome.key) for outcome, ref in refs.items()
        )
        for outcome, ref in refs.items():
            assert await stored_outcome(h, ref) is outcome
        # The chained history was not rewritten: same rows, same bytes.
        assert sql(db, "SELECT * FROM record_entries ORDER BY id") == record
        # And it still reads as it was written: the decision's text, in the chronology too.
        ref = refs[Outcome.NFA]
        text = await shown(h, ref)
        assert "no further action, with advice/signposting (by @worker:example.org)" in text
        chronology = h.reply(await h.send(WORKER, f"!chronology {ref}", room=TEAM_ROOM))
        assert "outcome: no further action, with advice/signposting" in chronology
    finally:
        await h.close()
