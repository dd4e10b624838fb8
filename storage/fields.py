"""How values are stored: times, JSON, and the encryption context of every encrypted column.

Each ciphertext is bound to its column and its row (the context string is authenticated
with it), so a value copied into another row or column does not decrypt. These strings are
part of the stored format: changing one makes every existing value unreadable
(tests/unit/test_at_rest.py and test_rotate_key.py pin them).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

from storage.keyring import Keyring


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds")


def parse_dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def dumps(data: Any) -> str:
    # ensure_ascii keeps lone surrogates and other odd text storable as valid UTF-8.
    return json.dumps(data, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


def ctx_form(event_id: str) -> str:
    return f"referrals.form:{event_id}"


def ctx_pending(referral_id: int) -> str:
    return f"referrals.pending_reclassification:{referral_id}"


def ctx_detail(referral_id: int) -> str:
    return f"record_entries.detail:{referral_id}"


def ctx_content(txn_id: str) -> str:
    return f"outbox.content:{txn_id}"


def ctx_payload(event_id: str) -> str:
    return f"inbox.payload:{event_id}"


def ctx_item(meeting_id: int) -> str:
    return f"meeting_items.text:{meeting_id}"


def ctx_close_note(meeting_id: int) -> str:
    return f"meetings.close_note:{meeting_id}"


def ctx_attachment_media(event_id: str) -> str:
    return f"attachment_jobs.media:{event_id}"


def ctx_attachment_meta(referral_id: int, uid: str) -> str:
    return f"attachments.meta:{referral_id}:{uid}"


def ctx_attachment_key(referral_id: int, uid: str) -> str:
    return f"attachments.file_key:{referral_id}:{uid}"


def ctx_attachment_data(referral_id: int, uid: str) -> str:
    return f"attachments.data:{referral_id}:{uid}"


def child_key_of(keyring: Keyring, form: dict[str, Any]) -> str | None:
    """The keyed hash of the child's name and date of birth in a stored form."""
    child = form.get("child")
    if not isinstance(child, dict) or not isinstance(child.get("full_name"), str):
        return None
    born = child.get("date_of_birth")
    try:
        born_date = date.fromisoformat(born) if isinstance(born, str) else None
    except ValueError:
        born_date = None
    return keyring.child_key(child["full_name"], born_date)
