"""A person's chat client, for the demo, the tests and the benchmark.

A real matrix-nio client with its own device and E2EE store: it creates encrypted rooms,
sends messages and collects what it can decrypt, exactly as a practitioner's client would.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    LoginResponse,
    MatrixRoom,
    MegolmEvent,
    RoomCreateResponse,
    RoomEncryptedMedia,
    RoomMessageMedia,
    RoomMessageNotice,
    RoomMessageText,
    RoomPreset,
    RoomSendResponse,
    UnknownEvent,
    UnknownToDeviceEvent,
    UploadResponse,
)
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment
from nio.event_builders import ToDeviceMessage
from nio.store import SqliteStore

from bot.sas import sas_emoji

ENCRYPTION_STATE = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}


@dataclass(frozen=True)
class Received:
    room_id: str
    event_id: str
    sender: str
    content: dict[str, Any]
    decrypted: bool
    at: float  # time.monotonic() when this client saw it
    type: str = "m.room.message"  # or a poll: org.matrix.msc3381.poll.start / .end

    @property
    def poll_answers(self) -> list[tuple[str, str]]:
        """(ID, text) of each answer of a poll this client was sent."""
        poll = self.content.get("org.matrix.msc3381.poll.start") or {}
        return [
            (str(a.get("id")), str(a.get("org.matrix.msc1767.text", "")))
            for a in poll.get("answers", [])
        ]

    @property
    def body(self) -> str:
        return str(self.content.get("body", ""))

    @property
    def in_reply_to(self) -> str | None:
        rel = self.content.get("m.relates_to") or {}
        reply = rel.get("m.in_reply_to") or {}
        value = reply.get("event_id")
        return str(value) if value else None


class ChatUser:
    def __init__(self, homeserver: str, user_id: str, password: str, store_dir: Path) -> None:
        store_dir.mkdir(parents=True, exist_ok=True)
        self.user_id = user_id
        self.password = password
        self.client = AsyncClient(
            homeserver,
            user_id,
            store_path=str(store_dir),
            config=AsyncClientConfig(
                store=SqliteStore,
                encryption_enabled=True,
                pickle_key=secrets.token_hex(16),
                max_limit_exceeded=None,
                max_timeouts=None,
            ),
        )
        self.received: list[Received] = []
        self.undecryptable = 0
        self.undecryptable_ids: list[str] = []
        # Incoming m.key.verification.request contents (nio does not handle requests).
        self.verification_requests: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self, device_name: str = "chat-user") -> None:
        resp = await self.client.login(self.password, device_name=device_name)
        if not isinstance(resp, LoginResponse):
            raise RuntimeError(f"login failed for {self.user_id}: {resp}")
        if self.client.should_upload_keys:
            await self.client.keys_upload()
        self.client.add_event_callback(
            self._on_event,
            (
                RoomMessageText,
                RoomMessageNotice,
                RoomEncryptedMedia,
                RoomMessageMedia,
                MegolmEvent,
                UnknownEvent,
            ),
        )
        self.client.add_to_device_callback(self._on_to_device, UnknownToDeviceEvent)
        await self.client.sync(timeout=0, full_state=True)
        self._task = asyncio.create_task(self.client.sync_forever(timeout=3000, loop_sleep_time=0))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.client.close()

    async def _on_to_device(self, event: Any) -> None:
        if event.type == "m.key.verification.request":
            self.verification_requests.append((event.sender, dict(event.source["content"])))

    async def _on_event(self, room: MatrixRoom, event: Any) -> None:
        if isinstance(event, MegolmEvent):
            self.undecryptable += 1
            self.undecryptable_ids.append(event.event_id)
            return
        self.received.append(
            Received(
                room_id=room.room_id,
                event_id=event.event_id,
                sender=event.sender,
                content=dict(event.source.get("content", {})),
                decrypted=bool(getattr(event, "decrypted", False)),
                at=time.monotonic(),
                type=str(event.source.get("type") or "m.room.message"),
            )
        )
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = 20.0, count: int = 1
    ) -> list[Received]:
        """Wait until `count` received messages match; return them in arrival order."""

        def matches() -> list[Received]:
            return [r for r in self.received if predicate(r)]

        async def _wait() -> list[Received]:
            async with self._changed:
                await self._changed.wait_for(lambda: len(matches()) >= count)
            return matches()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            got = matches()
            raise TimeoutError(
                f"{self.user_id}: {len(got)} of {count} expected messages after {timeout} s"
            ) from None

    async def wait_reply(self, event_id: str, timeout: float = 20.0) -> Received:
        return (await self.wait_for(lambda r: r.in_reply_to == event_id, timeout))[0]

    async def create_room(
        self,
        invite: list[str],
        *,
        encrypted: bool = True,
        direct: bool = True,
        name: str | None = None,
    ) -> str:
        resp = await self.client.room_create(
            is_direct=direct,
            invite=invite,
            name=name,
            preset=RoomPreset.private_chat,
            initial_state=[ENCRYPTION_STATE] if encrypted else [],
        )
        if not isinstance(resp, RoomCreateResponse):
            raise RuntimeError(f"room creation failed: {resp}")
        return str(resp.room_id)

    async def wait_joined(self, room_id: str, user_id: str, timeout: float = 20.0) -> None:
        """Wait until `user_id` has joined: only then will it get the room key we send."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            room = self.client.rooms.get(room_id)
            if room is not None and user_id in room.users and user_id not in room.invited_users:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{user_id} did not join {room_id} within {timeout} s")

    async def join(self, room_id: str) -> None:
        await self.client.join(room_id)

    async def send(self, room_id: str, body: str, extra: dict[str, Any] | None = None) -> str:
        content: dict[str, Any] = {"msgtype": "m.text", "body": body, **(extra or {})}
        resp = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        if not isinstance(resp, RoomSendResponse):
            raise RuntimeError(f"send failed: {resp}")
        return str(resp.event_id)

    # -- files, as a client attaches and opens them ----------------------------------------

    async def upload(self, data: bytes) -> str:
        """Upload bytes as they are; the mxc:// URL."""
        resp, _ = await self.client.upload(
            lambda _a, _b: data, content_type="application/octet-stream", filesize=len(data)
        )
        if not isinstance(resp, UploadResponse):
            raise RuntimeError(f"upload failed: {resp}")
        return str(resp.content_uri)

    async def send_file(
        self,
        room_id: str,
        data: bytes,
        name: str,
        *,
        mimetype: str = "application/octet-stream",
        msgtype: str = "m.file",
        encrypted: bool = True,
        declared_size: int | None = None,
        wrong_hash: bool = False,
        caption: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Send a file as Element does: encrypted with a fresh key (AES-CTR), the
        ciphertext uploaded, and the `file` object (url, JWK key, iv, SHA-256) in the
        event; or, with `encrypted=False`, uploaded in clear with a plain `url`.
        `wrong_hash` puts another file's hash in the event."""
        info: dict[str, Any] = {
            "mimetype": mimetype,
            "size": len(data) if declared_size is None else declared_size,
        }
        content: dict[str, Any] = {
            "msgtype": msgtype,
            "body": caption if caption is not None else name,
            "info": info,
            **(extra or {}),
        }
        if caption is not None:
            content["filename"] = name
        if encrypted:
            ciphertext, keys = encrypt_attachment(data)
            url = await self.upload(ciphertext)
            hashes = keys["hashes"]
            if wrong_hash:
                _, other = encrypt_attachment(data + b"\x00")
                hashes = other["hashes"]
            content["file"] = {
                "v": "v2",
                "url": url,
                "key": keys["key"],
                "iv": keys["iv"],
                "hashes": hashes,
                "mimetype": mimetype,
            }
        else:
            content["url"] = await self.upload(data)
        resp = await self.client.room_send(
            room_id, "m.room.message", content, ignore_unverified_devices=True
        )
        if not isinstance(resp, RoomSendResponse):
            raise RuntimeError(f"send failed: {resp}")
        return str(resp.event_id)

    async def send_poll_response(self, room_id: str, poll_id: str, answers: list[str]) -> str:
        """Tap answers in a poll, as Element does (MSC3381, encrypted in encrypted rooms)."""
        content = {
            "m.relates_to": {"rel_type": "m.reference", "event_id": poll_id},
            "org.matrix.msc3381.poll.response": {"answers": answers},
        }
        resp = await self.client.room_send(
            room_id, "org.matrix.msc3381.poll.response", content, ignore_unverified_devices=True
        )
        if not isinstance(resp, RoomSendResponse):
            raise RuntimeError(f"send failed: {resp}")
        return str(resp.event_id)

    async def open_file(self, content: dict[str, Any]) -> bytes:
        """Download (authenticated media API) and decrypt a received encrypted file."""
        file = content["file"]
        server, media_id = file["url"][len("mxc://") :].split("/", 1)
        resp = await self.client.send(
            "GET",
            f"/_matrix/client/v1/media/download/{server}/{media_id}",
            headers={"Authorization": f"Bearer {self.client.access_token}"},
        )
        async with resp:
            if resp.status != 200:
                raise RuntimeError(f"download failed: {resp.status}")
            ciphertext = await resp.read()
        plain: bytes = decrypt_attachment(
            ciphertext, file["key"]["k"], file["hashes"]["sha256"], file["iv"]
        )
        return plain

    # -- interactive verification (the to-device SAS flow), as a user's client does it --

    async def _poll(self, check: Callable[[], Any], what: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            await asyncio.sleep(0.02)
        raise TimeoutError(f"{self.user_id}: no {what} within {timeout} s")

    async def wait_verification_request(self, from_user: str, timeout: float = 20.0) -> str:
        """A verification request from `from_user`'s device; its transaction ID."""

        def incoming() -> str | None:
            for sender, content in self.verification_requests:
                if sender == from_user:
                    return str(content["transaction_id"])
            return None

        txn: str = await self._poll(incoming, "verification request", timeout)
        return txn

    async def accept_verification(self, txn: str, timeout: float = 20.0) -> None:
        """Accept the request ("ready"), then the emoji verification it starts."""
        sender, content = next(
            (s, c) for s, c in self.verification_requests if c["transaction_id"] == txn
        )
        ready = {
            "from_device": self.client.device_id,
            "methods": ["m.sas.v1"],
            "transaction_id": txn,
        }
        await self.client.to_device(
            ToDeviceMessage("m.key.verification.ready", sender, content["from_device"], ready)
        )
        await self._poll(lambda: txn in self.client.key_verifications, "SAS start", timeout)
        await self.client.accept_key_verification(txn)

    async def verification_emoji(self, txn: str, timeout: float = 20.0) -> list[tuple[str, str]]:
        """The emoji this client shows, once keys are exchanged."""

        def emoji() -> list[tuple[str, str]] | None:
            sas = self.client.key_verifications.get(txn)
            if sas is None or sas.established_sas is None:
                return None
            # Our own key must be out first, or a quick "They match" overtakes it.
            if any(
                m.type == "m.key.verification.key" and m.content.get("transaction_id") == txn
                for m in self.client.outgoing_to_device_messages
            ):
                return None
            return sas_emoji(sas)  # as Element computes them (nio's own are wrong)

        shown: list[tuple[str, str]] = await self._poll(emoji, "emoji", timeout)
        return shown

    async def confirm_verification(self, txn: str) -> None:
        """Press "They match"."""
        await self.client.confirm_short_auth_string(txn)

    def verification_state(self, txn: str) -> str:
        sas = self.client.key_verifications.get(txn)
        if sas is None:
            return "gone"
        if sas.verified:
            return "verified"
        return "canceled" if sas.canceled else "open"
