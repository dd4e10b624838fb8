"""Answers the homeserver accepts, and no refused send silences a room (issue 10), on the
real Synapse in encrypted rooms.

The live defect: a referral sent inside the thread of an earlier acknowledgement was
acknowledged in a new thread rooted on it, Synapse refused that for good ("Cannot start
threads from an event with a relation"), the send was retried for ever and every later
acknowledgement in that DM was never sent.
"""

from __future__ import annotations

import re
import time
from typing import Any, cast

import pytest
from aiohttp import web

from bot.app import BotApp
from bot.chat_user import ChatUser, Received
from bot.http_ops import OpsServer
from bot.world import World
from tests.forms import referral
from tests.integration.live import db_rows, open_dm, running

pytestmark = pytest.mark.integration

# Well within this: acknowledgements take tens of milliseconds on an idle machine.
PROMPT_S = 10.0


def ref_of(text: str) -> str:
    found = re.search(r"REF-\d{4}-\d{6}", text)
    assert found, text
    return found.group()


def relation(r: Received) -> dict[str, Any]:
    rel = r.content.get("m.relates_to") or {}
    return dict(rel)


async def acknowledged(user: ChatUser, event_id: str) -> Received:
    started = time.monotonic()
    ack = await user.wait_reply(event_id, timeout=PROMPT_S)
    assert ack.decrypted and "recorded as" in ack.body, ack.body
    assert time.monotonic() - started < PROMPT_S
    return ack


async def three_plain_referrals_are_acknowledged(user: ChatUser, dm: str, tag: str) -> None:
    later = [await user.send(dm, referral(Child_name=f"Later {tag} {i}")) for i in range(3)]
    for event_id in later:
        ack = await acknowledged(user, event_id)
        assert relation(ack)["rel_type"] == "m.thread"
        assert relation(ack)["event_id"] == event_id, "a plain referral opens its own thread"


def failed_rows(world: World) -> list[tuple[Any, ...]]:
    return db_rows(world, "SELECT purpose, last_error FROM outbox WHERE failed_at IS NOT NULL")


async def test_referral_sent_in_the_thread_of_an_acknowledgement(world: World) -> None:
    async with running(world):
        nurse, dm = await open_dm(world, f"thnurse-{world.bot_user[1:5]}")
        root = await nurse.send(dm, referral())
        first_ack = await acknowledged(nurse, root)

        # The next referral typed in the thread the acknowledgement opened, as Element
        # sends it: a thread relation with a fallback reply to the latest message.
        in_thread = {
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": first_ack.event_id},
            }
        }
        second = await nurse.send(dm, referral(Child_name="Bo Threaded"), extra=in_thread)
        ack = await acknowledged(nurse, second)
        assert relation(ack)["rel_type"] == "m.thread" and relation(ack)["event_id"] == root
        assert relation(ack)["is_falling_back"] is False
        ref = ref_of(ack.body)

        await three_plain_referrals_are_acknowledged(nurse, dm, "after-thread")

        # Its updates go to that thread; the reply fallback points at the latest message
        # there (the acknowledgement), and the referrer is mentioned with a pill.
        worker = world.worker
        await worker.wait_joined(world.team_room, world.bot_user)
        claim = await worker.send(world.team_room, f"!claim {ref}")
        await worker.wait_reply(claim)
        [update] = await nurse.wait_for(
            lambda r: r.sender == world.bot_user and "picked up" in r.body, timeout=PROMPT_S
        )
        rel = relation(update)
        assert rel["rel_type"] == "m.thread" and rel["event_id"] == root
        assert rel["is_falling_back"] is True
        assert rel["m.in_reply_to"]["event_id"] == ack.event_id
        assert update.content["m.mentions"] == {"user_ids": [nurse.user_id]}
        assert f'href="https://matrix.to/#/{nurse.user_id}"' in update.content["formatted_body"]

        # !status from inside the thread is answered there.
        status = await nurse.send(dm, f"!status {ref}", extra=in_thread)
        answer = await nurse.wait_reply(status, timeout=PROMPT_S)
        assert ref in answer.body
        assert relation(answer)["rel_type"] == "m.thread"
        assert relation(answer)["event_id"] == root

    assert failed_rows(world) == []
    stored = db_rows(world, "SELECT thread_root FROM referrals WHERE ref = ?", ref)
    assert stored == [(root,)]


