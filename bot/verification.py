"""Interactive (emoji/SAS) verification of users' devices, and who may vouch for one.

Flow (to-device request, ready, then matrix-nio's SAS: start, accept, key, mac; then done):

1. A user sends `!verify` (or, in strict mode, anything at all) from a session the bot has
   not verified. The bot sends that session a verification request.
2. The user accepts it there; keys are exchanged; both sides show seven emoji.
3. The bot has no screen and no one behind it, so its side is shown to people who can
   confirm it through a channel the new session does not control: the user's own
   verified sessions (in the room the request came from; in strict mode only verified
   sessions can decrypt it), and, if the user has none, the advice team, who phone the
   user on a number they already hold. One of them confirms with `!verify-match`, sent
   from a verified session (a session cannot vouch for itself, and in strict mode an
   unverified session is not listened to at all). Only then does the bot send its MAC.
4. The user presses "They match" on the new session; when both MACs are in, nio marks
   the device verified and the bot records it (`DeviceTrust.mark_verified`).

Showing the emoji to the session being verified would prove nothing: whoever holds that
session (someone with the user's password, or a homeserver that made it up) would see
them and confirm them.

What the bot needs to say goes through the outbox like everything else; messages to a
session that is not verified are short unencrypted notices (no referral data).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nio import AsyncClient, KeyVerificationCancel, ToDeviceError, UnknownToDeviceEvent
from nio.crypto.sas import SasState
from nio.event_builders import ToDeviceMessage

from bot.device_trust import DeviceTrust
from bot.sas import BotSas
from handlers import device_trust as say
from handlers.commands import COMMANDS, screened_words, static_refusal
from handlers.settings import CurrentSettings, Settings
from schemas.messages import InboxItem
from storage.engine import Store
from storage.tx import Tx

log = logging.getLogger(__name__)

# Declared in the command table (handlers/commands.py), answered here as they arrive.
VERIFY_COMMANDS = screened_words()
SAS_METHOD = "m.sas.v1"
EXPIRY_S = say.EXPIRY_MINUTES * 60


@dataclass
class Verification:
    transaction: str
    user_id: str
    device_id: str
    request_room: str | None  # where the user's verified sessions are shown our side
    # requested: we sent m.key.verification.request, waiting for "ready";
    # ready: they asked, we answered "ready", waiting for their "start"; sas: under way.
    phase: str = "sas"
    started: float = field(default_factory=time.monotonic)
    shown_in: list[str] = field(default_factory=list)
    confirmed_by: str | None = None
    finished: bool = False


@dataclass(frozen=True)
class _Notice:
    """Something `screen` decided to say, written in the sync's own transaction."""

    write: Callable[[Tx], Awaitable[None]]


