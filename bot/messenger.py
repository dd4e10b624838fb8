"""Sending through matrix-nio: Matrix content, the trust decision, refusals.

Which devices get the room key is decided by `bot/device_trust.py` (trust on first use,
or strict: verified devices only) before every encrypted send, never by passing
`ignore_unverified_devices=True`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import html
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlparse

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
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
    UploadResponse,
)

from bot.device_trust import DeviceTrust
from handlers.ports import (
    MediaTooLarge,
    MediaUnavailable,
    OutgoingFile,
    OutgoingMessage,
    RoomSpec,
    SendRefused,
    SendRejected,
)

ENCRYPTION = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}
MODERATOR = 50
# A file download may take this long (20 MB on a slow link) before it is retried.
FETCH_TIMEOUT_S = 300.0
# How many threads' latest events are remembered (a thread message's reply fallback).
THREADS_REMEMBERED = 10_000

log = logging.getLogger(__name__)


def _b64(data: bytes, *, urlsafe: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    return encoded.decode("ascii").rstrip("=")


def encrypt_for_matrix(data: bytes) -> tuple[bytes, dict[str, Any]]:
    """Matrix attachment encryption (v2), as matrix-nio's `encrypt_attachment` does it but
    in one pass with one copy: a fresh random AES-256 key, AES-CTR with a random 64-bit IV
    and a zero counter, and the SHA-256 of the ciphertext. Returns the ciphertext and the
    `file` object's `key`, `iv` and `hashes`."""
    key = os.urandom(32)
    iv = os.urandom(8) + bytes(8)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    ciphertext = encryptor.update(data) + encryptor.finalize()
    return ciphertext, {
        "key": {
            "kty": "oct",
            "key_ops": ["encrypt", "decrypt"],
            "alg": "A256CTR",
            "k": _b64(key, urlsafe=True),
            "ext": True,
        },
        "iv": _b64(iv),
        "hashes": {"sha256": _b64(hashlib.sha256(ciphertext).digest())},
    }


class SendFailed(Exception):
    """A send that may work when retried."""


def matrix_content(message: OutgoingMessage, latest_in_thread: str | None = None) -> dict[str, Any]:
    """The event content for `message`. `latest_in_thread`: the latest event known in its
    thread, which a thread message that replies to nothing in particular points its reply
    fallback at (as the spec asks), so that clients without threads show it in context."""
    body, formatted = _with_pills(message.body, message.html, message.mentions)
    content: dict[str, Any] = {
        "msgtype": "m.notice",
        "body": body,
        "format": "org.matrix.custom.html",
        "formatted_body": formatted,
        # Intentional mentions: only the users named by the handler are pinged, never
        # anyone (or @room) that user text happens to name.
        "m.mentions": {"user_ids": list(message.mentions)} if message.mentions else {},
    }
    if message.thread_root is not None:
        content["m.relates_to"] = {
            "rel_type": "m.thread",
            "event_id": message.thread_root,
            "is_falling_back": message.reply_to is None,
            "m.in_reply_to": {
                "event_id": message.reply_to or latest_in_thread or message.thread_root
            },
        }
    elif message.reply_to is not None:
        content["m.relates_to"] = {"m.in_reply_to": {"event_id": message.reply_to}}
    return content


def _with_pills(body: str, formatted: str, mentions: tuple[str, ...]) -> tuple[str, str]:
    """Link every mentioned user in the HTML as a matrix.to pill, so clients show the
    mention: where the text names them, in place; otherwise in a line added at the end
    (to the plain body too). The HTML is the renderer's escaped text in plain tags
    without attributes, so a user ID in it is always text, never part of markup."""
    missing: list[str] = []
    for user_id in mentions:
        pattern = re.compile(re.escape(html.escape(user_id, quote=True)) + r"(?![\w.:=/-])")
        link = pill(user_id)
        formatted, found = pattern.subn(lambda _m: link, formatted)  # noqa: B023 - used at once
        if not found:
            missing.append(user_id)
    if missing:
        formatted += "<p>" + ", ".join(pill(u) for u in missing) + "</p>"
        body += "\n" + ", ".join(missing)
    return body, formatted


