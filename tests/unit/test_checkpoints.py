"""Checkpoints anchor the running records outside the database (issue 10, part 5): what
someone with the database file can do (lift the append-only triggers and delete the
newest entries or a whole referral, or put back an older copy) is reported by
`referral-bot verify`, naming the referral and the checkpoint it disagrees with."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.checkpoint_file import Line, check_appendable
from bot.checkpoints import Anchor
from bot.maintenance import purge
from schemas.config import ConfigError, load_config
from storage.keyring import Keyring
from tests.engines import on_postgres
from tests.forms import referral
from tests.keys import KEYRING
from tests.unit.rig import Rig, cli, edit_by_hand, rig_at, write_config

# Storage behaviour: every test here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.usefixtures("engine")


# Putting an older copy back is done here by copying the SQLite file; on PostgreSQL it
# would be a pg_restore of an older dump, which these unit tests do not stage.
OLDER_COPY_SQLITE_ONLY = "SQLite only: the older copy is put back as a database file"

INTEGRITY = '[integrity]\ncheckpoint_file = "anchor/checkpoints.jsonl"\n'


@dataclass
class Setup:
    config: Path
    db: Path
    anchor_file: Path
    backup: Path  # the database as it was at checkpoint 1


def _backup(db: Path, to: Path) -> None:
    """A consistent copy of the live database file, as a backup tool would take it."""
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


async def _checkpoint(rig: Rig, path: Path) -> Line:
    line = await Anchor(rig.store, path).checkpoint()
    assert line is not None
    return line


@pytest.fixture
async def anchored(tmp_path: Path, engine: str) -> Setup:
    """Four referrals (three running-record entries each) and three checkpoints: after
    the first two referrals, after the third, after the fourth."""
    config = write_config(tmp_path, extra=INTEGRITY)
    db = tmp_path / "data" / "referrals.db"
    path = tmp_path / "anchor" / "checkpoints.jsonl"
    backup = tmp_path / "backup.db"
    async with rig_at(db) as rig:
        await rig.send(referral(Child_name="First Child"))
        await rig.send(referral(Child_name="Second Child", Referral_type="contact"))
        first = await _checkpoint(rig, path)
        assert (first.kind, first.referrals, first.entries) == ("base", 2, 6)
        if not on_postgres():
            _backup(db, backup)
        await rig.send(referral(Child_name="Third Child"))
        second = await _checkpoint(rig, path)
        await rig.send(referral(Child_name="Fourth Child"))
        third = await _checkpoint(rig, path)
        # Nothing new: no line.
        assert await Anchor(rig.store, path).checkpoint() is None
    # Each later line lists only the referral whose record grew, and counts them all.
    assert [c[0] for c in second.changed] == ["REF-2026-000003"]
    assert (second.kind, second.referrals, second.entries) == ("update", 3, 9)
    assert (third.referrals, third.entries) == (4, 12)
    return Setup(config, db, path, backup)


async def _verify(setup: Setup, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = await cli("verify", "-c", setup.config)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _when(setup: Setup, line_number: int) -> str:
    line = Line.parse(setup.anchor_file.read_text().splitlines()[line_number - 1])
    return f"checkpoint file line {line_number} ({line.when})"


async def test_an_untouched_database_agrees_with_every_checkpoint(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await _verify(anchored, capsys)
    assert code == 0, out
    assert "every chain intact" in out
    assert "The database agrees with every checkpoint." in out
    assert "3 line(s); the latest is line 3, checkpoint 3" in out
    # The file: owner-only, one JSON object per line, each chained to the one before.
    assert stat.S_IMODE(os.stat(anchored.anchor_file).st_mode) == 0o600
    lines = [json.loads(t) for t in anchored.anchor_file.read_text().splitlines()]
    assert [line["n"] for line in lines] == [1, 2, 3]
    assert lines[1]["prev"] == lines[0]["mac"] and lines[2]["prev"] == lines[1]["mac"]
    # Nothing personal in it: references, counts and digests.
    text = anchored.anchor_file.read_text()
    assert "Child" not in text and "nurse" not in text


async def test_deleted_newest_entries_are_reported_with_the_referral(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_by_hand(
        anchored.db,
        "DELETE FROM record_entries WHERE id = (SELECT MAX(id) FROM record_entries"
        " WHERE referral_id = 1)",
    )
    code, out = await _verify(anchored, capsys)
    assert code == 1
    # The chain alone cannot see it: what is left is an unbroken chain.
    assert "every chain intact" in out
    assert (
        f"CHECKPOINT: REF-2026-000001: 2 running-record entries, but {_when(anchored, 1)} "
        "recorded 3: its newest entries were deleted"
    ) in out
    assert "REF-2026-000002" not in out


async def test_a_deleted_referral_is_reported(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_by_hand(
        anchored.db,
        "DELETE FROM outbox WHERE referral_id = 3",
        "DELETE FROM record_entries WHERE referral_id = 3",
        "DELETE FROM referrals WHERE id = 3",
    )
    code, out = await _verify(anchored, capsys)
    assert code == 1
    assert (
        f"CHECKPOINT: REF-2026-000003: not in the database, but {_when(anchored, 2)} "
        "recorded it with 3 running-record entries: the referral was deleted"
    ) in out


async def test_an_older_copy_of_the_database_is_reported(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    if on_postgres():
        pytest.skip(OLDER_COPY_SQLITE_ONLY)
    for suffix in ("-wal", "-shm"):
        anchored.db.with_name(anchored.db.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(anchored.backup, anchored.db)
    code, out = await _verify(anchored, capsys)
    assert code == 1
    assert "every chain intact" in out  # the old copy is consistent in itself
    assert (
        f"CHECKPOINT: the database is older than the latest checkpoint (file line 3, "
        f"{Line.parse(anchored.anchor_file.read_text().splitlines()[2]).when}): it holds 2 "
        "referrals and 6 running-record entries"
    ) in out
    assert f"REF-2026-000003: not in the database, but {_when(anchored, 2)}" in out
    assert f"REF-2026-000004: not in the database, but {_when(anchored, 3)}" in out


async def test_the_bot_started_on_an_older_copy_does_not_hide_it(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    if on_postgres():
        pytest.skip(OLDER_COPY_SQLITE_ONLY)
    for suffix in ("-wal", "-shm"):
        anchored.db.with_name(anchored.db.name + suffix).unlink(missing_ok=True)
    shutil.copyfile(anchored.backup, anchored.db)
    async with rig_at(anchored.db) as rig:
        await rig.send(referral(Child_name="After Restore"))
        line = await _checkpoint(rig, anchored.anchor_file)
    # The bot lists every referral afresh and says why ...
    assert line.kind == "base" and "the checkpoint recorded" in line.note
    code, out = await _verify(anchored, capsys)
    # ... and what went missing is still reported.
    assert code == 1
    assert f"REF-2026-000004: not in the database, but {_when(anchored, 3)}" in out


async def test_a_removed_checkpoint_line_is_reported(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = anchored.anchor_file.read_text().splitlines(keepends=True)
    removed = Line.parse(lines[1])
    anchored.anchor_file.write_text(lines[0] + lines[2])
    code, out = await _verify(anchored, capsys)
    assert code == 1
    assert (
        f"checkpoint file line 2 (checkpoint 3 at {Line.parse(lines[2]).at}) does not "
        f"follow the line before it (checkpoint 1 at {Line.parse(lines[0]).at}): a line was "
        "removed"
    ) in out
    assert removed.n == 2


async def test_a_file_cut_short_is_reported(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = anchored.anchor_file.read_text().splitlines(keepends=True)
    anchored.anchor_file.write_text("".join(lines[:2]))
    code, out = await _verify(anchored, capsys)
    assert code == 1
    assert "the database recorded writing checkpoint 3" in out
    assert "the file was cut short" in out


async def test_an_edited_checkpoint_line_is_reported(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    # Lower the count recorded for REF-2026-000004, to hide deleting its newest entry.
    lines = anchored.anchor_file.read_text().splitlines(keepends=True)
    data = json.loads(lines[2])
    data["changed"][0][1] = 2
    lines[2] = json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n"
    anchored.anchor_file.write_text("".join(lines))
    code, out = await _verify(anchored, capsys)
    assert code == 1
    assert "checkpoint file line 3" in out and "the line was changed" in out


async def test_a_missing_checkpoint_file_is_reported(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    anchored.anchor_file.unlink()
    code, out = await _verify(anchored, capsys)
    assert code == 1
    assert "is missing, but the database says checkpoint 3 was written to it" in out


async def test_without_a_checkpoint_file_verify_says_what_it_cannot_see(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    async with rig_at(tmp_path / "data" / "referrals.db") as rig:
        await rig.send(referral())
    assert await cli("verify", "-c", config) == 0
    assert "No checkpoints (integrity.checkpoint_file is not set)" in capsys.readouterr().out


def test_the_checkpoint_file_must_be_outside_data_dir(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, extra='[integrity]\ncheckpoint_file = "data/checkpoints.jsonl"\n'
    )
    with pytest.raises(ConfigError, match=r"is inside storage\.data_dir"):
        load_config(config)
    ok = write_config(tmp_path, extra=INTEGRITY)
    assert load_config(ok).integrity.checkpoint_file == tmp_path / "anchor" / "checkpoints.jsonl"


async def test_a_line_is_keyed(anchored: Setup) -> None:
    line = Line.parse(anchored.anchor_file.read_text().splitlines()[0])
    assert line.intact(KEYRING)
    assert not line.intact(Keyring("another-database-key-" + "x" * 20))


async def test_a_purge_is_recorded_and_not_reported_as_a_deletion(
    anchored: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(anchored.config)
    config = config.model_copy(
        update={"retention": config.retention.model_copy(update={"contact_years": 1})}
    )
    # The newest entry belongs to the referral purged: the next entry reuses its number.
    async with rig_at(anchored.db) as rig:
        async with rig.store.transaction() as tx:
            await tx.append_record(2, "@worker:example.org", "viewed")
        await _checkpoint(rig, anchored.anchor_file)
    later = datetime(2028, 1, 10, tzinfo=UTC)
    out = await purge(config, confirmed=True, now=later)
    assert "  REF-2026-000002  contact" in out.lines
    last = Line.parse(anchored.anchor_file.read_text().splitlines()[-1])
    assert (last.kind, last.gone, last.referrals, last.entries) == (
        "purge",
        ["REF-2026-000002"],
        3,
        9,
    )
    assert last.last_entry == 12
    code, text = await _verify(anchored, capsys)
    assert code == 0, text
    # The bot's next checkpoint follows the purge's line.
    async with rig_at(anchored.db) as rig:
        await rig.send(referral(Child_name="Fifth Child"))
        line = await _checkpoint(rig, anchored.anchor_file)
    assert (line.n, line.prev, line.referrals, line.entries) == (6, last.mac, 4, 12)
    assert line.changed[0][:2] == ["REF-2026-000005", 3]
    code, text = await _verify(anchored, capsys)
    assert code == 0, text


async def test_after_a_key_rotation_the_checkpoints_go_on_under_the_new_key(
    anchored: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new_key = "the-new-database-key-" + "n" * 24
    (tmp_path / "new-key").write_text(new_key)
    assert (
        await cli("rotate-key", "-c", anchored.config, "--new-key-file", tmp_path / "new-key") == 0
    )
    assert "checkpoint 4 at" in capsys.readouterr().out
    (tmp_path / "secrets" / "database-key").write_text(new_key)
    code, text = await _verify(anchored, capsys)
    assert code == 0, text
    # Cutting a record short after the rotation is still seen.
    edit_by_hand(
        anchored.db,
        "DELETE FROM record_entries WHERE id = (SELECT MAX(id) FROM record_entries"
        " WHERE referral_id = 4)",
    )
    code, text = await _verify(anchored, capsys)
    assert code == 1
    assert "REF-2026-000004: 2 running-record entries, but checkpoint file line 4" in text


async def test_key_rotation_is_refused_while_the_database_disagrees(
    anchored: Setup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_by_hand(anchored.db, "DELETE FROM record_entries WHERE id = 12")
    (tmp_path / "new-key").write_text("the-new-database-key-" + "n" * 24)
    assert (
        await cli("rotate-key", "-c", anchored.config, "--new-key-file", tmp_path / "new-key") == 1
    )
    err = capsys.readouterr().err
    assert "Key NOT rotated" in err and "its newest entries were deleted" in err


def test_a_checkpoint_file_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"cannot open .* for appending"):
        check_appendable(blocker / "checkpoints.jsonl")
    check_appendable(tmp_path / "anchor" / "checkpoints.jsonl")
    assert stat.S_IMODE(os.stat(tmp_path / "anchor" / "checkpoints.jsonl").st_mode) == 0o600