class Verifier:
    def __init__(
        self,
        client: AsyncClient,
        store: Store,
        settings: Settings | CurrentSettings,
        trust: DeviceTrust,
    ) -> None:
        self.client = client
        self.store = store
        # The holder shared with the pipeline: roles as they are now, after any reload.
        self.current = CurrentSettings.of(settings)
        self.trust = trust
        self.sessions: dict[str, Verification] = {}
        self._notices: list[_Notice] = []
        self._actions: list[Callable[[], Awaitable[None]]] = []
        self._starting: set[tuple[str, str]] = set()

    # -- screening incoming messages (called by the sync loop, no I/O) --------------------

    @property
    def settings(self) -> Settings:
        """The settings in force now (read on every use, never kept)."""
        return self.current.current

    def _session(self, event: Any, room_id: str) -> Any:
        """The Megolm session a message was decrypted with, if it came straight from its
        sender's device (not forwarded by another)."""
        sender_key = getattr(event, "sender_key", None)
        session_id = getattr(event, "session_id", None)
        olm = self.client.olm
        if not sender_key or not session_id or olm is None:
            return None
        session = olm.inbound_group_store.get(room_id, sender_key, session_id)
        return None if session is None or session.forwarding_chain else session

    def sending_device(self, event: Any, room_id: str) -> Any:
        """The device that sent a decrypted message, if its keys prove it; else None.

        The Megolm session must have come straight from that device and carry that
        device's Ed25519 key.
        """
        session = self._session(event, room_id)
        if session is None:
            return None
        device = self.client.device_store.device_from_sender_key(event.sender, session.sender_key)
        if device is None or session.ed25519 != device.ed25519:
            return None
        return device

    def screen(self, event: Any, room_id: str, item: InboxItem | None) -> InboxItem | None:
        """Take verification commands out of the inbox, and, in strict mode, messages from
        sessions that are not verified (answered with a notice, never stored)."""
        if item is None or item.state != "pending":
            return item
        if "body" not in item.payload and "poll_of" not in item.payload:
            return item
        body = str(item.payload.get("body", ""))  # a poll response has none
        words = body.strip().split("\n", 1)[0].split()
        word = words[0].lower() if words else ""
        device = self.sending_device(event, room_id)
        vouched = device is not None and self.trust.vouches_for(device)
        trusted = device is not None and self.trust.is_trusted(event.sender, device.id)
        if word in VERIFY_COMMANDS:
            self.command(item, word, words[1:], device, vouched, readable=trusted)
            return None
        if device is not None:
            refused = self.trust.is_refused(event.sender, device.id)
        else:  # nio keeps a refused device's old keys: look for the new ones we refused
            session = self._session(event, room_id)
            refused = session is not None and self.trust.is_refused_key(
                event.sender, session.ed25519
            )
        if refused or (self.trust.strict and not vouched):
            sent = (
                device is not None
                and not refused
                and (
                    self._want_start(event.sender, device, room_id)
                    or self._pending(event.sender, device.id)
                )
            )
            device_id = device.id if device is not None else None
            log.info("not acted on, session not trusted: event=%s", item.event_id)

            async def notice(tx: Tx) -> None:
                await say.unverified_device_notice(
                    tx,
                    room_id=room_id,
                    event_id=item.event_id,
                    device_id=device_id,
                    request_sent=sent,
                    refused=refused,
                )

            self._notices.append(_Notice(notice))
            return None
        return item

    def _reply(self, item: InboxItem, text: str, *, readable: bool) -> None:
        async def write(tx: Tx) -> None:
            await say.verification_reply(
                tx,
                room_id=item.room_id,
                event_id=item.event_id,
                text=text,
                plaintext=not readable,
            )

        self._notices.append(_Notice(write))

    def command(
        self,
        item: InboxItem,
        word: str,
        args: list[str],
        device: Any,
        vouched: bool,
        *,
        readable: bool,
    ) -> None:
        """A verification command; `vouched`: it came from a session verified with the bot
        (established by `screen` from the message's keys). Only queues replies and actions."""
        if word == "!verify":
            text = self._verify(item.sender, args, device, item.room_id)
        else:
            text = self._vouch(item, word, args, vouched)
        self._reply(item, text, readable=readable)

    def _vouch(self, item: InboxItem, word: str, args: list[str], vouched: bool) -> str:
        """`!verify-match` / `!verify-reject` [@user] SESSION: a verified session confirms
        (or rejects) the emoji shown for a session waiting for it."""
        sender = item.sender
        if not vouched:
            return (
                f"Only a session that is already verified with me can use {word}. Nothing "
                "was changed."
            )
        if len(args) == 1:
            user_id, device_id = sender, args[0]
        elif len(args) == 2 and args[0].startswith("@"):
            user_id, device_id = args
        else:
            return (
                f"Use {word} SESSION for your own session, or {word} @user:server SESSION "
                "(advice team)."
            )
        if user_id != sender:
            # Someone else's session: the table's form for that (advice team; the
            # advice-team room or a DM), checked against the settings in force now.
            private = bool(item.payload.get("private"))
            form = COMMANDS[word].also[0]
            refused = static_refusal(form, word, sender, item.room_id, private, self.settings)
            if refused is not None:
                return refused
        active = self._active(user_id, device_id)
        if active is None or not active.shown_in:
            return (
                f"There is no verification of session {device_id} of {user_id} waiting for "
                "confirmation (they expire after a few minutes). Nothing was changed."
            )
        if word == "!verify-match":
            self._actions.append(lambda: self._confirm(active, sender))
            return (
                f"Confirmed on my side for session {device_id} of {user_id}. It is verified "
                "as soon as 'They match' is pressed on that session."
            )
        self._actions.append(lambda: self._reject(active, sender))
        return (
            f"Cancelled the verification of session {device_id} of {user_id}. Nothing was trusted."
        )

    def _verify(self, sender: str, args: list[str], device: Any, room_id: str) -> str:
        """`!verify [SESSION]`: start verifying the sender's own session."""
        if args:
            target = self.client.device_store[sender].get(args[0])
            if target is None:
                return (
                    f"I do not know a session {args[0]} of yours. Your session IDs are in "
                    "your app's settings, under Sessions."
                )
        elif device is None:
            return (
                "I cannot tell which of your sessions sent this (I may not know its keys yet). "
                "Wait a minute and send !verify again."
            )
        else:
            target = device
        if self.trust.is_refused(sender, target.id):
            return (
                f"Session {target.id} is refused: its keys changed. Sign it out, log in "
                "again and verify the new session."
            )
        if self.trust.is_verified(sender, target.id):
            return f"Session {target.id} is already verified."
        if not self._want_start(sender, target, room_id):
            return (
                f"A verification of session {target.id} is already under way: accept it "
                "on that session."
            )
        return (
            f"I have sent session {target.id} a verification request: accept it there and "
            "compare the emoji. I show my side to your verified sessions or, if you have "
            "none, to the advice team, who will phone you to compare."
        )

    def _pending(self, user_id: str, device_id: str) -> bool:
        """A verification of this device is under way or about to be requested."""
        starting = (user_id, device_id) in self._starting
        return starting or self._active(user_id, device_id) is not None

    def _want_start(self, user_id: str, device: Any, room_id: str) -> bool:
        """Queue a verification request to the device; False if one is already running."""
        if self._pending(user_id, device.id):
            return False
        if self.trust.is_refused(user_id, device.id):
            return False
        self._starting.add((user_id, device.id))
        self._actions.append(lambda: self._start(user_id, device, room_id))
        return True

    def _active(self, user_id: str, device_id: str) -> Verification | None:
        for v in self.sessions.values():
            if v.user_id == user_id and v.device_id == device_id and not v.finished:
                return v
        return None

    # -- after the sync's transaction ----------------------------------------------------

    async def write(self, tx: Tx) -> None:
        """Queue the notices `screen` decided on, in the caller's transaction."""
        notices, self._notices = self._notices, []
        for notice in notices:
            await notice.write(tx)

    async def act(self) -> None:
        """Do what the screened messages asked for (to-device sends), then catch up."""
        actions, self._actions = self._actions, []
        for action in actions:
            try:
                await action()
            except Exception as exc:  # one failed verification must not stop the sync loop
                log.warning("verification step failed: %s", type(exc).__name__)
        await self.after_sync()

    async def _start(self, user_id: str, device: Any, room_id: str) -> None:
        """Ask the device to verify (m.key.verification.request, the to-device form current
        clients answer); the SAS itself starts when it replies "ready"."""
        self._starting.discard((user_id, device.id))
        txn = uuid.uuid4().hex
        content = {
            "from_device": self.client.device_id,
            "methods": [SAS_METHOD],
            "timestamp": int(time.time() * 1000),
            "transaction_id": txn,
        }
        resp = await self.client.to_device(
            ToDeviceMessage("m.key.verification.request", user_id, device.id, content)
        )
        if isinstance(resp, ToDeviceError):
            log.warning("could not send a verification request: device=%s", device.id)
            return
        self.sessions[txn] = Verification(txn, user_id, device.id, room_id, phase="requested")
        log.info("verification requested: device=%s txn=%s", device.id, txn)

    async def _start_sas(self, v: Verification) -> None:
        client = self.client
        device = client.device_store[v.user_id].get(v.device_id)
        if device is None:
            return
        sas = BotSas(
            client.user_id,
            client.device_id,
            client.olm.account.identity_keys["ed25519"],
            device,
            transaction_id=v.transaction,
        )
        client.olm.key_verifications[v.transaction] = sas
        v.phase = "sas"
        await client.to_device(sas.start_verification())
        log.info("verification started: device=%s txn=%s", v.device_id, v.transaction)

    async def on_to_device(self, events: Iterable[Any]) -> None:
        """The parts of the flow nio does not know: request, ready, done (after nio has
        handled the sync, so a "start" it parsed is already in `key_verifications`)."""
        for event in events:
            if isinstance(event, KeyVerificationCancel):
                # nio drops a cancelled SAS at once; the reason is only here.
                v = self.sessions.get(event.transaction_id)
                if v is not None and not v.finished and event.sender == v.user_id:
                    await self._finish(v, verified=False, reason=_REASONS.get(event.code, ""))
                continue
            if not isinstance(event, UnknownToDeviceEvent):
                continue
            content = event.source.get("content")
            if not isinstance(content, dict):
                continue
            txn = content.get("transaction_id")
            device_id = content.get("from_device")
            if not isinstance(txn, str) or not isinstance(device_id, str):
                continue
            if event.type == "m.key.verification.ready":
                v = self.sessions.get(txn)
                if (
                    v is not None
                    and v.phase == "requested"
                    and event.sender == v.user_id
                    and device_id == v.device_id
                    and SAS_METHOD in content.get("methods", [])
                ):
                    await self._start_sas(v)
            elif event.type == "m.key.verification.request":
                await self._answer_request(event.sender, device_id, txn, content)

    async def _answer_request(
        self, user_id: str, device_id: str, txn: str, content: dict[str, Any]
    ) -> None:
        """Someone asked to verify the bot's device: say we are ready (SAS only)."""
        device = self.client.device_store[user_id].get(device_id)
        if (
            device is None
            or txn in self.sessions
            or not self.settings.is_allowed(user_id)
            or self.trust.is_refused(user_id, device_id)
            or SAS_METHOD not in content.get("methods", [])
        ):
            return
        v = Verification(txn, user_id, device_id, self._dm_with(device), phase="ready")
        self.sessions[txn] = v
        ready = {
            "from_device": self.client.device_id,
            "methods": [SAS_METHOD],
            "transaction_id": txn,
        }
        await self.client.to_device(
            ToDeviceMessage("m.key.verification.ready", user_id, device_id, ready)
        )
        log.info("verification request answered: device=%s txn=%s", device_id, txn)

    async def _confirm(self, v: Verification, by: str) -> None:
        if v.transaction not in self.client.key_verifications or v.finished:
            return
        v.confirmed_by = by
        async with self.trust.lock:  # nio may mark the device verified right here
            await self.client.confirm_short_auth_string(v.transaction)
        log.info("verification confirmed on the bot's side: device=%s", v.device_id)

    async def _reject(self, v: Verification, by: str) -> None:
        if v.transaction not in self.client.key_verifications or v.finished:
            return
        await self.client.cancel_key_verification(v.transaction, reject=True)
        log.info("verification rejected: device=%s", v.device_id)

    # -- following nio's SAS state ---------------------------------------------------------

    async def after_sync(self) -> None:
        """Show our side once keys are exchanged; record the outcome when it is done."""
        client = self.client
        if client.olm is None:
            return
        for txn, sas in list(client.key_verifications.items()):
            v = self.sessions.get(txn)
            if v is None or v.phase == "ready":
                await self._adopt(txn, sas, v)
                continue
            if v.finished or sas.other_olm_device.id != v.device_id:
                continue
            if sas.canceled:
                await self._finish(v, verified=False, reason=_reason(sas))
            elif sas.verified:
                await self._finish(v, verified=True)
            elif sas.state in (SasState.key_received, SasState.mac_received) and not v.shown_in:
                await self._show(v, sas)
        now = time.monotonic()
        for txn, v in list(self.sessions.items()):
            gone = txn not in client.key_verifications
            if not v.finished and (
                (v.phase == "sas" and gone) or (v.phase != "sas" and now - v.started > EXPIRY_S)
            ):
                await self._finish(v, verified=False, reason="it expired")
            if v.finished and gone:
                del self.sessions[txn]

    async def _adopt(self, txn: str, sas: Any, v: Verification | None) -> None:
        """A SAS the other side started: after our "ready", or a legacy start without a
        request. Accept it if the device may be verified."""
        if sas.we_started_it or sas.state != SasState.started or sas.canceled:
            return
        device = sas.other_olm_device
        if v is not None and (v.user_id, v.device_id) != (device.user_id, device.id):
            return
        if not self.settings.is_allowed(device.user_id) or self.trust.is_refused(
            device.user_id, device.id
        ):
            await self.client.cancel_key_verification(txn)
            return
        BotSas.adopt(sas)  # the same object, with BotSas's fixes
        if v is None:
            v = Verification(txn, device.user_id, device.id, self._dm_with(device))
            self.sessions[txn] = v
        v.phase = "sas"
        await self.client.accept_key_verification(txn)
        log.info("verification accepted: device=%s txn=%s", device.id, txn)

    def _dm_with(self, device: Any) -> str | None:
        for room in self.client.rooms.values():
            if room.encrypted and room.member_count <= 2 and device.user_id in room.users:
                return str(room.room_id)
        return None

    async def _show(self, v: Verification, sas: Any) -> None:
        emoji = sas.get_emoji() if "emoji" in sas.short_auth_string else []
        decimals = tuple(sas.get_decimals()) if "decimal" in sas.short_auth_string else ()
        device = sas.other_olm_device
        team = self.settings.advice_team_room
        targets: list[tuple[str, bool]] = []
        if v.request_room is not None and v.request_room != team:
            targets.append((v.request_room, False))  # the user's verified sessions
        if not targets or not self.trust.verified_devices(v.user_id) or v.request_room == team:
            targets.append((team, True))  # the team, who phone the user
        async with self.store.transaction() as tx:
            for room_id, for_team in targets:
                await say.show_sas(
                    tx,
                    room_id=room_id,
                    user_id=v.user_id,
                    device_id=v.device_id,
                    device_name=str(getattr(device, "display_name", "") or ""),
                    emoji=list(emoji),
                    decimals=decimals,
                    transaction=v.transaction,
                    for_team=for_team,
                )
        v.shown_in = [room for room, _ in targets]
        log.info("verification shown: device=%s rooms=%d", v.device_id, len(targets))

    async def _finish(self, v: Verification, *, verified: bool, reason: str = "") -> None:
        v.finished = True
        if verified:
            verified = await self.trust.mark_verified(
                v.user_id, v.device_id, by=v.confirmed_by or "unknown"
            )
            if verified:
                # Request-based flows end with "done" from both sides (nio does not send it).
                await self.client.to_device(
                    ToDeviceMessage(
                        "m.key.verification.done",
                        v.user_id,
                        v.device_id,
                        {"transaction_id": v.transaction},
                    )
                )
            else:
                reason = "its keys changed during the verification"
        log.info(
            "verification %s: device=%s after %.1f s%s",
            "completed" if verified else "failed",
            v.device_id,
            time.monotonic() - v.started,
            f" ({reason})" if reason else "",
        )
        rooms_to_tell = list(dict.fromkeys([*v.shown_in, v.request_room]))
        async with self.store.transaction() as tx:
            for room_id in rooms_to_tell:
                if room_id is None:
                    continue
                await say.verification_finished(
                    tx,
                    room_id=room_id,
                    user_id=v.user_id,
                    device_id=v.device_id,
                    transaction=v.transaction,
                    verified=verified,
                    reason=reason,
                    plaintext=not verified and room_id != self.settings.advice_team_room,
                )


_REASONS = {
    "m.user": "it was cancelled",
    "m.timeout": "it expired",
    "m.mismatched_sas": "the emoji did not match",
    "m.key_mismatch": "the keys did not match",
    "m.mismatched_commitment": "the keys did not match",
}


def _reason(sas: Any) -> str:
    return _REASONS.get(str(sas.cancel_code), "it was cancelled")
