"""Device trust on a real Synapse: emoji (SAS) verification with the bot, strict mode,
and a known session whose keys change.

The practitioner's side is a real matrix-nio client doing what a user's app does: accept
the request, show seven emoji, press "They match". The test plays the people: it compares
the emoji the practitioner's app shows with the ones the bot showed to whoever vouches.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import vodozemac
from nio.api import Api

from bot.chat_user import ChatUser, Received
from bot.world import World
from tests.forms import referral
from tests.integration.live import open_dm, running
from tests.integration.test_cross_signing_e2e import element_crypto

POLL_START = "org.matrix.msc3381.poll.start"

__all__ = ["element_crypto"]  # the fixture: Element's crypto library, installed with npm

pytestmark = pytest.mark.integration


def make_strict(world: World, pinned: list[ChatUser]) -> None:
    """Strict mode; the advice team's sessions pinned by the operator (checked in person)."""
    lines = ["", "[trust]", 'mode = "strict"']
    for user in pinned:
        lines += [
            "[[trust.pinned_devices]]",
            f'user_id = "{user.user_id}"',
            f'device_id = "{user.client.device_id}"',
            f'ed25519 = "{user.client.olm.account.identity_keys["ed25519"]}"',
        ]
    with world.config_path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


async def second_session(world: World, user: ChatUser, name: str) -> ChatUser:
    """The same person logging in on another device."""
    other = ChatUser(world.hs.url, user.user_id, user.password, world.base / "clients" / name)
    await other.start(device_name=name)
    world.users.append(other)
    return other


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


def emoji_line(emoji: list[tuple[str, str]]) -> str:
    return "Emoji: " + ", ".join(f"{symbol} {name}" for symbol, name in emoji)


def from_bot(world: World, predicate: Callable[[Received], bool]) -> Callable[[Received], bool]:
    return lambda r: r.sender == world.bot_user and predicate(r)


async def test_strict_mode_verification_via_the_team_then_a_second_session_by_the_first(
    world: World,
) -> None:
    assert world.manager is not None
    make_strict(world, [world.worker, world.manager])
    async with running(world) as app:
        nurse, dm = await open_dm(world, f"nurse-{world.bot_user[1:5]}")
        device = nurse.client.device_id

        # 1. A referral from a session the bot has not verified: not acted on, and the
        #    session is told so in a notice it can read (unencrypted, no referral data).
        first = await nurse.send(dm, referral(Child_name="Unverified Sender"))
        notice = await nurse.wait_reply(first)
        assert not notice.decrypted
        assert "did NOT act" in notice.body and device in notice.body
        assert "Unverified Sender" not in notice.body

        # 2. The bot has sent that session a verification request; the nurse accepts it.
        started = time.monotonic()
        txn = await nurse.wait_verification_request(world.bot_user)
        await nurse.accept_verification(txn)
        emoji = await nurse.verification_emoji(txn)
        assert len(emoji) == 7

        # 3. The nurse has no verified session, so the bot shows its side to the advice
        #    team (encrypted); the worker phones the nurse and compares.
        shown = (
            await world.worker.wait_for(
                from_bot(world, lambda r: r.room_id == world.team_room and device in r.body)
            )
        )[0]
        assert shown.decrypted
        assert emoji_line(emoji) in shown.body, "the team sees exactly the nurse's emoji"
        await nurse.confirm_verification(txn)
        await world.worker.send(world.team_room, f"!verify-match {nurse.user_id} {device}")

        done = (await nurse.wait_for(from_bot(world, lambda r: "is now verified" in r.body)))[0]
        sas_round_trip = time.monotonic() - started
        assert done.decrypted, "the newly verified session reads the bot's messages"
        await until(lambda: nurse.verification_state(txn) == "verified", "nurse side verified")

        # 4. Now a referral is recorded and acknowledged, readable on that session.
        second = await nurse.send(dm, referral())
        ack = await nurse.wait_reply(second)
        assert ack.decrypted and "CHILD PROTECTION REFERRAL" in ack.body

        # 5. A second session of the same nurse, not verified: it gets no room key.
        phone = await second_session(world, nurse, f"nurse-phone-{world.bot_user[1:5]}")
        assert app.client is not None
        bot_view = app.client.device_store[nurse.user_id]
        await until(
            lambda: (
                phone.client.device_id in bot_view and bot_view[phone.client.device_id].blacklisted
            ),
            "the bot knows (and does not trust) the second session",
        )
        ask = await nurse.send(dm, "!help")
        help_reply = await nurse.wait_reply(ask)
        assert help_reply.decrypted
        await until(lambda: help_reply.event_id in phone.undecryptable_ids, "phone sees it")
        assert not any(r.event_id == help_reply.event_id for r in phone.received)

        # 5b. Its tap in a guided referral's poll is not acted on either: the tap gets the
        #     notice, and the nurse's own tap on the same poll still answers the question.
        asked_at = time.monotonic()
        await nurse.send(dm, "!refer")
        danger = (
            await nurse.wait_for(
                from_bot(
                    world,
                    lambda r: (
                        r.room_id == dm
                        and r.at >= asked_at
                        and r.type == POLL_START
                        and "immediate danger" in r.body.lower()
                    ),
                )
            )
        )[0]
        no = next(a for a, text in danger.poll_answers if text.lower().startswith("no"))
        tap = await phone.send_poll_response(dm, danger.event_id, [no])
        refused = await phone.wait_reply(tap)
        assert not refused.decrypted and "did NOT act" in refused.body
        tapped_at = time.monotonic()
        await nurse.send_poll_response(dm, danger.event_id, [no])
        await nurse.wait_for(
            from_bot(world, lambda r: r.at >= tapped_at and "full name" in r.body.lower())
        )
        cancel_at = time.monotonic()
        await nurse.send(dm, "cancel")
        await nurse.wait_for(from_bot(world, lambda r: r.at >= cancel_at and "Cancelled" in r.body))

        # 6. The second session is verified by the first: the bot shows its side in the
        #    DM, which only the verified first session can read.
        from_phone = await phone.send(dm, "!verify")
        reply = await phone.wait_reply(from_phone)
        # (The bot sent that session a request at its tap in 5b already.)
        assert not reply.decrypted and "already under way" in reply.body
        txn2 = await phone.wait_verification_request(world.bot_user)
        started = time.monotonic()
        await phone.accept_verification(txn2)
        phone_emoji = await phone.verification_emoji(txn2)
        in_dm = (
            await nurse.wait_for(
                from_bot(world, lambda r: "Verifying your session" in r.body and r.decrypted)
            )
        )[0]
        assert emoji_line(phone_emoji) in in_dm.body
        assert in_dm.event_id in phone.undecryptable_ids or not any(
            r.event_id == in_dm.event_id for r in phone.received
        ), "the session being verified cannot read the bot's side"
        await phone.confirm_verification(txn2)
        await nurse.send(dm, f"!verify-match {phone.client.device_id}")
        await phone.wait_for(from_bot(world, lambda r: "is now verified" in r.body and r.decrypted))
        second_round_trip = time.monotonic() - started

        later = await phone.send(dm, "!help")
        assert (await phone.wait_reply(later)).decrypted

    print(f"\nSAS via the team: {sas_round_trip:.2f} s; via own session: {second_round_trip:.2f} s")


