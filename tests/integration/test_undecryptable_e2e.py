"""A referral whose room key reaches the bot late is kept, not lost (real Synapse, E2EE).

The practitioner's client (matrix-nio) encrypts the referral with a new Megolm session and
holds the room key back, as a client does whose to-device message is delayed or that had
not yet seen the bot's device. The bot cannot decrypt it: it must keep the encrypted
event (inbox state `undecrypted`, with event ID, sender and room), ask for the key, and
handle the referral once the key arrives, even if it has restarted in between.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import pytest
from nio.crypto.sessions import OutboundGroupSession

from bot.chat_user import ChatUser
from bot.world import World
from tests.forms import referral
from tests.integration.botproc import poll_until
from tests.integration.live import db_rows, open_dm, running
from tests.integration.test_intake_e2e import bot_replies

pytestmark = pytest.mark.integration


async def send_with_key_withheld(
    user: ChatUser, room_id: str, body: str
) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Send `body` encrypted with a new Megolm session whose key goes to nobody; return the
    event ID and a coroutine function that sends the key (from message index 0) later."""
    olm = user.client.olm
    assert olm is not None
    olm.create_outbound_group_session(room_id)
    session = olm.outbound_group_sessions[room_id]
    unsent_copy = OutboundGroupSession.from_pickle(session.pickle("k"), "k")  # at index 0
    session.shared = True  # room_send now encrypts without sharing the key with anyone
    event_id = await user.send(room_id, body)

    async def send_key() -> None:
        olm.outbound_group_sessions[room_id] = unsent_copy
        await user.client.share_group_session(room_id, ignore_unverified_devices=True)
        del olm.outbound_group_sessions[room_id]  # later messages use a fresh session

    return event_id, send_key


def inbox(world: World, event_id: str) -> list[tuple[object, ...]]:
    return db_rows(world, "SELECT state, sender, room_id FROM inbox WHERE event_id = ?", event_id)


async def test_referral_with_a_late_room_key_is_kept_and_handled(world: World) -> None:
    async with running(world):
        nurse, dm = await open_dm(world, f"late-{world.bot_user[1:5]}")
        first, send_first_key = await send_with_key_withheld(
            nurse, dm, referral(Child_name="Late Key Child")
        )
        await poll_until(lambda: bool(inbox(world, first)), 20, "the undecryptable event stored")
        assert inbox(world, first) == [("undecrypted", nurse.user_id, dm)]
        assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(0,)]

        await send_first_key()
        ack = await nurse.wait_reply(first, timeout=20)
        assert "CHILD PROTECTION REFERRAL" in ack.body and ack.decrypted

        # The key of a second one arrives while the bot is stopped.
        second, send_second_key = await send_with_key_withheld(
            nurse, dm, referral(Child_name="Later Key Child")
        )
        await poll_until(lambda: bool(inbox(world, second)), 20, "the second event stored")
    assert inbox(world, second) == [("undecrypted", nurse.user_id, dm)]
    await send_second_key()

    async with running(world):
        second_ack = await nurse.wait_reply(second, timeout=20)

    assert len(bot_replies(nurse, world, first)) == 1
    assert len(bot_replies(nurse, world, second)) == 1
    refs = [re.findall(r"REF-\d{4}-\d{6}", a.body)[0] for a in (ack, second_ack)]
    stored = db_rows(world, "SELECT ref, event_id FROM referrals ORDER BY id")
    assert stored == [(refs[0], first), (refs[1], second)]
    assert inbox(world, first)[0][0] == "done" and inbox(world, second)[0][0] == "done"


async def test_sender_is_told_when_the_key_does_not_come(world: World) -> None:
    async with running(world) as app:
        assert app.sync is not None
        app.sync.notice_after_s = 0  # production waits two minutes
        gp, dm = await open_dm(world, f"nokey-{world.bot_user[1:5]}")
        event_id, send_key = await send_with_key_withheld(gp, dm, referral(Child_name="No Key"))
        notice = await gp.wait_reply(event_id, timeout=20)
        assert inbox(world, event_id)[0][0] == "undecrypted"
        assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(0,)]

        await send_key()  # the key turns up after all: the referral is still taken
        await gp.wait_for(lambda r: r.in_reply_to == event_id, count=2, timeout=20)

    assert notice.decrypted and "cannot read your message" in notice.body
    assert "NOTHING from it is recorded yet" in notice.body
    notice_and_ack = bot_replies(gp, world, event_id)
    assert len(notice_and_ack) == 2 and "CHILD PROTECTION REFERRAL" in notice_and_ack[1]
    assert db_rows(world, "SELECT event_id FROM referrals") == [(event_id,)]


async def test_a_late_key_keeps_the_message_in_its_place(world: World) -> None:
    """A referral sent after one whose key is late waits for it (a bounded time): the
    earlier one is acknowledged first and gets the earlier REF."""
    async with running(world):
        nurse, dm = await open_dm(world, f"order-{world.bot_user[1:5]}")
        first, send_first_key = await send_with_key_withheld(
            nurse, dm, referral(Child_name="Held Child")
        )
        olm = nurse.client.olm
        assert olm is not None
        del olm.outbound_group_sessions[dm]  # the next message goes with a shared key
        second = await nurse.send(dm, referral(Child_name="Waiting Child"))
        await poll_until(
            lambda: (
                db_rows(world, "SELECT state FROM inbox WHERE event_id = ?", second)
                == [("pending",)]
            ),
            20,
            "the second referral stored",
        )
        # Readable, but it waits for the earlier message of its room.
        with pytest.raises(TimeoutError):
            await nurse.wait_reply(second, timeout=2)
        assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(0,)]

        await send_first_key()
        first_ack = await nurse.wait_reply(first, timeout=20)
        second_ack = await nurse.wait_reply(second, timeout=20)

    assert first_ack.at < second_ack.at
    refs = [re.findall(r"REF-\d{4}-\d{6}", a.body)[0] for a in (first_ack, second_ack)]
    assert db_rows(world, "SELECT ref, event_id FROM referrals ORDER BY id") == [
        (refs[0], first),
        (refs[1], second),
    ]
    kinds = db_rows(
        world,
        "SELECT kind FROM record_entries WHERE referral_id = 1 ORDER BY id",
    )
    assert ("decrypted_late",) in kinds
