"""An in-memory chat network for handler tests: it records what would be sent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from handlers.ports import (
    MediaTooLarge,
    MediaUnavailable,
    OutgoingFile,
    OutgoingMessage,
    RoomSpec,
    SendRefused,
    SendRejected,
)


@dataclass
class MemoryMessenger:
    encrypted_rooms: set[str] = field(default_factory=set)
    sent: list[tuple[str, OutgoingMessage]] = field(default_factory=list)
    fail_next: int = 0
    seen_txn_ids: set[str] = field(default_factory=set)
    # Like a homeserver's lasting refusal: messages this returns a code for are refused
    # (SendRejected) every time they are tried.
    reject: Callable[[OutgoingMessage], SendRejected | None] = lambda _m: None
    rejected: list[tuple[str, OutgoingMessage]] = field(default_factory=list)
    thread_events: dict[str, str] = field(default_factory=dict)

    def note_thread_event(self, thread_root: str, event_id: str) -> None:
        self.thread_events[thread_root] = event_id

    async def send(self, message: OutgoingMessage, txn_id: str) -> str:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("homeserver unreachable")
        refusal = self.reject(message)
        if refusal is not None:
            self.rejected.append((txn_id, message))
            raise refusal
        if message.sensitive and message.room_id not in self.encrypted_rooms:
            raise SendRefused("room is not end-to-end encrypted")
        if txn_id in self.seen_txn_ids:  # like a homeserver: the same txn ID is one event
            return f"$dup-{txn_id}"
        self.seen_txn_ids.add(txn_id)
        self.sent.append((txn_id, message))
        return f"$sent{len(self.sent)}"

    created: list[tuple[str, RoomSpec]] = field(default_factory=list)
    invited: list[tuple[str, str]] = field(default_factory=list)
    moderators: list[tuple[str, str]] = field(default_factory=list)

    async def create_room(self, spec: RoomSpec) -> str:
        room_id = f"!meeting{len(self.created) + 1}:example.org"
        self.created.append((room_id, spec))
        self.encrypted_rooms.add(room_id)
        return room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        self.invited.append((room_id, user_id))

    async def set_moderator(self, room_id: str, user_id: str) -> None:
        self.moderators.append((room_id, user_id))

    def to(self, room_id: str) -> list[OutgoingMessage]:
        return [m for _, m in self.sent if m.room_id == room_id]

    # -- media: a content repository in memory (handlers/ports.py, MediaTransfer) --------
    media: dict[str, bytes] = field(default_factory=dict)
    fetch_fails: int = 0
    fetched: list[str] = field(default_factory=list)
    sent_files: list[tuple[OutgoingMessage, OutgoingFile]] = field(default_factory=list)

    def upload(self, data: bytes) -> str:
        url = f"mxc://example.org/m{len(self.media) + 1}"
        self.media[url] = data
        return url

    async def fetch_media(self, url: str, max_bytes: int) -> bytes:
        self.fetched.append(url)
        if self.fetch_fails:
            self.fetch_fails -= 1
            raise ConnectionError("homeserver unreachable")
        if url not in self.media:
            raise MediaUnavailable("404 M_NOT_FOUND")
        if len(self.media[url]) > max_bytes:
            raise MediaTooLarge(str(len(self.media[url])))
        return self.media[url]

    async def send_media(self, message: OutgoingMessage, txn_id: str, file: OutgoingFile) -> str:
        if message.room_id not in self.encrypted_rooms:
            raise SendRefused("room is not end-to-end encrypted")
        self.sent_files.append((message, file))
        return await self.send(message, txn_id)
