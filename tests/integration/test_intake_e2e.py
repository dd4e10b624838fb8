"""The intake slice on a real Synapse with real end-to-end encryption."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest

from bot.chat_user import ChatUser, Received
from bot.world import World
from tests.forms import referral
from tests.integration.live import db_rows, open_dm, running

pytestmark = pytest.mark.integration


def bot_replies(user: ChatUser, world: World, event_id: str) -> list[str]:
    return [
        r.body for r in user.received if r.sender == world.bot_user and r.in_reply_to == event_id
    ]


async def test_referral_is_acknowledged_encrypted_with_its_classification(
    engine: str, world: World
) -> None:
    async with running(world):
        nurse, dm = await open_dm(world, f"nurse-{world.bot_user[1:5]}")
        event_id = await nurse.send(dm, referral())
        ack = await nurse.wait_reply(event_id)

        assert ack.decrypted, "the acknowledgement must arrive end-to-end encrypted"
        assert ack.content["msgtype"] == "m.notice"
        assert "CHILD PROTECTION REFERRAL" in ack.body
        ref = ack.body.split(":", 1)[0]
        assert ref.startswith("REF-") and len(ref) == len("REF-2026-000001")
        assert "<h4>" in ack.content["formatted_body"]
        assert ack.content["m.relates_to"]["m.in_reply_to"]["event_id"] == event_id
        assert "working day" in ack.body

        summary = (
            await world.worker.wait_for(lambda r: r.room_id == world.team_room and ref in r.body)
        )[0]
        assert summary.decrypted
        assert "CHILD PROTECTION REFERRAL" in summary.body
        assert "Alex Testchild" not in summary.body  # summary: no child's name, no free text

    rows = db_rows(world, "SELECT ref, declared_type, declared_by, event_id FROM referrals")
    assert rows == [(ref, "child protection referral", nurse.user_id, event_id)]
    kinds = [k for (k,) in db_rows(world, "SELECT kind FROM record_entries ORDER BY id")]
    assert kinds[0] == "received" and "ack_sent" in kinds and "team_summary_sent" in kinds


async def test_contact_and_bad_form(world: World) -> None:
    async with running(world):
        gp, dm = await open_dm(world, f"gp-{world.bot_user[1:5]}")
        contact_event = await gp.send(dm, referral(Referral_type="contact", Agency="GP"))
        missing_event = await gp.send(dm, referral(Referral_type=None, Date_of_birth="31/02/2015"))
        contact_ack = await gp.wait_reply(contact_event)
        problems = await gp.wait_reply(missing_event)

    assert "CONTACT" in contact_ack.body and "CHILD PROTECTION" not in contact_ack.body
    assert "NOT recorded" in problems.body
    assert "Referral type" in problems.body and "child protection referral" in problems.body
    assert "Date of birth" in problems.body
    assert db_rows(world, "SELECT event_id FROM referrals") == [(contact_event,)]


async def test_unencrypted_room_is_refused_and_nothing_stored(world: World) -> None:
    async with running(world):
        police = await world.add_user(f"police-{world.bot_user[1:5]}")
        room = await police.create_room(invite=[world.bot_user], encrypted=False)
        await police.wait_joined(room, world.bot_user)
        event_id = await police.send(room, referral(Child_name="Unencrypted Uniquename"))
        reply = await police.wait_reply(event_id)

    assert "not end-to-end encrypted" in reply.body
    assert not reply.decrypted
    assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(0,)]
    for path in world.config.storage.data_dir.rglob("*"):
        if path.is_file():
            assert b"Uniquename" not in path.read_bytes(), f"plain text leaked into {path}"


async def test_referral_sent_while_bot_is_down_is_acknowledged_once(world: World) -> None:
    async with running(world):
        hv, dm = await open_dm(world, f"hv-{world.bot_user[1:5]}")
        first = await hv.send(dm, referral())
        await hv.wait_reply(first)

    # The bot is stopped now; the referral waits on the homeserver.
    while_down = await hv.send(dm, referral(Child_name="Second Child"))
    async with running(world):
        await hv.wait_reply(while_down, timeout=30)
        await asyncio.sleep(1.5)
    async with running(world):  # a further restart must not answer again
        await asyncio.sleep(2)

    assert len(bot_replies(hv, world, first)) == 1
    assert len(bot_replies(hv, world, while_down)) == 1
    assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(2,)]


async def test_burst_of_100_referrals_from_several_clients_each_acknowledged_once(
    world: World,
) -> None:
    senders = 4
    per_sender = 25
    async with running(world):
        people = [await open_dm(world, f"burst{i}-{world.bot_user[1:5]}") for i in range(senders)]

        async def burst(user: ChatUser, room: str) -> list[str]:
            return [
                await user.send(room, referral(Child_name=f"Burst Child {n}"))
                for n in range(per_sender)
            ]

        sent = await asyncio.gather(*(burst(u, r) for u, r in people))

        def replying_to(ids: list[str]) -> Callable[[Received], bool]:
            return lambda r: r.in_reply_to in set(ids)

        for (user, _room), ids in zip(people, sent, strict=True):
            await user.wait_for(replying_to(ids), timeout=120, count=per_sender)
        await asyncio.sleep(1.0)  # let any duplicate arrive before counting

    all_ids = [e for ids in sent for e in ids]
    replies = Counter(
        r.in_reply_to for user, _ in people for r in user.received if r.sender == world.bot_user
    )
    assert len(all_ids) == senders * per_sender
    assert all(replies[e] == 1 for e in all_ids), "every referral acknowledged exactly once"
    refs = {ref for (ref,) in db_rows(world, "SELECT ref FROM referrals")}
    assert len(refs) == senders * per_sender


async def test_more_referrals_than_one_sync_carries_are_all_acknowledged(world: World) -> None:
    """130 referrals wait while the bot is down: more than the 100 events a sync returns
    per room, so the timeline comes back `limited` and the gap must be fetched."""
    async with running(world):
        school, dm = await open_dm(world, f"school-{world.bot_user[1:5]}")
    sent = [await school.send(dm, referral(Child_name=f"Gap Child {n}")) for n in range(130)]
    async with running(world) as app:
        await school.wait_for(lambda r: r.in_reply_to in set(sent), timeout=180, count=130)
        await asyncio.sleep(1.0)
        assert app.sync is not None
    replies = Counter(r.in_reply_to for r in school.received if r.sender == world.bot_user)
    assert all(replies[e] == 1 for e in sent)
    assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(130,)]
