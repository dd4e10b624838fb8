"""The one translation the domain modules' SQL goes through on PostgreSQL."""

from __future__ import annotations

from storage.sql import translate


def test_placeholders_are_numbered_outside_quoted_text() -> None:
    text, how = translate("SELECT * FROM kv WHERE key = ? AND value != '?' AND \"a?\" = ?")
    assert text == "SELECT * FROM kv WHERE key = $1 AND value != '?' AND \"a?\" = $2"
    assert how == "rows"


def test_insert_or_ignore_becomes_on_conflict_and_returns_the_generated_key() -> None:
    text, how = translate("INSERT OR IGNORE INTO inbox (event_id) VALUES (?)")
    assert text == "INSERT INTO inbox (event_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING seq"
    assert how == "key"
    text, how = translate("INSERT INTO kv (key, value) VALUES (?, ?)")
    assert "RETURNING" not in text and how == "status"


def test_updates_and_deletes_report_their_row_count() -> None:
    assert translate("UPDATE referrals SET state = 'claimed' WHERE id = ?")[1] == "status"
    assert translate("DELETE FROM outbox WHERE id = ? RETURNING id")[1] == "rows"


def test_sqlite_index_hints_are_dropped() -> None:
    text, how = translate(
        "SELECT COUNT(*) FROM referrals r INDEXED BY referrals_report_received"
        " WHERE r.received_at >= ? AND EXISTS (SELECT 1 FROM referrals p"
        " INDEXED BY referrals_report_child WHERE p.child_key = r.child_key)"
    )
    assert text == (
        "SELECT COUNT(*) FROM referrals r WHERE r.received_at >= $1 AND EXISTS"
        " (SELECT 1 FROM referrals p WHERE p.child_key = r.child_key)"
    )
    assert how == "rows"


def test_inserts_into_the_new_tables_return_their_keys() -> None:
    for table in ("drafts", "attachment_jobs", "attachments"):
        text, how = translate(f"INSERT INTO {table} (a) VALUES (?)")  # noqa: S608
        assert text.endswith("RETURNING id") and how == "key"
    assert translate("INSERT INTO attach_windows (a) VALUES (?)")[1] == "status"
