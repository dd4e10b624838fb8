"""A flood of chatter gets a few answers, not one each; referrals and commands are always
answered; one room's flood does not hold up another room (real store and pipeline)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

import bot.pipeline
from handlers import flood
from handlers.commands import handle_message
from handlers.ports import Incoming
from schemas.messages import InboxItem
from tests.forms import referral
from tests.unit.harness import NURSE, WORKER, Harness

# Storage behaviour: every test here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.usefixtures("engine")


OTHER = "@health-visitor:example.org"


@pytest.fixture
async def h(tmp_path: Path, engine: str) -> AsyncIterator[Harness]:
    harness = await Harness.open(tmp_path / "f.db")
    yield harness
    await harness.pipeline.stop()
    await harness.store.close()


def answers(h: Harness, room: str) -> list[str]:
    return [m.body for m in h.messenger.to(room)]


GROUP = "!group:example.org"  # not a direct message: chatter gets the hint, not the menu


async def test_chatter_gets_three_answers_then_silence_then_one_reminder(h: Harness) -> None:
    room = GROUP
    for n in range(20):
        await h.send(NURSE, f"hello? {n}", room=room, private=False)
    got = answers(h, room)
    assert len(got) == flood.BURST == 3
    assert all("I only act on commands" in b for b in got)
    assert "I will not answer more messages like this" in got[-1]
    assert "will not answer" not in got[0]

    h.now += timedelta(seconds=flood.REFILL_S)
    await h.send(NURSE, "!nonsense", room=room, private=False)
    reminder = answers(h, room)[-1]
    assert reminder.startswith("I did not answer your 17 messages before this one")
    assert "Unknown command !nonsense" in reminder
    await h.send(NURSE, "still there?", room=room, private=False)
    assert len(answers(h, room)) == 4  # the bucket is empty again: one a minute


async def test_chatter_in_a_dm_gets_the_offer_and_a_few_answers_then_silence(h: Harness) -> None:
    """In a direct message, chatter opens the guided referral's menu; wrong answers to it
    are rationed like chatter, so a flood gets a bounded number of messages back."""
    room = h.dm(NURSE)
    await h.send(NURSE, "hello")
    assert "What would you like to do?" in answers(h, room)[0]
    for n in range(10):
        await h.send(NURSE, f"hello? {n}")
    after_flood = len(answers(h, room))
    assert after_flood <= 4 * flood.GUIDED.burst
    assert any("I will not answer more messages like this" in b for b in answers(h, room))
    for n in range(50):
        await h.send(NURSE, f"more {n}")
    assert len(answers(h, room)) == after_flood  # silence
    # A real answer is never rationed.
    await h.send(NURSE, "1")
    assert len(answers(h, room)) > after_flood


async def test_referrals_and_commands_are_never_rationed(h: Harness) -> None:
    room = h.dm(NURSE)
    for n in range(10):
        await h.send(NURSE, f"spam {n}")
    assert len(answers(h, room)) <= 4 * flood.GUIDED.burst
    referrals = [await h.send(NURSE, referral(Child_name=f"Flood Child {n}")) for n in range(3)]
    for event_id in referrals:
        assert "CHILD PROTECTION REFERRAL" in h.reply(event_id)
    helped = await h.send(NURSE, "!help")
    assert "referral-bot commands" in h.reply(helped)
    # A referral with a mistyped command word is answered, or it would be lost unseen.
    typo = await h.send(NURSE, referral().replace("!refer", "!referr", 1))
    assert "Unknown command !referr" in h.reply(typo)


async def test_each_sender_and_room_has_its_own_ration(h: Harness) -> None:
    for n in range(10):
        await h.send(NURSE, f"spam {n}", room=GROUP, private=False)
    other = await h.send(OTHER, "hello", room=GROUP, private=False)
    assert "I only act on commands" in h.reply(other)
    # The same sender in another room.
    elsewhere = await h.send(NURSE, "hello", room="!another-room:example.org", private=False)
    assert "I only act on commands" in h.reply(elsewhere)
    # Unknown commands in the advice-team room are rationed per worker too.
    for n in range(5):
        await h.send(WORKER, f"!what {n}", room="!team:example.org")
    assert len([b for b in answers(h, "!team:example.org") if "Unknown command" in b]) == 3


async def test_a_flooded_room_does_not_hold_up_another(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room workers share one database connection; its lock is first come, first served,
    so another room's message waits for at most a transaction or two of the flood."""
    order: list[str] = []
    handle = handle_message  # the function the pipeline calls

    async def observed(tx: object, msg: Incoming, *args: object, **kw: object) -> None:
        order.append(msg.event_id)
        await handle(tx, msg, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(bot.pipeline, "handle_message", observed)
    flooded, quiet = h.dm(NURSE), h.dm(OTHER)
    ts = int(h.now.timestamp() * 1000)
    items = [
        InboxItem(f"$flood{n}", flooded, NURSE, ts, True, "pending", {"body": f"x{n}"})
        for n in range(200)
    ]
    items.append(InboxItem("$referral", quiet, OTHER, ts, True, "pending", {"body": referral()}))
    async with h.store.transaction() as tx:
        await tx.add_inbox(items)
    h.pipeline.kick_rooms({flooded})
    h.pipeline.kick_rooms({quiet})
    await h.pipeline.wait_idle()
    assert len(order) == 201
    assert order.index("$referral") <= 3, order[:10]
    assert "CHILD PROTECTION REFERRAL" in h.reply("$referral")
    assert len(answers(h, flooded)) == 3


async def test_a_ration_is_forgotten_once_full_again_and_nothing_is_left_unanswered(
    h: Harness,
) -> None:
    async def rations() -> int:
        async with h.store.snapshot() as tx:
            return len(await tx.kv_with_prefix(flood.KEY_PREFIX))

    for n in range(4):  # three answers, one left unanswered
        await h.send(NURSE, f"hello? {n}", room=GROUP, private=False)
    assert await rations() == 1
    await h.tick(timedelta(minutes=10))
    assert await rations() == 1, "kept: the next answer must say one message went unanswered"
    await h.send(NURSE, "anyone?", room=GROUP, private=False)
    assert answers(h, GROUP)[-1].startswith("I did not answer your 1 message before this one")
    await h.tick(timedelta(seconds=flood.REFILL_S - 1))  # that answer took one of three
    assert await rations() == 1, "not full yet"
    await h.tick(timedelta(seconds=1))
    assert await rations() == 0
