"""The plain values that cross between the Matrix shell and the use cases.

Nothing here knows about matrix-nio: the shell turns events into `Incoming` and turns
`OutgoingMessage` into Matrix events (both defined in `schemas.messages`, re-exported here).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

# Defined with the stored messages (schemas/messages.py); re-exported as the port's values.
from schemas.messages import Incoming as Incoming
from schemas.messages import OutgoingFile as OutgoingFile
from schemas.messages import OutgoingMessage as OutgoingMessage
from schemas.messages import Poll as Poll


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
        """Send and return the new event's ID. Raise `SendRefused` (never to be sent),
        `SendRejected` (the homeserver refuses it for good) or any error to retry."""
        ...

    def note_thread_event(self, thread_root: str, event_id: str) -> None:
        """`event_id` is now the latest event seen in the thread of `thread_root`."""
        ...

    async def create_room(self, spec: RoomSpec) -> str:
        """Create the room, invite people, return its ID."""
        ...

    async def invite(self, room_id: str, user_id: str) -> None: ...

    async def set_moderator(self, room_id: str, user_id: str) -> None: ...


class MediaTransfer(Protocol):
    """Files to and from the homeserver's content repository (encrypted attachments)."""

    async def fetch_media(self, url: str, max_bytes: int) -> bytes | bytearray:
        """The bytes at an `mxc://` URL, through the authenticated media API. Raise
        `MediaTooLarge` past `max_bytes`, `MediaUnavailable` when the homeserver refuses for
        good (404, 403 ...), any other error to retry."""
        ...

    async def send_media(self, message: OutgoingMessage, txn_id: str, file: OutgoingFile) -> str:
        """Encrypt `file` with a fresh key, upload it and send the media event described
        by `message` (its room and relations); return the event ID. Errors as `send`."""
        ...


class MediaTooLarge(Exception):
    """The file is larger than the limit (found while downloading)."""


class MediaUnavailable(Exception):
    """The homeserver will not give the file (its status and errcode, no content)."""


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


class SendRejected(Exception):
    """The homeserver refused the message and will refuse it again: a 4xx answer other
    than 429 (M_FORBIDDEN, M_TOO_LARGE, M_BAD_JSON, M_UNKNOWN 400 ...) or the bot no longer
    in the room. Connection errors, 5xx and 429 are any other exception (retried).

    `code` names the refusal without any content: HTTP status and errcode, e.g.
    "403 M_FORBIDDEN", or "not-in-room" when there was no answer to have.
    """

    def __init__(self, errcode: str, status: int | None = None) -> None:
        self.status = status
        self.errcode = errcode
        self.code = errcode if status is None else f"{status} {errcode}"
        super().__init__(self.code)
