"""The plain values that cross between the Matrix shell and the use cases.

Nothing here knows about matrix-nio: the shell turns events into `Incoming` and turns
`OutgoingMessage` into Matrix events.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Protocol


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
    # A poll response (`org.matrix.msc3381.poll.response`): the poll's event ID and the
    # IDs of the answers chosen (several for a poll that allows more than one).
    poll_of: str | None = None
    poll_answers: tuple[str, ...] = ()


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
    # Sent as a poll (or the end of one) instead of a notice; see `Poll`.
    poll: Poll | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutgoingMessage:
        data = dict(data)
        data["mentions"] = tuple(data.get("mentions", ()))
        if data.get("poll") is not None:
            data["poll"] = Poll.from_json(data["poll"])
        return cls(**data)


def txn_id_for(answered_event_id: str, purpose: str) -> str:
    """A transaction ID derived from what a message answers.

    A retry after a crash re-sends with the same ID and the homeserver drops the copy.
    """
    digest = hashlib.sha256(f"{answered_event_id}\x00{purpose}".encode()).hexdigest()
    return f"rb{digest[:40]}"


@dataclass(frozen=True)
class RoomSpec:
    """A new end-to-end encrypted, invite-only room. Name and topic carry no personal data."""

    name: str
    topic: str
    invite: tuple[str, ...]
    moderator: str | None = None


class Messenger(Protocol):
    """What the pipeline needs from a chat network."""

    async def send(self, message: OutgoingMessage, txn_id: str) -> str:
        """Send and return the new event's ID. Raise `SendRefused` or any error to retry."""
        ...

    async def create_room(self, spec: RoomSpec) -> str:
        """Create the room, invite people, return its ID."""
        ...

    async def invite(self, room_id: str, user_id: str) -> None: ...

    async def set_moderator(self, room_id: str, user_id: str) -> None: ...


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload of the configuration file did."""

    applied: bool
    problems: tuple[str, ...] = ()  # why it was not applied
    changes: tuple[str, ...] = ()  # what changed, one line each
    needs_restart: tuple[str, ...] = ()  # changed keys that only a restart applies


class Reloader(Protocol):
    """Re-reads the configuration file and swaps the settings in use, or keeps them."""

    def reload(self) -> ReloadOutcome: ...


class SendRefused(Exception):
    """The message must not be sent as it is (for example: the room is not encrypted)."""
