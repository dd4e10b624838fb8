"""The stored records the use cases work with: referrals, meetings, the running record.

Plain, frozen values read from the storage layer (`storage/`); no SQL and no Matrix here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.domain import Outcome

OPEN_STATES = ("received", "claimed")


@dataclass(frozen=True)
class Referral:
    id: int
    ref: str
    event_id: str
    room_id: str
    sender: str
    received_at: datetime
    declared_type: str
    declared_by: str
    current_type: str
    immediate_danger: bool
    state: str  # received (unclaimed), claimed, decided
    decision_due: datetime
    form: dict[str, Any]
    claimed_by: str | None = None
    rag: str | None = None
    outcome: Outcome | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    pending_reclassification: dict[str, Any] | None = None
    channel: str = "matrix"
    written_followup_due: datetime | None = None
    written_followup_at: datetime | None = None
    followup_flagged_at: datetime | None = None
    child_key: str | None = None
    agency: str | None = None
    last_reminder_at: datetime | None = None
    reminder_count: int = 0
    # Where updates go: the thread of the acknowledgement, or None for replies to event_id.
    thread_root: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


@dataclass(frozen=True)
class Meeting:
    id: int
    referral_id: int
    event_id: str
    room_id: str | None
    chair: str
    called_by: str
    scheduled: str | None
    state: str  # creating, open, closed
    created_at: datetime
    closed_at: datetime | None
    close_note: str | None


@dataclass(frozen=True)
class Participant:
    user_id: str
    agency: str | None
    role: str  # chair, referrer, lead, invited
    status: str  # to_invite, invited, joined, declined, left


@dataclass(frozen=True)
class MeetingItem:
    id: int
    number: int | None
    kind: str
    author: str
    agency: str | None
    at: datetime
    text: str
    owner: str | None
    due: str | None  # ISO date
    done_at: datetime | None
    done_by: str | None
    reminded_at: datetime | None
    overdue_told_at: datetime | None


@dataclass(frozen=True)
class RoomJob:
    id: int
    kind: str
    meeting_id: int
    user_id: str | None
    attempts: int


@dataclass(frozen=True)
class RecordEntry:
    id: int
    referral_id: int
    at: datetime
    actor: str
    kind: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class EncryptedMedia:
    """An end-to-end encrypted file as a media event points at it: where the homeserver
    holds the ciphertext (`url`), how to decrypt it (`key` JWK, `iv`), the SHA-256 of the
    ciphertext (`sha256`, unpadded base64), and what the sender says about it."""

    url: str
    key: dict[str, Any]
    iv: str
    sha256: str
    name: str
    caption: str | None = None
    declared_size: int | None = None
    mimetype: str | None = None
    msgtype: str = "m.file"

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "key": self.key,
            "iv": self.iv,
            "sha256": self.sha256,
            "name": self.name,
            "caption": self.caption,
            "declared_size": self.declared_size,
            "mimetype": self.mimetype,
            "msgtype": self.msgtype,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncryptedMedia:
        return cls(**data)


@dataclass(frozen=True)
class AttachmentJob:
    """A file waiting to be downloaded, checked and stored (storage/attachments.py)."""

    id: int
    event_id: str
    room_id: str
    sender: str
    referral_id: int
    media: EncryptedMedia
    attempts: int
    # Where the media event itself was sent (its thread), so the answer goes there too.
    thread_root: str | None = None


@dataclass(frozen=True)
class Attachment:
    """A stored file's description (not its bytes)."""

    id: int
    uid: str
    referral_id: int
    event_id: str
    sender: str
    added_at: datetime
    kind: str
    mimetype: str
    size: int
    sha256: str
    name: str
    caption: str | None