def pill(user_id: str) -> str:
    """A user mention as clients render it: a matrix.to link, escaped."""
    href = "https://matrix.to/#/" + quote(user_id, safe="@:")
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(user_id, quote=True)}</a>'


# 4xx answers that are not about the message: a bad or expired access token (every send
# fails until the operator acts, and none of them may be given up for it), a timeout,
# rate limiting.
RETRIED_4XX = frozenset({401, 408, 429})


def classify_refusal(status: int | None, errcode: str | None) -> SendRejected | None:
    """A refusal that will not change on retry (a 4xx answer about the message, such as
    400 M_UNKNOWN for a thread on an event with a relation, 403 M_FORBIDDEN, 413
    M_TOO_LARGE), or None if the send may work later: no answer, a 5xx, 401, 408, 429."""
    if status is None or status in RETRIED_4XX or not 400 <= status < 500:
        return None
    return SendRejected(errcode or "no-errcode", status)


POLL_START = "org.matrix.msc3381.poll.start"
POLL_END = "org.matrix.msc3381.poll.end"
TEXT = "org.matrix.msc1767.text"


def matrix_event(
    message: OutgoingMessage, latest_in_thread: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The event type and content for a message: a notice, or an MSC3381 poll (start or
    end) as Element Web, Element X and the mobile apps send them, with the numbered text
    fallback as its text for clients that do not show polls."""
    poll = message.poll
    if poll is None:
        return "m.room.message", matrix_content(message, latest_in_thread)
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
        # Thread root -> the latest event the bot knows in that thread (its own last
        # message there, or the latest it was sent). In memory: after a restart a thread
        # message falls back to the thread root until the thread sees a new event.
        self._latest: OrderedDict[str, str] = OrderedDict()

    def note_thread_event(self, thread_root: str, event_id: str) -> None:
        self._latest[thread_root] = event_id
        self._latest.move_to_end(thread_root)
        while len(self._latest) > THREADS_REMEMBERED:
            self._latest.popitem(last=False)

    async def send(self, message: OutgoingMessage, txn_id: str) -> str:
        event_id = await self._send(message, txn_id)
        if message.thread_root is not None:
            self.note_thread_event(message.thread_root, event_id)
        return event_id

    async def send_media(self, message: OutgoingMessage, txn_id: str, file: OutgoingFile) -> str:
        """Send a stored file: encrypted with a fresh key, uploaded as an opaque blob (no
        file name: that is only in the encrypted event), sent as the media event that
        `message` describes (its room and relations)."""
        return await self.send(replace(message, file=file), txn_id)

    async def fetch_media(self, url: str, max_bytes: int) -> bytes | bytearray:
        """Download through the authenticated media API (`/_matrix/client/v1/media`, the
        access token in the Authorization header, never in the URL), stopping as soon as
        the answer says or proves it is larger than `max_bytes`."""
        parsed = urlparse(url)
        if parsed.scheme != "mxc" or not parsed.netloc or not parsed.path.strip("/"):
            raise MediaUnavailable("not an mxc:// URL")
        path = (
            f"/_matrix/client/v1/media/download/{quote(parsed.netloc, safe='')}"
            f"/{quote(parsed.path.strip('/'), safe='')}"
        )
        client = self._client
        resp = await client.send(
            "GET",
            path,
            headers={"Authorization": f"Bearer {client.access_token}"},
            timeout=FETCH_TIMEOUT_S,
        )
        async with resp:
            if resp.status != 200:
                errcode = None
                with contextlib.suppress(Exception):
                    data = await resp.json(content_type=None)
                    errcode = data.get("errcode") if isinstance(data, dict) else None
                if classify_refusal(resp.status, errcode) is not None:
                    raise MediaUnavailable(f"{resp.status} {errcode or 'no-errcode'}")
                raise SendFailed(f"download failed: {resp.status} {errcode or 'no-errcode'}")
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise MediaTooLarge(str(resp.content_length))
            # One buffer, grown in place: no list of chunks joined into a second copy.
            data = bytearray()
            async for chunk in resp.content.iter_chunked(256 * 1024):
                if len(data) + len(chunk) > max_bytes:
                    raise MediaTooLarge(str(len(data) + len(chunk)))
                data += chunk
        return data

    async def _send(self, message: OutgoingMessage, txn_id: str) -> str:
        room = self._client.rooms.get(message.room_id)
        if room is None:
            # nio keeps every room the bot was ever in (even after a kick) once the first
            # sync has run, and nothing is sent before that (BotApp): never in it at all.
            raise SendRejected("not-in-room")
        if message.sensitive and (message.plaintext or not room.encrypted):
            raise SendRefused("room is not end-to-end encrypted")
        if message.file is not None and (message.plaintext or not room.encrypted):
            raise SendRefused("files are only sent end-to-end encrypted")
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
        latest = self._latest.get(message.thread_root) if message.thread_root else None
        event_type, content = matrix_event(message, latest)
        if message.file is not None:
            content = await self._file_content(message.file, content)
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
        # nio's `status_code` is the Matrix errcode; the HTTP status is on the transport
        # response (None when there was no answer at all).
        transport = getattr(resp, "transport_response", None)
        status = getattr(transport, "status", None)
        rejected = classify_refusal(status if isinstance(status, int) else None, resp.status_code)
        if rejected is not None:
            raise rejected
        raise SendFailed(f"{status} {resp.status_code or 'no-errcode'}")

    async def send_file(
        self,
        room_id: str,
        data: bytes,
        name: str,
        mimetype: str,
        reply_to: str | None,
        txn_id: str,
    ) -> str:
        """Send `data` as an end-to-end encrypted file (m.image for images, else m.file)
        and return the event's ID. Refused in a room that is not encrypted."""
        message = OutgoingMessage(
            room_id, name, "", reply_to=reply_to, file=OutgoingFile.of(data, name, mimetype)
        )
        return await self.send(message, txn_id)

    async def _file_content(self, file: OutgoingFile, notice: dict[str, Any]) -> dict[str, Any]:
        """The content of an encrypted file event: a fresh key for every send (so a
        retry uploads a new ciphertext; the event itself keeps its transaction ID), the
        ciphertext uploaded, and the key, IV and SHA-256 only inside the encrypted event."""
        data = file.data
        ciphertext, keys = await asyncio.to_thread(encrypt_for_matrix, data)
        resp, _ = await self._client.upload(
            lambda *_: ciphertext,
            content_type="application/octet-stream",
            filesize=len(ciphertext),
        )
        if not isinstance(resp, UploadResponse):
            status = getattr(getattr(resp, "transport_response", None), "status", None)
            errcode = getattr(resp, "status_code", None)
            rejected = classify_refusal(status if isinstance(status, int) else None, errcode)
            if rejected is not None:
                raise rejected
            raise SendFailed(f"upload failed: {status} {errcode or 'no-errcode'}")
        info: dict[str, Any] = {"mimetype": file.mimetype, "size": len(data)}
        if file.width is not None and file.height is not None:
            info.update(w=file.width, h=file.height)
        content = {
            "msgtype": "m.image" if file.mimetype.startswith("image/") else "m.file",
            "body": notice["body"],
            "filename": file.name,
            "info": info,
            "file": {"v": "v2", "url": resp.content_uri, **keys},
            "m.mentions": notice["m.mentions"],
        }
        if "m.relates_to" in notice:
            content["m.relates_to"] = notice["m.relates_to"]
        if notice["body"] != file.name:  # a caption (MSC2530), with its HTML
            content["format"] = notice["format"]
            content["formatted_body"] = notice["formatted_body"]
        return content

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
            if resp.status == 200 and isinstance(data, dict) and "event_id" in data:
                return str(data["event_id"])
            errcode = data.get("errcode") if isinstance(data, dict) else None
            rejected = classify_refusal(resp.status, errcode if isinstance(errcode, str) else None)
            if rejected is not None:
                raise rejected
            raise SendFailed(f"{resp.status} {errcode or 'no-errcode'}: plain-text send failed")
