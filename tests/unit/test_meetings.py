"""Strategy meetings: who is invited, attendance, the close checklist, minutes, actions."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from schemas.config import AgencyConfig, MeetingsConfig
from tests.engines import dump, sql
from tests.forms import referral
from tests.unit.harness import MANAGER, NURSE, TEAM_ROOM, WORKER, WORKER2, Harness

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")

POLICE = "@police-lead:example.org"
HEALTH = "@health-lead:example.org"
SCHOOL = "@school-lead:example.org"
AGENCIES = {
    "police": AgencyConfig(name="Police", safeguarding_lead=POLICE),
    "health": AgencyConfig(name="Community health", safeguarding_lead=HEALTH),
    "education": AgencyConfig(name="Schools", safeguarding_lead=SCHOOL),
    "camhs": AgencyConfig(name="CAMHS", safeguarding_lead=None),
}


@pytest_asyncio.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await Harness.open(
        tmp_path / "r.db",
        agencies=AGENCIES,
        meetings=MeetingsConfig(
            required_agencies=["police", "health", "education", "camhs"],
            must_account_for=["health", "education"],
        ),
    )
    yield harness
    await harness.store.close()


async def meeting_for(h: Harness) -> tuple[str, str, str]:
    """A referral with a strategy meeting: (referral event, ref, meeting room)."""
    root = await h.send(NURSE, referral(Child_name="Meeting Child"))
    ref = re.findall(r"REF-\d{4}-\d{6}", h.replies_to(root)[0].body)[0]
    e = await h.send(WORKER, f"!strategy {ref} Thursday 10:00", room=TEAM_ROOM)
    assert "Setting up an encrypted strategy meeting room" in h.reply(e)
    room, _spec = h.messenger.created[-1]
    return root, ref, room


def record_kinds(h: Harness) -> list[str]:
    return [str(k) for (k,) in sql(h.store.where, "SELECT kind FROM record_entries ORDER BY id")]


async def test_the_room_names_no_child_and_the_right_people_are_invited(h: Harness) -> None:
    root, ref, room = await meeting_for(h)
    _, spec = h.messenger.created[-1]
    assert spec.name == f"Strategy meeting {ref}" and "Meeting Child" not in spec.topic
    assert set(spec.invite) == {WORKER, NURSE, POLICE, HEALTH, SCHOOL}
    assert spec.moderator == WORKER
    e = [m for _, m in h.messenger.sent if "camhs" in m.body]
    assert e and "NOT INVITED, no safeguarding lead" in e[0].body
    [agenda] = h.messenger.to(room)
    assert "Referral summary" in agenda.body and "Questions for the meeting" in agenda.body
    assert "section 47" in agenda.body
    assert any("strategy meeting" in m.body for m in h.thread(root))
    assert "strategy_meeting_called" in record_kinds(h)
    assert "strategy_meeting_room_created" in record_kinds(h)


async def test_deciding_strategy_sets_up_the_meeting(h: Harness) -> None:
    root = await h.send(NURSE, referral())
    ref = re.findall(r"REF-\d{4}-\d{6}", h.replies_to(root)[0].body)[0]
    await h.send(WORKER, f"!claim {ref}")
    await h.send(WORKER, f"!decide {ref} strategy Disclosure of sexual abuse.")
    assert len(h.messenger.created) == 1


async def test_attendance_follows_joins_and_declines(h: Harness) -> None:
    _, _, room = await meeting_for(h)
    await h.member(room, POLICE, "join")
    await h.member(room, SCHOOL, "leave")
    e = await h.send(WORKER, "!attendance", room=room, private=False)
    text = h.reply(e)
    assert f"police · {POLICE} · lead · attended" in text
    assert f"education · {SCHOOL} · lead · declined" in text
    assert f"health · {HEALTH} · lead · no response yet" in text
    assert "meeting_joined" in record_kinds(h) and "meeting_declined" in record_kinds(h)


async def test_close_needs_views_decisions_owned_actions_and_health_and_education(
    h: Harness,
) -> None:
    root, ref, room = await meeting_for(h)
    e = await h.send(POLICE, "!close", room=room, private=False)
    assert "Only the chair" in h.reply(e)
    e = await h.send(WORKER, "!close", room=room, private=False)
    answer = h.reply(e)
    assert "child's views" in answer and "parents' views" in answer and "decisions" in answer

    for cmd in (
        "!action bob 01/01/2027 x",
        "!action @bob:example.org 31/02/2027 visit",
        "!action @bob:example.org 01/01/2020 visit",
        "!views kids fine",
    ):
        e = await h.send(WORKER, cmd, room=room, private=False)
        assert any(w in h.reply(e) for w in ("owner", "due date", "in the past", "whose views"))

    await h.member(room, POLICE, "join")
    await h.send(WORKER, "!views child Said she is scared of her stepfather.", room=room)
    await h.send(WORKER, "!views parents Mother not yet spoken to; will be seen today.", room=room)
    await h.send(WORKER, "!decision Section 47 enquiry, joint with police.", room=room)
    e = await h.send(WORKER, f"!action {POLICE} 04/12/2026 Joint visit to the home.", room=room)
    assert "Action 1 recorded" in h.reply(e)
    await h.send(WORKER, "!recommendation Consider an ICPC within 15 days.", room=room)

    e = await h.send(WORKER, "!close", room=room, private=False)
    warning = h.reply(e)
    assert "WARNING" in warning and "health" in warning and "education" in warning

    await h.member(room, HEALTH, "join")
    await h.send(SCHOOL, "!info Attendance 70% this term; two bruises logged.", room=room)
    e = await h.send(WORKER, "!close", room=room, private=False)
    minutes = h.reply(e)
    for part in (
        "Minutes: strategy meeting",
        "Attended",
        POLICE,
        HEALTH,
        "Invited but did not attend",
        "scared of her stepfather",
        "Section 47 enquiry",
        "1. Joint visit to the home. — owner",
        "04/12/2026",
        "Consider an ICPC",
        "Attendance 70%",
    ):
        assert part in minutes, part
    assert "strategy_meeting_minutes" in record_kinds(h)
    update = h.thread(root)[-1]
    assert "strategy meeting about your referral has taken place" in update.body
    assert "Section 47 enquiry" in update.body and "Joint visit" in update.body

    e = await h.send(WORKER, f"!show {ref}")
    shown = h.reply(e)
    assert "Strategy meetings" in shown and "Decision: Section 47 enquiry" in shown
    assert "Action 1: Joint visit to the home. —" in shown


async def test_closing_without_an_agency_needs_an_explicit_reason(h: Harness) -> None:
    _, _, room = await meeting_for(h)
    await h.member(room, HEALTH, "join")
    for cmd in (
        "!views child Not seen: in hospital.",
        "!views parents Agreed with the plan.",
        "!decision No further action under s47.",
    ):
        await h.send(WORKER, cmd, room=room)
    e = await h.send(WORKER, "!close anyway", room=room)
    assert "WARNING" in h.reply(e)
    e = await h.send(
        WORKER, "!close anyway School closed for holidays, DSL unreachable.", room=room
    )
    assert "Closed without education: School closed" in h.reply(e)


async def test_action_owners_are_reminded_and_the_chair_told_when_overdue(h: Harness) -> None:
    _, _, room = await meeting_for(h)
    await h.member(room, HEALTH, "join")
    await h.member(room, SCHOOL, "join")
    for cmd in (
        "!views child x said no",
        "!views parents not seen",
        "!decision s47",
        f"!action {HEALTH} 27/11/2026 Health assessment.",
    ):
        await h.send(WORKER, cmd, room=room)
    await h.send(WORKER, "!close", room=room)
    await h.tick(timedelta(hours=1))  # Wednesday 11:00: due Friday, reminder from Thursday 09:00
    assert not [m for m in h.messenger.to(room) if "Reminder: action 1" in m.body]
    await h.tick(timedelta(days=1))
    [before] = [m for m in h.messenger.to(room) if "Reminder: action 1" in m.body]
    assert before.mentions == (HEALTH,)
    await h.tick(timedelta(days=2))  # Saturday: overdue
    [late] = [m for m in h.messenger.to(room) if "OVERDUE: action 1" in m.body]
    assert late.mentions == (WORKER,)
    e = await h.send(POLICE, "!done 1", room=room)
    assert "Only" in h.reply(e)
    e = await h.send(HEALTH, "!done 1", room=room)
    assert "marked done" in h.reply(e)
    await h.tick(timedelta(days=1))
    assert len([m for m in h.messenger.to(room) if "OVERDUE: action 1" in m.body]) == 1


async def test_invites_and_chair_changes(h: Harness) -> None:
    _, _, room = await meeting_for(h)
    e = await h.send(WORKER, "!invite @someone:evil.example", room=room)
    assert "not on an allowed homeserver" in h.reply(e)
    e = await h.send(WORKER, "!invite-agency nope", room=room)
    assert "Unknown agency" in h.reply(e)
    e = await h.send(WORKER, "!invite @gp:example.org", room=room)
    assert "Inviting @gp:example.org" in h.reply(e)
    assert (room, "@gp:example.org") in h.messenger.invited
    e = await h.send(POLICE, f"!chair {POLICE}", room=room)
    assert "Only the chair or a team manager" in h.reply(e)
    e = await h.send(MANAGER, f"!chair {POLICE}", room=room)
    assert "children's social care worker" in h.reply(e)
    e = await h.send(MANAGER, f"!chair {WORKER2}", room=room)
    assert "now chairs" in h.reply(e)
    assert (room, WORKER2) in h.messenger.moderators
    e = await h.send("@stranger:example.org", "!minutes", room=room)
    assert "Only people invited" in h.reply(e)


async def test_the_childs_gp_is_invited_when_known(tmp_path: Path) -> None:
    gp_lead = "@gp-lead:example.org"
    h = await Harness.open(
        tmp_path / "g.db",
        agencies={**AGENCIES, "gp": AgencyConfig(name="GP practices", safeguarding_lead=gp_lead)},
        meetings=MeetingsConfig(required_agencies=["police"], must_account_for=[]),
    )
    root = await h.send(NURSE, referral(School=None, GP="Example Surgery"))
    ref = re.findall(r"REF-\d{4}-\d{6}", h.replies_to(root)[0].body)[0]
    await h.send(WORKER, f"!strategy {ref}")
    _, spec = h.messenger.created[-1]
    assert gp_lead in spec.invite and SCHOOL not in spec.invite
    await h.store.close()


async def test_meeting_notes_and_reasons_are_encrypted_at_rest_and_survive_rotation(
    h: Harness,
) -> None:
    from storage.engine import Store
    from storage.keyring import Keyring
    from tests.keys import KEYRING

    _, ref, room = await meeting_for(h)
    await h.send(WORKER, "!views child Zebedee-secret said he is frightened.", room=room)
    await h.send(WORKER, f"!reclassify {ref} contact Quokka-reason thresholds not met.")
    db = h.store.where
    raw = dump(db)
    assert "Zebedee-secret" not in raw and "Quokka-reason" not in raw

    new = Keyring("a-brand-new-database-key-" + "z" * 20)
    async with h.store.transaction() as tx:
        await tx.reencrypt_all(KEYRING, new)
    await h.store.close()
    store = await Store.open(db, new)  # the same database, PostgreSQL or SQLite
    async with store.transaction() as tx:
        meeting = await tx.meeting_by_room(room)
        assert meeting is not None
        texts = [i.text for i in await tx.items(meeting.id)]
        referral = await tx.referral_by_ref(ref)
    assert "Zebedee-secret said he is frightened." in texts
    assert referral is not None and referral.pending_reclassification is not None
    assert "Quokka-reason" in str(referral.pending_reclassification["reason"])
    await store.close()
    h.store = await Store.open(db, new)  # the fixture closes it
