"""Edit, amend and delete a referral from a real client (real Synapse, E2EE): the record
stays as first sent, the correction is appended, and deleting the message deletes nothing."""

from __future__ import annotations

import re

import pytest
from nio import RoomRedactResponse

from bot.world import World
from tests.forms import referral
from tests.integration.live import db_rows, open_dm, running
from tests.integration.test_workflow_e2e import in_thread

pytestmark = pytest.mark.integration


async def test_edit_amend_and_delete_a_referral(world: World) -> None:
    worker = world.worker
    async with running(world):
        nurse, dm = await open_dm(world, f"edit-{world.bot_user[1:5]}")
        root = await nurse.send(dm, referral(Child_name="Kept Child"))
        ref = re.findall(r"REF-\d{4}-\d{6}", (await nurse.wait_reply(root)).body)[0]
        await worker.wait_joined(world.team_room, world.bot_user)

        changed = referral(Child_name="Changed Child")
        await nurse.send(
            dm,
            "* " + changed,
            extra={
                "m.new_content": {"msgtype": "m.text", "body": changed},
                "m.relates_to": {"rel_type": "m.replace", "event_id": root},
            },
        )
        not_applied = (
            await nurse.wait_for(
                lambda r: in_thread(root, world.bot_user)(r) and "NOT applied" in r.body
            )
        )[0]

        amend = await nurse.send(dm, f"!amend {ref} Date of birth is 03/05/2014, not 02/05.")
        amended = await nurse.wait_reply(amend)
        await worker.wait_for(lambda r: f"{ref}: the referrer added a correction" in r.body)

        redaction = await nurse.client.room_redact(dm, root, reason="sent by mistake")
        assert isinstance(redaction, RoomRedactResponse)
        kept = (await nurse.wait_for(lambda r: "NOT withdrawn" in r.body))[0]
        await worker.wait_for(lambda r: f"{ref}: its message was deleted" in r.body)

        show = await worker.send(world.team_room, f"!show {ref}")
        shown = await worker.wait_reply(show)
        claim = await worker.send(world.team_room, f"!claim {ref}")
        await worker.wait_reply(claim)
        # Updates still reach the referrer, in the thread of the deleted message.
        claimed = await nurse.wait_for(
            lambda r: in_thread(root, world.bot_user)(r) and "picked up" in r.body
        )

    assert not_applied.decrypted and f"!amend {ref}" in not_applied.body
    assert "Correction added" in amended.body
    assert kept.decrypted and ref in kept.body
    assert "Kept Child" in shown.body and "Changed Child" not in shown.body
    assert "03/05/2014, not 02/05" in shown.body and "message deleted in chat" in shown.body
    assert claimed
    rows = db_rows(world, "SELECT event_id, state FROM referrals")
    assert rows == [(root, "claimed")]
    kinds = [k for (k,) in db_rows(world, "SELECT kind FROM record_entries ORDER BY id")]
    for kind in ("received", "edit_not_applied", "amended", "message_deleted_in_chat", "claimed"):
        assert kinds.count(kind) == 1, kind
