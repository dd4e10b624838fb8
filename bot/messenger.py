"""Sending through matrix-nio: Matrix content, the trust decision, refusals.

Which devices get the room key is decided by `bot/device_trust.py` (trust on first use,
or strict: verified devices only) before every encrypted send, never by passing
`ignore_unverified_devices=True`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from nio import (
    AsyncClient,
    RoomCreateResponse,
    RoomGetStateEventResponse,
    RoomInviteResponse,
    RoomPreset,
    RoomPutStateResponse,
    RoomSendError,
    RoomSendResponse,
    RoomVisibility,
)

from bot.device_trust import DeviceTrust
from handlers.ports import OutgoingMessage, RoomSpec, SendRefused

ENCRYPTION = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}
MODERATOR = 50

log = logging.getLogger(__name__)


class SendFailed(Exception):
    """A send that may work when retried."""


def matrix_content(message: OutgoingMessage) -> dict[str, Any]:
    content: dict[str, Any] = {
        "msgtype": "m.notice",
        "body": message.body,
        "format": "org.matrix.custom.html",
        "formatted_body": message.html,
        # Intentional mentions: only the users named by the handler are pinged, never
        # anyone (or @room) that user text happens to name.
        "m.mentions": {"user_ids": list(message.mentions)} if message.mentions else {},
    }
    if message.thread_root is not None:
        content["m.relates_to"] = {
            "rel_type": "m.thread",
            "event_id": message.thread_root,
            "is_falling_back": message.reply_to is None,
            "m.in_reply_to": {"event_id": message.reply_to or message.thread_root},
        }
    elif message.reply_to is not None:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": message.reply_to}}
    return content


POLL_START = "org.matrix.msc3381.poll.start"
POLL_END = "org.matrix.msc3381.poll.end"
TEXT = "org.matrix.msc1767.text"


def matrix_event(message: OutgoingMessage) -> tuple[str, dict[str, Any]]:
    """The event type and content for a message: a notice, or an MSC3381 poll (start or
    end) as Element Web, Element X and the mobile apps send them, with the numbered text
    fallback as its text for clients that do not show polls."""
    poll = message.poll
    if poll is None:
        return "m.room.message", matrix_content(message)
    if poll.end_of is not None:
        return POLL_END, {
            "m.relates_to": {"rel_type": "m.reference", "event_id": poll.end_of},
            POLL_END: {},
            TEXT: message.body,
            "body": message.body,
        }
    return POLL_START, {
        POLL_START: {
            "kind": "org.matrix.msc3381.poll.disclosed",
            "max_selections": poll.max_selections,
            "question": {TEXT: poll.question, "body": poll.question},
            "answers": [{"id": answer_id, TEXT: text} for answer_id, text in poll.answers],
        },
        TEXT: message.body,
        "body": message.body,
        "m.mentions": {},
    }


class MatrixMessenger:
    def __init__(
        self, client: AsyncClient, is_allowed_user: Callable[[str], bool], trust: DeviceTrust
    ) -> None:
        self._client = client
        self._is_allowed = is_allowed_user
        self._trust = trust

    async def send(self, message: OutgoingMessage, txn_id: str) -> str:
        room = self._client.rooms.get(message.room_id)
        if room is None:
            raise SendFailed("the bot is not (yet) in this room")
        if message.sensitive and (message.plaintext or not room.encrypted):
            raise SendRefused("room is not end-to-end encrypted")
        if message.plaintext:
            return await self._send_plaintext(message, txn_id)
        if room.encrypted:
            # Trust decisions and Olm session set-up one at a time across rooms, so two
            # rooms never claim keys for the same device at once, and no trust change lands
            # in the middle of a share. The send itself runs outside the lock.
            async with self._trust.lock:
                await self._trust.apply_locked(room)
                if self._client.olm is not None and self._client.olm.should_share_group_session(
                    room.room_id
                ):
                    await self._client.share_group_session(room.room_id)
        event_type, content = matrix_event(message)
        resp = await self._client.room_send(
            message.room_id,
            event_type,
            content,
            tx_id=txn_id,
            ignore_unverified_devices=False,
        )
        if isinstance(resp, RoomSendResponse):
            return str(resp.event_id)
        assert isinstance(resp, RoomSendError)
        raise SendFailed(f"{resp.status_code}: {resp.message}")

    async def create_room(self, spec: RoomSpec) -> str:
        """An encrypted, invite-only room, no guests, not in the directory. The bot keeps
        admin power (as creator); the chair is a moderator.

        History is visible to members only, from the point they were invited
        ("invited"): with "joined" an invitee who joins after the agenda is posted could
        never read it, and the agenda is posted right after the invites.
        """
        bot = self._client.user_id
        # Room version 12: the creator (the bot) has unlimited power and must not be listed.
        users: dict[str, int] = {}
        if spec.moderator and spec.moderator != bot:
            users[spec.moderator] = MODERATOR
        resp = await self._client.room_create(
            visibility=RoomVisibility.private,
            name=spec.name,
            topic=spec.topic,
            preset=RoomPreset.private_chat,
            invite=[u for u in spec.invite if self._is_allowed(u)],
            initial_state=[
                ENCRYPTION,
                {
                    "type": "m.room.history_visibility",
                    "state_key": "",
                    "content": {"history_visibility": "invited"},
                },
                {
                    "type": "m.room.guest_access",
                    "state_key": "",
                    "content": {"guest_access": "forbidden"},
                },
                {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "invite"}},
            ],
            power_level_override={"users": users} if users else None,
        )
        if not isinstance(resp, RoomCreateResponse):
            raise SendFailed(
                f"room creation failed: {getattr(resp, 'status_code', '')} "
                f"{getattr(resp, 'message', resp)}"
            )
        room_id = str(resp.room_id)
        await self._await_members(room_id, {u for u in spec.invite if self._is_allowed(u)})
        return room_id

    async def _await_members(self, room_id: str, expected: set[str], timeout: float = 30.0) -> None:
        """Wait until the sync has shown every invitee in the room.

        A room key is shared only with members the bot's client knows of, and a sync can
        show a new room before all its invites: sending the agenda then would leave the
        later invitees unable to read it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            room = self._client.rooms.get(room_id)
            if room is not None and expected <= set(room.users):
                return
            await asyncio.sleep(0.05)
        log.warning("room members not all seen in time: room=%s", room_id)

    async def invite(self, room_id: str, user_id: str) -> None:
        if not self._is_allowed(user_id):
            raise SendRefused("user is not on an allowed homeserver")
        resp = await self._client.room_invite(room_id, user_id)
        if not isinstance(resp, RoomInviteResponse):
            status = getattr(resp, "status_code", "")
            if status != "M_FORBIDDEN":  # already in the room: nothing to do
                raise SendFailed(f"invite failed: {status}")
        await self._await_members(room_id, {user_id})

    async def set_moderator(self, room_id: str, user_id: str) -> None:
        current = await self._client.room_get_state_event(room_id, "m.room.power_levels")
        if not isinstance(current, RoomGetStateEventResponse):
            raise SendFailed("cannot read power levels")
        content = dict(current.content)
        users = dict(content.get("users", {}))
        users[user_id] = max(int(users.get(user_id, 0)), MODERATOR)
        content["users"] = users
        resp = await self._client.room_put_state(room_id, "m.room.power_levels", content)
        if not isinstance(resp, RoomPutStateResponse):
            raise SendFailed("cannot set power levels")

    async def _send_plaintext(self, message: OutgoingMessage, txn_id: str) -> str:
        """An unencrypted notice, even in an encrypted room: for a session that cannot
        decrypt the bot's messages. nio would encrypt it, so it goes to the API directly."""
        client = self._client
        path = (
            f"/_matrix/client/v3/rooms/{quote(message.room_id, safe='')}"
            f"/send/m.room.message/{quote(txn_id, safe='')}"
        )
        resp = await client.send(
            "PUT",
            path,
            json.dumps(matrix_content(message)),
            headers={
                "Authorization": f"Bearer {client.access_token}",
                "Content-Type": "application/json",
            },
        )
        async with resp:
            data = await resp.json(content_type=None)
            if resp.status != 200 or not isinstance(data, dict) or "event_id" not in data:
                raise SendFailed(f"{resp.status}: plain-text send refused")
            return str(data["event_id"])
