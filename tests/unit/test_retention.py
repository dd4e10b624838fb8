"""Retention: `referral-bot purge` lists what is due (--dry-run) and removes it only with
--yes, running record included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.forms import referral
from tests.unit.rig import cli, file_bytes, opened, rig_at, sql, write_config

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")

RETENTION = """
[retention]
contact_years = 2
child_protection_years = 10
handled_inbox_days = 30
sent_outbox_days = 30
"""
NOW = datetime.now(UTC)


def years_ago(n: float) -> datetime:
    return NOW - timedelta(days=365.25 * n)


@pytest.fixture
async def aged(tmp_path: Path) -> Path:
    """Referrals of different ages and classes; some messages handled 40 days ago."""
    config = write_config(tmp_path, extra=RETENTION)
    async with rig_at(tmp_path / "data" / "referrals.db") as rig:
        rig.store.clock = lambda: NOW - timedelta(days=40)
        await rig.send(referral(Child_name="Old Contact", Referral_type="contact"), at=years_ago(3))
        await rig.send(referral(Child_name="Old Protection"), at=years_ago(11))
        await rig.send(referral(Child_name="Kept Protection"), at=years_ago(5))
        await rig.send("!help")
        rig.store.clock = lambda: NOW
        await rig.send(referral(Child_name="New Contact", Referral_type="contact"), at=years_ago(1))
        await rig.send("!help")
    return config


def counts(db_path: Path) -> dict[str, int]:
    tables = ("referrals", "record_entries", "outbox", "inbox", "purged_referrals")
    found: dict[str, int] = {}
    for t in tables:
        [(n,)] = sql(db_path, f"SELECT COUNT(*) FROM {t}")  # noqa: S608
        assert isinstance(n, int)
        found[t] = n
    return found


def refs(db_path: Path, cls: str) -> list[str]:
    return [
        str(r)
        for (r,) in sql(
            db_path, "SELECT ref FROM referrals WHERE current_type = ? ORDER BY id", cls
        )
    ]


@pytest.mark.parametrize("flags", [["--dry-run"], []], ids=["dry-run", "no flag"])
async def test_without_yes_it_only_lists(
    tmp_path: Path, aged: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    db_path = tmp_path / "data" / "referrals.db"
    [old_contact] = refs(db_path, "contact")[:1]
    old_protection = refs(db_path, "child protection referral")[0]
    before = counts(db_path)
    assert await cli("purge", "-c", aged, *flags) == 0
    out = capsys.readouterr().out
    assert "contacts 2 year(s) after receipt; child protection referrals 10 year(s)" in out
    assert "Would purge 2 referral(s), each with its running record and messages:" in out
    assert f"  {old_contact}  contact" in out
    assert f"  {old_protection}  child protection referral" in out
    assert (
        "Would purge 4 handled inbox row(s), 3 other sent message(s) and 0 referrer's kept"
        " details." in out
    )
    assert "Nothing was purged. Run again with --yes" in out
    assert "Protection" not in out and "Contact" not in out  # references only, no names
    assert counts(db_path) == before


async def test_yes_purges_the_referral_with_its_running_record(
    tmp_path: Path, aged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = tmp_path / "data" / "referrals.db"
    old_contact = refs(db_path, "contact")[0]
    old_protection = refs(db_path, "child protection referral")[0]
    gone_ids = [
        i
        for (i,) in sql(
            db_path, "SELECT id FROM referrals WHERE ref IN (?, ?)", old_contact, old_protection
        )
    ]
    gone_forms = [
        str(f)[5:45].encode()
        for (f,) in sql(
            db_path, "SELECT form FROM referrals WHERE ref IN (?, ?)", old_contact, old_protection
        )
    ]
    before = counts(db_path)

    assert await cli("purge", "-c", aged, "--yes") == 0
    out = capsys.readouterr().out
    assert "Purged 2 referral(s)" in out and "Purged 4 handled inbox row(s)" in out

    after = counts(db_path)
    assert after["referrals"] == before["referrals"] - 2
    assert after["record_entries"] == before["record_entries"] - 6
    assert after["outbox"] == before["outbox"] - 4 - 3
    assert after["inbox"] == before["inbox"] - 4
    for i in gone_ids:
        assert sql(db_path, "SELECT COUNT(*) FROM record_entries WHERE referral_id = ?", i) == [
            (0,)
        ]
    assert sorted(sql(db_path, "SELECT ref, record_class, rule FROM purged_referrals")) == sorted(
        [
            (old_contact, "contact", "retention.contact_years = 2"),
            (old_protection, "child protection referral", "retention.child_protection_years = 10"),
        ]
    )
    # The append-only guard is back, what is left still verifies, and the purged
    # ciphertext is gone from the files too.
    with pytest.raises(Exception, match="append-only"):
        sql(db_path, "DELETE FROM record_entries")
    assert await cli("verify", "-c", aged) == 0
    for data in file_bytes(tmp_path / "data").values():
        for form in gone_forms:
            assert form not in data
    # A second run finds nothing more.
    assert await cli("purge", "-c", aged, "--yes") == 0
    assert "Purged 0 referral(s)" in capsys.readouterr().out


async def test_purge_can_run_beside_the_bot(tmp_path: Path, aged: Path) -> None:
    async with opened(tmp_path / "data" / "referrals.db"):  # the running bot
        assert await cli("purge", "-c", aged, "--yes") == 0
    assert counts(tmp_path / "data" / "referrals.db")["purged_referrals"] == 2


async def test_classes_without_a_period_are_kept_for_ever(
    tmp_path: Path, aged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path)  # no [retention]: defaults
    assert await cli("purge", "-c", aged, "--yes") == 0
    out = capsys.readouterr().out
    assert "contacts kept for ever; child protection referrals kept for ever" in out
    assert counts(tmp_path / "data" / "referrals.db")["referrals"] == 4


async def test_kept_referrer_details_go_a_year_after_their_last_use(
    tmp_path: Path, aged: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db_path = tmp_path / "data" / "referrals.db"
    async with opened(db_path) as store:
        store.clock = lambda: NOW - timedelta(days=400)
        async with store.transaction() as tx:
            for who in ("@old:example.org", "@used:example.org"):
                await tx.save_referrer(who, {"Referrer_name": "Sam Referrer"})
        store.clock = lambda: NOW - timedelta(days=10)
        async with store.transaction() as tx:
            await tx.touch_referrer("@used:example.org")  # a referral sent with them
    assert await cli("purge", "-c", aged) == 0
    out = capsys.readouterr().out
    assert "referrers' kept details 365 day(s) after their last use" in out
    assert "and 1 referrer's kept details." in out
    assert await cli("purge", "-c", aged, "--yes") == 0
    assert sql(db_path, "SELECT user_id FROM saved_referrers") == [("@used:example.org",)]
