"""Edits, deletions and `!amend`: the record stays as sent, corrections are appended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.events import to_inbox_item
from tests.unit.harness import MANAGER, NURSE, TEAM_ROOM, WORKER, Harness
from tests.unit.test_workflow import column, kinds, refer

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")

OTHER = "@gp:example.org"


@pytest_asyncio.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await Harness.open(tmp_path / "r.db")
    yield harness
    await harness.store.close()


async def test_an_edited_referral_is_unchanged_and_the_referrer_is_told_how_to_amend(
    h: Harness,
) -> None:
    root, ref = await refer(h, Child_name="Original Name")
    form_before = column(h, ref, "form")
    await h.event(NURSE, {"edit_of": root, "command": True, "private": True})

    told = [m for m in h.thread(root) if "NOT applied" in m.body]
    assert len(told) == 1
    assert f"!amend {ref}" in told[0].body and "CHILD PROTECTION REFERRAL" in told[0].body
    assert told[0].mentions == (NURSE,)
    assert column(h, ref, "form") == form_before
    assert kinds(h, ref).count("edit_not_applied") == 1


async def test_an_edit_naming_a_referral_from_another_room_learns_nothing_of_it(
    h: Harness,
) -> None:
    root, ref = await refer(h, Child_name="Original Name")
    sent_before, in_thread = len(h.messenger.sent), len(h.thread(root))
    await h.event(OTHER, {"edit_of": root, "command": True}, room=TEAM_ROOM)

    assert not any(ref in m.body for _, m in h.messenger.sent[sent_before:])
    assert len(h.thread(root)) == in_thread
    assert "edit_not_applied" not in kinds(h, ref)


async def test_an_edited_command_is_not_run_again_and_chat_edits_are_ignored(h: Harness) -> None:
    _, ref = await refer(h)
    claim = await h.send(WORKER, f"!claim {ref}", room=TEAM_ROOM)
    await h.event(WORKER, {"edit_of": claim, "command": True}, room=TEAM_ROOM)
    answers = h.replies_to(claim)
    assert len(answers) == 2 and "Edits are not acted on" in answers[1].body
    assert column(h, ref, "claimed_by") == WORKER
    assert kinds(h, ref).count("claimed") == 1

    chat = await h.send(WORKER, "see you at 3", room=TEAM_ROOM)
    sent_before = len(h.messenger.sent)
    await h.event(WORKER, {"edit_of": chat, "command": False}, room=TEAM_ROOM)
    assert len(h.messenger.sent) == sent_before


async def test_deleting_a_referral_message_keeps_the_referral(h: Harness) -> None:
    root, ref = await refer(h)
    await h.event(NURSE, {"redacts": root, "private": True})

    assert column(h, ref, "state") == "received"
    assert kinds(h, ref).count("message_deleted_in_chat") == 1
    to_nurse = [m for _, m in h.messenger.sent if "NOT withdrawn" in m.body]
    assert len(to_nurse) == 1 and to_nurse[0].room_id == h.dm(NURSE)
    assert to_nurse[0].thread_root is None
    assert any("deleted in the chat" in m.body for m in h.team())

    show = await h.send(WORKER, f"!show {ref}", room=TEAM_ROOM)
    assert "Alex Testchild" in h.reply(show) and "message deleted in chat" in h.reply(show)


async def test_amend_by_the_referrer_appends_and_tells_the_team(h: Harness) -> None:
    _, ref = await refer(h)
    e = await h.send(NURSE, f"!amend {ref} The date of birth is 03/05/2014.\nNot 02/05.")
    assert "Correction added" in h.reply(e)
    assert kinds(h, ref).count("amended") == 1
    team = [m for m in h.team() if "added a correction" in m.body]
    assert len(team) == 1 and "03/05/2014" not in team[0].body  # no free text in the room

    show = await h.send(WORKER, f"!show {ref}", room=TEAM_ROOM)
    assert "The date of birth is 03/05/2014.\nNot 02/05." in h.reply(show)


async def test_amend_by_the_team_in_the_team_room(h: Harness) -> None:
    _, ref = await refer(h)
    e = await h.send(
        MANAGER, f"!amend {ref} Referrer phoned: sibling also at the address.", room=TEAM_ROOM
    )
    assert "Correction added" in h.reply(e)
    assert kinds(h, ref).count("amended") == 1
    assert not [m for m in h.team() if "added a correction" in m.body]  # already seen there


async def test_amend_refusals_change_nothing(h: Harness) -> None:
    _, ref = await refer(h)
    before = kinds(h, ref)
    stranger = await h.send(OTHER, f"!amend {ref} I know better.")
    assert "Only the practitioner who sent" in h.reply(stranger)
    empty = await h.send(NURSE, f"!amend {ref}")
    assert "Write the correction" in h.reply(empty)
    group = await h.send(
        NURSE, f"!amend {ref} Extra detail.", room="!group:example.org", private=False
    )
    assert "direct message" in h.reply(group)
    unknown = await h.send(NURSE, "!amend REF-2026-999999 text")
    assert "No referral" in h.reply(unknown)
    assert kinds(h, ref) == before


def test_an_edit_is_stored_without_its_new_text() -> None:
    from nio import RoomMessageText

    event = RoomMessageText.from_dict(
        {
            "type": "m.room.message",
            "event_id": "$edit",
            "sender": NURSE,
            "origin_server_ts": 1,
            "content": {
                "msgtype": "m.text",
                "body": "* !refer Child name: Changed",
                "m.new_content": {"msgtype": "m.text", "body": "!refer Child name: Changed"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
            },
        }
    )
    event.decrypted = True
    item = to_inbox_item(event, "!dm:example.org", True, "@bot:example.org", private=True)
    assert item is not None
    assert item.payload == {"edit_of": "$orig", "command": True, "private": True}
    event.decrypted = False  # in an unencrypted room an edit is not even answered
    assert to_inbox_item(event, "!dm:example.org", False, "@bot:example.org") is None
