"""A reply that quotes someone's `!refer` is not a referral (real Synapse, real E2EE).

Clients put the replied-to text in front of a reply, as `> <@user> …` lines in `body` and
as `<mx-reply>` in `formatted_body`. Only the replier's own text may count.
"""

from __future__ import annotations

import html
import sqlite3
from typing import Any

import pytest

from bot.world import World
from tests.forms import referral
from tests.integration.live import running

pytestmark = pytest.mark.integration


def referral_count(world: World) -> int:
    db = sqlite3.connect(world.config.storage.data_dir / "referrals.db")
    try:
        ((n,),) = db.execute("SELECT COUNT(*) FROM referrals").fetchall()
        return int(n)
    finally:
        db.close()


def element_reply(
    room_id: str, quoted_event: str, quoted_sender: str, quoted: str, own: str
) -> tuple[str, dict[str, Any]]:
    """Body and the rest of a reply's content as Element sends it (spec: rich replies)."""
    lines = quoted.split("\n")
    fallback = "\n".join([f"> <{quoted_sender}> {lines[0]}", *(f"> {line}" for line in lines[1:])])
    quoted_html = "<br>".join(html.escape(line) for line in lines)
    return f"{fallback}\n\n{own}", {
        "format": "org.matrix.custom.html",
        "formatted_body": (
            "<mx-reply><blockquote>"
            f'<a href="https://matrix.to/#/{room_id}/{quoted_event}">In reply to</a> '
            f'<a href="https://matrix.to/#/{quoted_sender}">{quoted_sender}</a><br>'
            f"{quoted_html}</blockquote></mx-reply>{html.escape(own)}"
        ),
        "m.relates_to": {"m.in_reply_to": {"event_id": quoted_event}},
    }


async def test_reply_quoting_someone_elses_refer_makes_no_referral(world: World) -> None:
    tag = world.bot_user[1:5]
    async with running(world):
        nurse = await world.add_user(f"nurse-fb-{tag}")
        gp = await world.add_user(f"gp-fb-{tag}")
        room = await nurse.create_room(invite=[world.bot_user, gp.user_id], direct=False)
        await gp.join(room)
        await nurse.wait_joined(room, world.bot_user)
        await nurse.wait_joined(room, gp.user_id)
        await gp.wait_joined(room, world.bot_user)

        form = referral(Child_name="Quoted Child")
        original = await nurse.send(room, form)
        ack = await nurse.wait_reply(original)
        assert "CHILD PROTECTION REFERRAL" in ack.body

        body, extra = element_reply(room, original, nurse.user_id, form, "I know this family.")
        quoting = await gp.send(room, body, extra=extra)
        answer = await gp.wait_reply(quoting)

        # A reply whose own text is a command: that command runs, not the quoted one.
        body, extra = element_reply(room, original, nurse.user_id, form, "!help")
        asking = await gp.send(room, body, extra=extra)
        help_answer = await gp.wait_reply(asking)

        # An incomplete form of one's own under a complete quoted one: the quoted fields
        # must not fill the gaps.
        own_form = "!refer\nChild name: Other Child\nAgency: GP"
        body, extra = element_reply(room, original, nurse.user_id, form, own_form)
        partial = await gp.send(room, body, extra=extra)
        problems = await gp.wait_reply(partial)

    assert "I only act on commands" in answer.body
    assert "recorded as" not in answer.body and "NOT recorded" not in answer.body
    assert "referral-bot commands" in help_answer.body
    assert "recorded as" not in help_answer.body
    assert "NOT recorded" in problems.body
    for missing in ("Referral type", "Date of birth", "Concerns", "Referrer name"):
        assert missing in problems.body
    assert referral_count(world) == 1, "only the original !refer may make a referral"
