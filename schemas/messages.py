"""Messages as they are stored: events in from the chat (inbox) and notices out (outbox).

Plain values shared by the storage layer, the use cases and the Matrix shell; nothing here
knows about matrix-nio or SQL.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, replace
from datetime import datetime
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
    # Its room key arrived late: when it was decrypted, and how many later messages of
    # the room had been handled before it (they waited for it only for a bounded time).
    decrypted_at: datetime | None = None
    overtaken_by: int = 0
    # A file (m.image, m.file, m.video, m.audio): its encrypted-file descriptor
    # (schemas.records.EncryptedMedia as JSON), or `media_clear` when it was uploaded
    # unencrypted (nothing of it is stored). `in_reply_to`: the event it replies to.
    media: dict[str, Any] | None = None
    media_clear: bool = False
    # A file event whose `file` object is incomplete (no key, IV or hash).
    media_bad: bool = False
    in_reply_to: str | None = None
    # A poll response (`org.matrix.msc3381.poll.response`): the poll's event ID and the
    # IDs of the answers chosen (several for a poll that allows more than one).
    poll_of: str | None = None
    poll_answers: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutgoingFile:
    """A file to send as an end-to-end encrypted `m.image` / `m.file` event: the messenger
    encrypts it with a fresh key, uploads the ciphertext and sends the event, with the
    message's body as its caption when it differs from the file name.

    A report's chart travels inside the outbox's content (encrypted at rest like every
    outgoing message, storage/outbox.py); a stored attachment never does: its bytes are
    read and put here only at send time (bot/pipeline.py)."""

    name: str
    mimetype: str
    data: bytes
    width: int | None = None
    height: int | None = None

    @classmethod
    def of(cls, data: bytes, name: str, mimetype: str, **size: int) -> OutgoingFile:
        return cls(name, mimetype, bytes(data), **size)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mimetype": self.mimetype,
            "data_b64": base64.b64encode(self.data).decode("ascii"),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutgoingFile:
        return cls(
            data["name"],
            data["mimetype"],
            base64.b64decode(data["data_b64"]),
            data.get("width"),
            data.get("height"),
        )


@dataclass(frozen=True)
class Poll:
    """An MSC3381 poll to start (question and answers, each answer with a stable ID), or,
    with `end_of`, the end of the poll sent as that event. The message's body is the
    numbered text fallback for clients that do not show polls."""

    question: str = ""
    answers: tuple[tuple[str, str], ...] = ()  # (answer ID, text)
    max_selections: int = 1
    end_of: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Poll:
        return cls(
            question=str(data.get("question", "")),
            answers=tuple((str(a), str(b)) for a, b in data.get("answers", ())),
            max_selections=int(data.get("max_selections", 1)),
            end_of=data.get("end_of"),
        )


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
    # Send this stored file (storage/attachments.py, by ID) as an encrypted media event,
    # `body` being its file name; the bytes are read, encrypted with a fresh key and
    # uploaded at send time, never kept in the outbox.
    attachment: int | None = None
    # Sent as an encrypted file (m.image/m.file) instead of a notice; never in plain text.
    file: OutgoingFile | None = None
    # Sent as a poll (or the end of one) instead of a notice; see `Poll`.
    poll: Poll | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, file=None))
        data["file"] = None if self.file is None else self.file.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutgoingMessage:
        data = dict(data)
        data["mentions"] = tuple(data.get("mentions", ()))
        if data.get("file") is not None:
            data["file"] = OutgoingFile.from_json(data["file"])
        if data.get("poll") is not None:
            data["poll"] = Poll.from_json(data["poll"])
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