async def test_a_session_cannot_vouch_for_itself(world: World) -> None:
    make_strict(world, [world.worker])
    async with running(world):
        nurse, dm = await open_dm(world, f"self-{world.bot_user[1:5]}")
        device = nurse.client.device_id
        ask = await nurse.send(dm, "!verify")
        txn = await nurse.wait_verification_request(world.bot_user)
        await nurse.accept_verification(txn)
        await nurse.verification_emoji(txn)
        await nurse.confirm_verification(txn)
        attempt = await nurse.send(dm, f"!verify-match {device}")
        refusal = await nurse.wait_reply(attempt)
        assert not refusal.decrypted and "Only a session that is already verified" in refusal.body
        # a worker without having phoned: "match" for a verification nobody started
        stray = await world.worker.send(
            world.team_room, f"!verify-match {nurse.user_id} NOSUCHDEVICE"
        )
        assert "no verification" in (await world.worker.wait_reply(stray)).body.lower()
        await asyncio.sleep(1.0)
        assert nurse.verification_state(txn) == "open", "nothing confirmed it on the bot's side"
        assert (await nurse.wait_reply(ask)).body  # the !verify itself was answered

        # The nurse presses "They don't match": nothing is trusted, and the nurse is told.
        await nurse.client.cancel_key_verification(txn, reject=True)
        told = await nurse.wait_for(from_bot(world, lambda r: "did not complete" in r.body))
        assert not told[0].decrypted and "the emoji did not match" in told[0].body
        later = await nurse.send(dm, "!help")
        assert "did NOT act" in (await nurse.wait_reply(later)).body


