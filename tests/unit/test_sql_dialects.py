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
