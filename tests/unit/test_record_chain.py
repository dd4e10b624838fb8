"""The running record is tamper-evident: `referral-bot verify` finds a row edited by hand."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

from tests.forms import referral
from tests.unit.rig import cli, edit_by_hand, rig_at, sql, write_config

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")


@pytest.fixture
async def records(tmp_path: Path) -> Path:
    """Two referrals, each with a running record of three entries; returns the config."""
    config = write_config(tmp_path)
    async with rig_at(tmp_path / "data" / "referrals.db") as rig:
        await rig.send(referral(Child_name="First Child"))
        await rig.send(referral(Child_name="Second Child", Referral_type="contact"))
    return config


def db_of(config: Path) -> Path:
    return config.parent / "data" / "referrals.db"


async def test_an_untouched_database_verifies(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("verify", "-c", records) == 0
    out = capsys.readouterr().out
    assert "2 referral(s), 6 running-record entries: every chain intact" in out
    # Every entry is chained to the one before it, per referral.
    rows = sql(
        db_of(records), "SELECT referral_id, prev_hash, hash FROM record_entries ORDER BY id"
    )
    for (ref_a, _, hash_a), (ref_b, prev_b, _) in itertools.pairwise(rows):
        if ref_a == ref_b:
            assert prev_b == hash_a
    assert next(r[1] for r in rows if r[0] == 1) == ""


def _sha256_chain_forgery(db_path: Path) -> str:
    """Change an entry and re-hash it the way someone without the key would have to."""
    [(prev, detail)] = sql(db_path, "SELECT prev_hash, detail FROM record_entries WHERE id = 2")
    forged = hashlib.sha256(f"{prev}forged{detail}".encode()).hexdigest()
    return (
        f"UPDATE record_entries SET actor = '@forger:example.org', hash = '{forged}' WHERE id = 2"  # noqa: S608
    )


EDITS = {
    "actor changed": (
        ["UPDATE record_entries SET actor = '@someone:example.org' WHERE id = 2"],
        "REF-2026-000001, running-record entry 2: its hash does not match",
    ),
    "time changed": (
        ["UPDATE record_entries SET at = '2026-11-24T09:00:00.000+00:00' WHERE id = 1"],
        "REF-2026-000001, running-record entry 1: its hash does not match",
    ),
    "kind changed": (
        ["UPDATE record_entries SET kind = 'ack_refused' WHERE id = 5"],
        "REF-2026-000002, running-record entry 5: its hash does not match",
    ),
    "entry deleted": (
        ["DELETE FROM record_entries WHERE id = 2"],
        "REF-2026-000001, running-record entry 3: it does not follow the entry before it",
    ),
    "detail copied from another referral": (
        [
            "UPDATE record_entries SET detail ="
            " (SELECT detail FROM record_entries WHERE id = 5) WHERE id = 2"
        ],
        "REF-2026-000001, running-record entry 2: its detail cannot be decrypted",
    ),
    "entry appended": (
        [
            "INSERT INTO record_entries (referral_id, at, actor, kind, detail, prev_hash, hash)"
            " SELECT referral_id, at, actor, 'decided', detail, hash, hash"
            " FROM record_entries WHERE id = 6"
        ],
        "REF-2026-000002, running-record entry 7: its hash does not match",
    ),
    "referral deleted, its record left": (
        ["DELETE FROM referrals WHERE id = 1"],
        "referral id 1, running-record entry 1: it belongs to no referral",
    ),
    "classification changed on the referral": (
        ["UPDATE referrals SET declared_type = 'contact', current_type = 'contact' WHERE id = 1"],
        "REF-2026-000001, running-record entry 1: the referral's event, declared type",
    ),
    "child key changed": (
        [
            "UPDATE referrals SET child_key = (SELECT child_key FROM referrals WHERE id = 2)"
            " WHERE id = 1"
        ],
        "REF-2026-000001: child_key does not match the child's details",
    ),
}


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
async def test_an_edit_by_hand_is_reported_with_its_referral_and_entry(
    records: Path, capsys: pytest.CaptureFixture[str], edit: str
) -> None:
    statements, expected = EDITS[edit]
    edit_by_hand(db_of(records), *statements)
    assert await cli("verify", "-c", records) == 1
    err = capsys.readouterr().err
    assert f"BROKEN: {expected}" in err
    assert "1 referral(s) with a broken record" in err


async def test_rehashing_without_the_key_does_not_hide_an_edit(
    records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_by_hand(db_of(records), _sha256_chain_forgery(db_of(records)))
    assert await cli("verify", "-c", records) == 1
    assert "REF-2026-000001, running-record entry 2" in capsys.readouterr().err


async def test_the_guard_still_refuses_ordinary_edits(records: Path) -> None:
    with pytest.raises(Exception, match="append-only"):
        sql(db_of(records), "UPDATE record_entries SET kind = 'forged'")


async def test_verify_with_the_wrong_key_says_so(
    tmp_path: Path, records: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "secrets" / "database-key").write_text("a-different-key-" + "z" * 30)
    assert await cli("verify", "-c", records) == 2
    assert "does not decrypt" in capsys.readouterr().err