async def replace_device_keys(world: World, user: ChatUser) -> str:
    """Upload a new key pair for an existing device ID (Synapse accepts it); the new key."""
    account = vodozemac.Account()
    dev = user.client.device_id
    keys: dict[str, Any] = {
        "user_id": user.user_id,
        "device_id": dev,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"ed25519:{dev}": account.ed25519_key.to_base64(),
            f"curve25519:{dev}": account.curve25519_key.to_base64(),
        },
    }
    signature = account.sign(Api.to_canonical_json(keys).encode()).to_base64()
    keys["signatures"] = {user.user_id: {f"ed25519:{dev}": signature}}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{world.hs.url}/_matrix/client/v3/keys/upload",
            json={"device_keys": keys},
            headers={"Authorization": f"Bearer {user.client.access_token}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
    return str(account.ed25519_key.to_base64())


async def test_a_known_session_whose_keys_change_is_refused_and_announced(world: World) -> None:
    async with running(world) as app:  # trust on first use
        nurse, dm = await open_dm(world, f"keys-{world.bot_user[1:5]}")
        before = await nurse.send(dm, "!help")
        assert (await nurse.wait_reply(before)).decrypted
        # The nurse's other session, known to everyone before the change.
        tablet = await second_session(world, nurse, f"keys-tablet-{world.bot_user[1:5]}")
        bot_client = app.client
        assert bot_client is not None
        await until(
            lambda: tablet.client.device_id in bot_client.device_store[nurse.user_id],
            "the bot knows the tablet",
        )

        changed_at = time.monotonic()
        await replace_device_keys(world, nurse)
        device = nurse.client.device_id
        alert = (
            await world.worker.wait_for(
                from_bot(world, lambda r: r.room_id == world.team_room and "SECURITY" in r.body)
            )
        )[0]
        alerted = time.monotonic() - changed_at
        assert alert.decrypted
        assert nurse.user_id in alert.body and device in alert.body

        # The nurse's other session still works; the refused one gets no key any more.
        ask = await tablet.send(dm, "!help")
        answer = await tablet.wait_reply(ask)
        assert answer.decrypted
        await until(lambda: answer.event_id in nurse.undecryptable_ids, "refused session")

        # And what the refused session sends is not acted on.
        attempt = await nurse.send(dm, referral(Child_name="Changed Keys"))
        notice = await nurse.wait_reply(attempt)
        assert not notice.decrypted and "keys have changed" in notice.body
        await asyncio.sleep(0.5)
        alerts = [
            r for r in world.worker.received if r.sender == world.bot_user and "SECURITY" in r.body
        ]
        assert len(alerts) == 1, "announced once"
    print(f"\nkey change to team alert: {alerted:.2f} s")


def _plain(symbol: str) -> str:
    return symbol.replace("\ufe0f", "")  # emoji presentation selectors differ by library


@pytest.mark.parametrize("who_asks", ["bot", "element"])
async def test_elements_crypto_verifies_a_session_with_the_bot(
    world: World, element_crypto: Path, who_asks: str
) -> None:
    """A session run by Element's own crypto library answers the bot's request (or asks
    to verify the bot's session itself), compares emoji and ends verified on both sides;
    the bot's side is confirmed from the user's session the operator pinned."""
    nurse = await world.add_user(f"element-{world.bot_user[1:5]}")
    make_strict(world, [world.worker, nurse])
    async with running(world) as app:
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        node = await asyncio.create_subprocess_exec(
            "node",
            str(element_crypto.parent / "verify_with_bot.mjs"),
            world.hs.url,
            nurse.user_id,
            nurse.password,
            world.bot_user,
            "answer" if who_asks == "bot" else "ask",
            cwd=element_crypto.parent,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert node.stdin is not None and node.stdout is not None

        async def line() -> dict[str, Any]:
            raw = await asyncio.wait_for(node.stdout.readline(), 30)  # type: ignore[union-attr]
            assert raw, "the Element crypto client stopped"
            data: dict[str, Any] = json.loads(raw)
            return data

        try:
            element_device = (await line())["device_id"]
            bot_client = app.client
            assert bot_client is not None
            await until(
                lambda: element_device in bot_client.device_store[nurse.user_id],
                "the bot knows the Element session",
            )
            started = time.monotonic()
            if who_asks == "bot":
                ask = await nurse.send(dm, f"!verify {element_device}")
                assert "verification request" in (await nurse.wait_reply(ask)).body
            assert "request" in await line()
            element_emoji = (await line())["emoji"]
            shown = (
                await nurse.wait_for(
                    from_bot(world, lambda r: "Verifying your session" in r.body and r.decrypted)
                )
            )[0]
            expected = ", ".join(f"{_plain(s)} " for s, _ in element_emoji)
            bot_line = next(x for x in shown.body.split("\n") if x.startswith("- Emoji: "))
            bot_side = [part.split(" ", 1) for part in bot_line[9:].split(", ")]
            assert [(_plain(s), n) for s, n in bot_side] == [
                (_plain(s), n) for s, n in element_emoji
            ], expected
            node.stdin.write(b"confirm\n")
            await node.stdin.drain()
            await nurse.send(dm, f"!verify-match {element_device}")
            result = await line()
            elapsed = time.monotonic() - started
            assert result == {"done": True, "bot_device_verified": True}
            await nurse.wait_for(
                from_bot(
                    world, lambda r: f"{element_device} of" in r.body and "now verified" in r.body
                )
            )
        finally:
            if node.returncode is None:
                node.kill()
            await node.wait()
    print(f"\nSAS with Element's crypto, {who_asks} asking: {elapsed:.2f} s")
