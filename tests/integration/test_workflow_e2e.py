"""The whole advice-team journey on a real Synapse, every message end-to-end encrypted:
refer → claim → note for the referrer → decide, and the referrer's client receives each
status update, decrypted, in the thread of its referral."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from bot.chat_user import Received
from bot.world import World
from tests.forms import referral
from tests.integration.live import db_rows, open_dm, running

pytestmark = pytest.mark.integration


def in_thread(root: str, sender: str) -> Callable[[Received], bool]:
    def match(r: Received) -> bool:
        rel = r.content.get("m.relates_to") or {}
        return (
            r.sender == sender and rel.get("rel_type") == "m.thread" and rel.get("event_id") == root
        )

    return match


async def test_refer_claim_tell_decide_reaches_the_referrer_in_its_thread(world: World) -> None:
    worker = world.worker
    async with running(world):
        nurse, dm = await open_dm(world, f"wnurse-{world.bot_user[1:5]}")
        root = await nurse.send(dm, referral())
        ack = await nurse.wait_reply(root)
        ref = re.findall(r"REF-\d{4}-\d{6}", ack.body)[0]
        await worker.wait_joined(world.team_room, world.bot_user)

        claim = await worker.send(world.team_room, f"!claim {ref}")
        assert "You have claimed" in (await worker.wait_reply(claim)).body
        tell = await worker.send(world.team_room, f"!tell {ref} Health visitor will visit today.")
        await worker.wait_reply(tell)
        decide = await worker.send(
            world.team_room, f"!decide {ref} nfa Explained injury; advice given to the family."
        )
        assert "decided" in (await worker.wait_reply(decide)).body

        updates = await nurse.wait_for(in_thread(root, world.bot_user), count=4, timeout=30)

    ack_update, claimed, note, decided = updates
    assert all(u.decrypted for u in updates), "every update must arrive end-to-end encrypted"
    assert all(ref in u.body and "CHILD PROTECTION REFERRAL" in u.body for u in updates)
    assert "picked up" in claimed.body
    assert "Health visitor will visit today." in note.body
    assert "no further action" in decided.body and "Explained injury" in decided.body
    assert "disagree" in decided.body
    record = [k for (k,) in db_rows(world, "SELECT kind FROM record_entries ORDER BY id")]
    for kind in (
        "claimed",
        "note",
        "decided",
        "tell_claimed_sent",
        "tell_note_sent",
        "tell_decided_sent",
    ):
        assert kind in record
    assert ack_update.event_id == ack.event_id


async def test_a_practitioner_cannot_use_team_commands(world: World) -> None:
    async with running(world):
        nurse, dm = await open_dm(world, f"xnurse-{world.bot_user[1:5]}")
        root = await nurse.send(dm, referral())
        ref = re.findall(r"REF-\d{4}-\d{6}", (await nurse.wait_reply(root)).body)[0]
        attempt = await nurse.send(dm, f"!claim {ref}")
        refusal = await nurse.wait_reply(attempt)
    assert "Only members of the advice team" in refusal.body
    assert db_rows(world, "SELECT claimed_by FROM referrals") == [(None,)]
