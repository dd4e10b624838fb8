"""What the bot says about device trust: verification, unverified devices, changed keys.

The Matrix shell (`bot/device_trust.py`, `bot/verification.py`) notices what happened;
these functions word it and queue it in the outbox, inside the shell's transaction.

Two kinds of reader: a device that is not verified cannot decrypt anything the bot sends
in strict mode, so what it must read goes out as a short unencrypted notice
(`plaintext=True`) that carries no referral data: only a session ID and what to do.
Everything else (the emoji, who asked, outcomes) is encrypted as usual, so only verified
devices read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from handlers.notify import team_message
from handlers.ports import OutgoingMessage, txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from schemas.domain import Purpose
from storage.tx import Tx

EXPIRY_MINUTES = 5


@dataclass(frozen=True)
class KeyChange:
    user_id: str
    device_id: str
    changed: tuple[str, ...]  # "ed25519" and/or "curve25519"
    old_ed25519: str  # first seen (or pinned by the operator)
    new_ed25519: str  # served now
    pinned: bool = False


def fingerprint(key: str) -> str:
    """A key in groups of four, as Element shows a session key."""
    return " ".join(key[i : i + 4] for i in range(0, len(key), 4))


def _sas_lines(emoji: list[tuple[str, str]], decimals: tuple[int, ...]) -> list[str]:
    lines = []
    if emoji:
        lines.append("Emoji: " + ", ".join(f"{symbol} {name}" for symbol, name in emoji))
    if decimals:
        lines.append("Numbers: " + " ".join(str(n) for n in decimals))
    return lines


async def announce_key_change(tx: Tx, settings: Settings, change: KeyChange) -> None:
    what = " and ".join(
        {"ed25519": "identity (Ed25519) key", "curve25519": "encryption (Curve25519) key"}[c]
        for c in change.changed
    )
    doc = Doc().heading("SECURITY: a known session changed its keys; it is refused")
    if change.pinned:
        doc.para(
            f"The homeserver serves a different {what} for session {change.device_id} of "
            f"{change.user_id} than the one the operator pinned in the bot's configuration."
        )
    else:
        doc.para(
            f"Session {change.device_id} of {change.user_id} now has a different {what} from "
            "the one I first saw. A session never legitimately changes its keys."
        )
    doc.fields(
        ("User", change.user_id),
        ("Session", change.device_id),
        ("Key before", fingerprint(change.old_ed25519)),
        ("Key now", fingerprint(change.new_ed25519)),
    )
    doc.para(
        "I will never send that session any message keys again, and I do not act on what "
        "it sends. If the user did not expect this, treat it as a possible compromise of "
        "their account: phone them on a number you already hold, ask them to sign that "
        "session out and change their password. A new session can be verified with !verify."
    )
    await team_message(
        tx,
        settings,
        doc,
        txn_id=txn_id_for(
            f"key-change\x00{change.user_id}\x00{change.device_id}\x00{change.new_ed25519}",
            "key_change",
        ),
        purpose=Purpose.KEY_CHANGE,
    )


async def _send(
    tx: Tx,
    *,
    room_id: str,
    doc: Doc,
    txn_id: str,
    purpose: str,
    reply_to: str | None = None,
    plaintext: bool = False,
) -> None:
    body, html = doc.render()
    await tx.enqueue(
        OutgoingMessage(
            room_id, body, html, reply_to=reply_to, sensitive=False, plaintext=plaintext
        ),
        txn_id=txn_id,
        purpose=purpose,
    )


async def unverified_device_notice(
    tx: Tx,
    *,
    room_id: str,
    event_id: str,
    device_id: str | None,
    request_sent: bool,
    refused: bool = False,
) -> None:
    """To a session the bot does not trust: its message was not acted on."""
    if refused:
        doc = Doc().para(
            f"I did NOT act on this message and stored nothing from it: it came from your "
            f"session {device_id}, whose keys have changed since I first saw it. I no longer "
            "trust that session and it cannot read my replies.",
            strong=True,
        )
        doc.para(
            "Sign that session out, log in again and verify the new session with !verify. "
            "The advice team has been told."
        )
    else:
        session = f"your session {device_id}" if device_id else "a session I do not know yet"
        doc = Doc().para(
            f"I did NOT act on this message and stored nothing from it: it came from "
            f"{session}, which is not verified with me, so I cannot tell that it is yours, "
            "and it cannot read my encrypted replies.",
            strong=True,
        )
        if request_sent:
            doc.para(
                "I have sent that session a verification request: accept it there and "
                "compare the emoji. I show my side to your verified sessions, or, if you have "
                "none, to the advice team, who will phone you to compare. Once it is "
                "verified, send your message again."
            )
        else:
            doc.para(
                "Send !verify from that session to verify it (if I do not know its keys "
                "yet, wait a minute and send it again). Then send your message again."
            )
    doc.para("If a child is in immediate danger, phone the police on 999.")
    await _send(
        tx,
        room_id=room_id,
        doc=doc,
        txn_id=txn_id_for(event_id, Purpose.UNVERIFIED_DEVICE),
        purpose=Purpose.UNVERIFIED_DEVICE,
        reply_to=event_id,
        plaintext=True,
    )


async def verification_reply(
    tx: Tx, *, room_id: str, event_id: str, text: str, plaintext: bool
) -> None:
    """A short answer to a !verify command (plain text if the sender cannot decrypt)."""
    await _send(
        tx,
        room_id=room_id,
        doc=Doc().para(text),
        txn_id=txn_id_for(event_id, Purpose.VERIFY_REPLY),
        purpose=Purpose.VERIFY_REPLY,
        reply_to=event_id,
        plaintext=plaintext,
    )


async def show_sas(
    tx: Tx,
    *,
    room_id: str,
    user_id: str,
    device_id: str,
    device_name: str,
    emoji: list[tuple[str, str]],
    decimals: tuple[int, ...],
    transaction: str,
    for_team: bool,
) -> None:
    """The bot's side of the comparison, to people who can confirm it (encrypted)."""
    name = f' ("{device_name}")' if device_name else ""
    if for_team:
        doc = Doc().heading(f"Device verification: {user_id}, session {device_id}{name}")
        doc.para(
            f"{user_id} has no verified session yet, so someone in the team must compare "
            "my side of the verification with theirs. My side shows:"
        )
        doc.bullets(*_sas_lines(emoji, decimals))
        doc.para(
            f"Phone {user_id} on a number you already hold for them (not one given in a "
            "chat). Ask them to read out what their app shows for this verification. Only "
            "if every emoji matches, in the same order, and they say they started it, send:"
        )
        doc.pre(f"!verify-match {user_id} {device_id}")
        doc.para(
            f"and they press 'They match'. Otherwise send !verify-reject {user_id} "
            f"{device_id}. This expires in {EXPIRY_MINUTES} minutes."
        )
    else:
        doc = Doc().heading(f"Verifying your session {device_id}{name}")
        doc.para("My side of the verification shows:")
        doc.bullets(*_sas_lines(emoji, decimals))
        doc.para(
            "If that session shows exactly these, in the same order, press 'They match' "
            "there, and send this here from this (verified) session:"
        )
        doc.pre(f"!verify-match {device_id}")
        doc.para(
            f"If they differ, or you did not start this, send !verify-reject {device_id}. "
            f"This expires in {EXPIRY_MINUTES} minutes."
        )
    await _send(
        tx,
        room_id=room_id,
        doc=doc,
        txn_id=txn_id_for(f"sas\x00{transaction}\x00{room_id}", Purpose.SHOW_SAS),
        purpose=Purpose.SHOW_SAS,
    )


async def verification_finished(
    tx: Tx,
    *,
    room_id: str,
    user_id: str,
    device_id: str,
    transaction: str,
    verified: bool,
    reason: str = "",
    plaintext: bool = False,
) -> None:
    if verified:
        doc = Doc().para(
            f"Session {device_id} of {user_id} is now verified: it receives my messages "
            "and I act on what it sends."
        )
    else:
        doc = Doc().para(
            f"The verification of session {device_id} of {user_id} did not complete"
            f"{': ' + reason if reason else ''}. Nothing was trusted. Send !verify from that "
            "session to try again."
        )
    await _send(
        tx,
        room_id=room_id,
        doc=doc,
        txn_id=txn_id_for(f"sas\x00{transaction}\x00{room_id}", Purpose.VERIFY_DONE),
        purpose=Purpose.VERIFY_DONE,
        plaintext=plaintext,
    )
