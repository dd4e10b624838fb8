"""matrix-nio's SAS (emoji verification) object, fixed where it matters here.

nio 0.26 with vodozemac verifies nio against nio, but departs from the specification (and
from Element's crypto, matrix-sdk-crypto) in ways that either break verification with
current clients or weaken it:

- The commitment is sent and checked as hex; the specification (and every other client)
  uses unpadded base64 of the same SHA-256. BotSas checks either and sends base64.
- Its MACs are computed with vodozemac's correct base64, which is the method the
  specification calls "hkdf-hmac-sha256.v2", while nio names it "hkdf-hmac-sha256" (whose
  specified form is libolm's old, wrongly encoded one). BotSas offers and prefers ".v2";
  with a nio client both sides still call it "hkdf-hmac-sha256" and agree.
- A MAC that does not cover the device's own key is marked cancelled and then
  overwritten with "MAC received" on the next line, which would verify a device whose
  key was never checked. BotSas cancels.
- Its emoji are wrong: it takes vodozemac's seven emoji *indices* for raw bytes and
  regroups their bits, so a nio client and the bot agree with each other but not with
  any other client. BotSas uses the indices as they are, with the specification's names.
- Timeouts: one minute from the start (nio never refreshes its "last event" time). A
  person must compare the bot's side, perhaps by phone, before the bot confirms:
  BotSas allows five minutes.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from hashlib import sha256
from typing import Any, ClassVar

from nio.api import Api
from nio.crypto.sas import Sas, SasState

from handlers.device_trust import EXPIRY_MINUTES

MAC_V2 = "hkdf-hmac-sha256.v2"
MAC_NIO = "hkdf-hmac-sha256"


# The specification's table (index → emoji, name); nio's names differ in three places.
EMOJI: tuple[tuple[str, str], ...] = tuple(
    (symbol, {"Wrench": "Spanner", "Thumbs up": "Thumbs Up", "Airplane": "Aeroplane"}.get(n, n))
    for symbol, n in Sas.emoji
)


def sas_emoji(sas: Any) -> list[tuple[str, str]]:
    """The seven emoji as the specification (and Element) computes them."""
    indices = sas.established_sas.bytes(sas._extra_info).emoji_indices
    return [EMOJI[i] for i in indices]


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode().rstrip("=")


class BotSas(Sas):  # type: ignore[misc]  # nio is untyped
    _max_age = timedelta(minutes=EXPIRY_MINUTES)
    _max_event_timeout = timedelta(minutes=EXPIRY_MINUTES)
    _mac_v1: ClassVar[list[str]] = [MAC_V2, MAC_NIO]  # what a start we send offers

    @classmethod
    def adopt(cls, sas: Any) -> None:
        """Turn a Sas nio made from someone else's start into a BotSas (before accepting)."""
        sas.__class__ = cls
        if sas.commitment and len(sas.commitment) == 64:  # nio's hex form
            sas.commitment = _b64(bytes.fromhex(sas.commitment))

    def get_emoji(self) -> list[tuple[str, str]]:
        return sas_emoji(self)

    def _check_commitment(self, key: str) -> bool:
        me: Any = self
        content = Api.to_canonical_json(me.start_verification().content)
        digest = sha256(key.encode() + content.encode()).digest()
        return me.commitment in (_b64(digest), digest.hex())

    def accept_verification(self) -> Any:
        message = super().accept_verification()
        me: Any = self
        if MAC_V2 in (me.mac_methods or []):
            me.chosen_mac_method = MAC_V2
            message.content["message_authentication_code"] = MAC_V2
        return message

    def receive_accept_event(self, event: Any) -> None:
        """nio's check, with ".v2" allowed (nio's own list is hard-wired)."""
        me: Any = self
        if event.message_authentication_code != MAC_V2:
            super().receive_accept_event(event)
            return
        event.message_authentication_code = MAC_NIO
        super().receive_accept_event(event)
        event.message_authentication_code = MAC_V2
        if me.state == SasState.accepted:
            me.chosen_mac_method = MAC_V2

    def receive_mac_event(self, event: Any) -> None:
        super().receive_mac_event(event)
        me: Any = self
        covered = me.other_olm_device.id in me.verified_devices
        if me.state == SasState.mac_received and not covered:
            me.state = SasState.canceled
            me.cancel_code, me.cancel_reason = Sas._key_mismatch_error