async def test_referral_carrying_another_relation(world: World) -> None:
    async with running(world):
        nurse, dm = await open_dm(world, f"rlnurse-{world.bot_user[1:5]}")
        root = await nurse.send(dm, referral())
        await acknowledged(nurse, root)
        # A reference and an annotation (a reaction-like relation with a key): both accepted
        # by Synapse on an encrypted message, neither may root a thread.
        for rel in (
            {"rel_type": "m.reference", "event_id": root},
            {"rel_type": "m.annotation", "event_id": root, "key": "referral"},
        ):
            related = await nurse.send(
                dm, referral(Child_name=f"Rel {rel['rel_type']}"), extra={"m.relates_to": rel}
            )
            ack = await acknowledged(nurse, related)
            assert "rel_type" not in relation(ack), "a plain reply, no thread"
            assert relation(ack)["m.in_reply_to"]["event_id"] == related
            assert "in replies to your message" in ack.body
            await three_plain_referrals_are_acknowledged(nurse, dm, rel["rel_type"])
    assert failed_rows(world) == []


async def test_a_message_too_large_for_the_homeserver_is_given_up(world: World) -> None:
    worker = world.worker
    async with running(world):
        nurse, dm = await open_dm(world, f"lgnurse-{world.bot_user[1:5]}")
        root = await nurse.send(dm, referral())
        ref = ref_of((await acknowledged(nurse, root)).body)
        await worker.wait_joined(world.team_room, world.bot_user)

        # Within the bot's own limit for what it reads, but escaped into HTML and then
        # encrypted it is far over Synapse's 64 KiB: 413 M_TOO_LARGE, every time.
        big = await worker.send(world.team_room, f"!tell {ref} " + "<&>" * 12_000)
        await worker.wait_reply(big)
        short = await worker.send(world.team_room, f"!tell {ref} Please ring us back today.")
        await worker.wait_reply(short)

        [notice] = await worker.wait_for(
            lambda r: r.sender == world.bot_user and "NOT DELIVERED" in r.body, timeout=30
        )
        # The room's later message still reached the referrer.
        await nurse.wait_for(lambda r: "Please ring us back today." in r.body, timeout=30)
        # And the next referral there is acknowledged.
        later = await nurse.send(dm, referral(Child_name="After Big"))
        await acknowledged(nurse, later)

    assert ref in notice.body and "413 M_TOO_LARGE" in notice.body
    assert "<&>" not in notice.body
    assert failed_rows(world) == [("tell_note", "413 M_TOO_LARGE")]
    kinds = [k for (k,) in db_rows(world, "SELECT kind FROM record_entries ORDER BY id")]
    assert "tell_note_send_failed" in kinds


async def test_bot_removed_from_a_room_after_a_message_was_queued(world: World) -> None:
    worker = world.worker
    async with running(world) as app:
        nurse, dm = await open_dm(world, f"kknurse-{world.bot_user[1:5]}")
        other, other_dm = await open_dm(world, f"kkother-{world.bot_user[1:5]}")
        root = await nurse.send(dm, referral())
        ref = ref_of((await acknowledged(nurse, root)).body)
        await worker.wait_joined(world.team_room, world.bot_user)

        await nurse.client.room_kick(dm, world.bot_user, reason="tidying up")
        assert app.client is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            room = app.client.rooms.get(dm)
            if room is not None and world.bot_user not in room.users:
                break
            await nurse.client.sync(timeout=0)
        tell = await worker.send(world.team_room, f"!tell {ref} We will visit on Monday.")
        await worker.wait_reply(tell)
        [notice] = await worker.wait_for(
            lambda r: r.sender == world.bot_user and "NOT DELIVERED" in r.body, timeout=30
        )
        # Other rooms are not held up.
        other_event = await other.send(other_dm, referral(Child_name="Other Room"))
        await acknowledged(other, other_event)
        # Invited back, the bot answers in the room again.
        await nurse.client.room_invite(dm, world.bot_user)
        await nurse.wait_joined(dm, world.bot_user)
        again = await nurse.send(dm, referral(Child_name="Invited Back"))
        await acknowledged(nurse, again)
        metrics = await app_metrics(app)

    assert ref in notice.body and "tell note" in notice.body
    [(purpose, error)] = failed_rows(world)
    assert purpose == "tell_note" and error.startswith("403"), error
    assert "referralbot_sends_failed_total 1.0" in metrics


async def app_metrics(app: BotApp) -> str:
    """/metrics as the operations endpoint renders it (without a listening socket)."""
    response = await OpsServer(app, "127.0.0.1", 0, app.metrics)._metrics(cast(web.Request, None))
    assert isinstance(response.body, bytes)
    return response.body.decode()
