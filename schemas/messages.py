"""Messages as they are stored: events in from the chat (inbox) and notices out (outbox).

Plain values shared by the storage layer, the use cases and the Matrix shell; nothing here
knows about matrix-nio or SQL.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Incoming:
    """A message the bot must act on, as it was stored in the inbox."""

    seq: int
    event_id: str
    room_id: str
    sender: str
    origin_ts: int
    room_encrypted: bool
    body: str
    # True when the room is unencrypted: the body was never stored, only that it looked
    # like a command.
    withheld: bool = False
    # True when only the bot and the sender are in the room (a direct message).
    private: bool = False
    # For membership changes (join, leave, invite): what happened, and to whom.
    membership: str | None = None
    target: str | None = None
    # An edit (`m.replace`) of this event; `command`: the new text starts with "!".
    edit_of: str | None = None
    command: bool = False
    # A redaction (deletion) of this event.
    redacts: str | None = None
    # The event's own relation (`m.relates_to`), which decides where it is answered
    # (handlers/notify.py, `answer_place`): the root of the thread it was sent in, and
    # whether it has any relation at all (a reply, a reference, an annotation, a thread).
    thread_root: str | None = None
    related: bool = False


@dataclass(frozen=True)
class OutgoingFile:
    """A file the message carries (a report's chart): the messenger encrypts it with a
    fresh key, uploads the ciphertext and sends an `m.image` / `m.file` event for it, with
    the message's body as its caption. The bytes live only in the outbox's content, which
    is encrypted at rest like every outgoing message (storage/outbox.py)."""

    name: str
    mimetype: str
    data_b64: str
    width: int | None = None
    height: int | None = None

    @property
    def data(self) -> bytes:
        return base64.b64decode(self.data_b64)

    @classmethod
    def of(cls, data: bytes, name: str, mimetype: str, **size: int) -> OutgoingFile:
        return cls(name, mimetype, base64.b64encode(data).decode("ascii"), **size)


@dataclass(frozen=True)
class OutgoingMessage:
    """A notice to send. `reply_to` makes it a reply; `thread_root` puts it in a thread."""

    room_id: str
    body: str
    html: str
    reply_to: str | None = None
    thread_root: str | None = None
    # Sensitive messages carry referral details and are only ever sent to encrypted rooms.
    sensitive: bool = True
    # Users to notify (Matrix intentional mentions); nobody else is ever pinged.
    mentions: tuple[str, ...] = ()
    # Sent unencrypted even in an encrypted room, for the one reader who cannot decrypt
    # the bot's messages: a device not yet verified. Never for sensitive messages.
    plaintext: bool = False
    # Goes out at once even when messages of its kind are being gathered into one
    # (the advice-team summary of an immediate-danger referral).
    urgent: bool = False
    # Sent as an encrypted file (m.image/m.file) instead of a notice; never in plain text.
    file: OutgoingFile | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutgoingMessage:
        data = dict(data)
        data["mentions"] = tuple(data.get("mentions", ()))
        if data.get("file") is not None:
            data["file"] = OutgoingFile(**data["file"])
        return cls(**data)


@dataclass(frozen=True)
class InboxItem:
    """A timeline event to store before the sync token moves on."""

    event_id: str
    room_id: str
    sender: str
    origin_ts: int
    room_encrypted: bool
    # 'pending' with a payload {body, withheld} or 'undecrypted' with the raw event JSON.
    state: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class UndecryptedItem:
    seq: int
    room_id: str
    event: dict[str, Any]


@dataclass(frozen=True)
class OutboxRow:
    id: int
    txn_id: str
    message: OutgoingMessage
    referral_id: int | None
    purpose: str
    attempts: int
    # Set when the row goes out in one message with others (Tx.set_batch).
    batch: str | None = None
