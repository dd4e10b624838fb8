"""The advice team's workflow rules, through the real store and pipeline."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from tests.engines import sql
from tests.forms import referral
from tests.keys import TEST_KEY
from tests.unit.harness import MANAGER, NURSE, TEAM_ROOM, WORKER, WORKER2, Harness

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")


@pytest_asyncio.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = await Harness.open(tmp_path / "referrals.db")
    yield harness
    await harness.store.close()


async def refer(h: Harness, sender: str = NURSE, **fields: str | None) -> tuple[str, str]:
    event_id = await h.send(sender, referral(**fields))
    ack = [m for m in h.replies_to(event_id) if m.thread_root == event_id]
    assert ack, h.replies_to(event_id)
    return event_id, re.findall(r"REF-\d{4}-\d{6}", ack[0].body)[0]


def kinds(h: Harness, ref: str) -> list[str]:
    return [
        str(k)
        for (k,) in sql(
            h.store.where,
            "SELECT kind FROM record_entries JOIN referrals r ON r.id = referral_id"
            " WHERE r.ref = ? ORDER BY record_entries.id",
            ref,
        )
    ]


def column(h: Harness, ref: str, name: str) -> object:
    return sql(h.store.where, f"SELECT {name} FROM referrals WHERE ref = ?", ref)[0][0]  # noqa: S608


async def test_only_the_team_may_act_and_a_refusal_changes_nothing(h: Harness) -> None:
    _, ref = await refer(h)
    before = kinds(h, ref)
    e = await h.send(NURSE, f"!claim {ref}")
    assert "Only members of the advice team" in h.reply(e)
    e = await h.send(WORKER, f"!assign {ref} {WORKER2}")
    assert "Only a team manager" in h.reply(e)
    e = await h.send(WORKER, f"!show {ref}", room="!shared:example.org", private=False)
    assert "advice-team room or in a direct message" in h.reply(e)
    assert column(h, ref, "claimed_by") is None
    assert kinds(h, ref) == before


async def test_claim_tells_the_referrer_in_the_thread(h: Harness) -> None:
    root, ref = await refer(h)
    e = await h.send(WORKER, f"!claim {ref}", room=TEAM_ROOM)
    assert "You have claimed" in h.reply(e)
    [update] = h.thread(root)
    assert update.room_id == h.dm(NURSE)
    assert ref in update.body and "CHILD PROTECTION REFERRAL" in update.body
    assert "picked up" in update.body
    assert "claimed" in kinds(h, ref) and "tell_claimed_sent" in kinds(h, ref)


async def test_exactly_one_of_two_simultaneous_claims_wins(h: Harness) -> None:
    _, ref = await refer(h)
    results = await asyncio.gather(
        h.send(WORKER, f"!claim {ref}", room=TEAM_ROOM), h.send(WORKER2, f"!claim {ref}")
    )
    answers = [h.reply(e) for e in results]
    assert sum("You have claimed" in a for a in answers) == 1
    loser = next(a for a in answers if "You have claimed" not in a)
    winner = column(h, ref, "claimed_by")
    assert f"already claimed by {winner}" in loser
    assert kinds(h, ref).count("claimed") == 1


async def test_release_and_manager_assign(h: Harness) -> None:
    _, ref = await refer(h)
    await h.send(WORKER, f"!claim {ref}")
    e = await h.send(WORKER2, f"!release {ref}")
    assert "only they or a manager" in h.reply(e)
    e = await h.send(WORKER, f"!release {ref}")
    assert "back in the queue" in h.reply(e)
    assert column(h, ref, "claimed_by") is None
    e = await h.send(MANAGER, f"!assign {ref} {WORKER2}")
    assert WORKER2 in h.reply(e)
    assert column(h, ref, "claimed_by") == WORKER2


async def test_notes_grow_the_record_and_tell_reaches_the_referrer(h: Harness) -> None:
    root, ref = await refer(h)
    e = await h.send(WORKER, f"!note {ref} Called school; advised DSL to monitor attendance.")
    assert "Note added" in h.reply(e)
    e = await h.send(WORKER, f"!note {ref}")
    assert "Write the note" in h.reply(e)
    await h.send(WORKER, f"!tell {ref} We have asked for a health check.")
    [update] = h.thread(root)
    assert "asked for a health check" in update.body
    assert kinds(h, ref).count("note") == 2


async def test_decide_needs_an_outcome_a_reason_and_the_claim(h: Harness) -> None:
    root, ref = await refer(h)
    e = await h.send(WORKER, f"!decide {ref} nfa advice given to school")
    assert "Claim it first" in h.reply(e)
    await h.send(WORKER, f"!claim {ref}")
    e = await h.send(WORKER, f"!decide {ref} maybe something")
    assert "Choose an outcome" in h.reply(e)
    e = await h.send(WORKER, f"!decide {ref} nfa")
    assert "A reason is required" in h.reply(e)
    e = await h.send(WORKER, f"!decide {ref} nfa Single bruise explained; school to monitor.")
    assert "decided: no further action" in h.reply(e)
    update = h.thread(root)[-1]
    assert "no further action" in update.body and "Single bruise explained" in update.body
    assert "resolution of professional disagreements" in update.body
    e = await h.send(WORKER, f"!rag {ref} red")
    assert "already decided" in h.reply(e)
    assert column(h, ref, "state") == "decided"


async def test_downgrade_needs_a_manager_and_both_types_are_kept(h: Harness) -> None:
    root, ref = await refer(h)
    e = await h.send(WORKER, f"!reclassify {ref} contact")
    assert "A reason is required" in h.reply(e)
    e = await h.send(WORKER, f"!reclassify {ref} contact Thresholds not met after checks.")
    assert "needs a team manager" in h.reply(e)
    assert column(h, ref, "current_type") == "child protection referral"
    assert h.thread(root) == [], "the referrer is not told until a manager confirms"
    asks = [m for m in h.team() if "Manager needed" in m.body]
    assert asks and asks[0].mentions == (MANAGER,)
    e = await h.send(WORKER, f"!confirm {ref}")
    assert "Only a team manager" in h.reply(e)

    await h.send(MANAGER, f"!confirm {ref}", room=TEAM_ROOM)
    assert column(h, ref, "current_type") == "contact"
    assert column(h, ref, "declared_type") == "child protection referral"
    [update] = h.thread(root)
    assert "reclassified from CHILD PROTECTION REFERRAL to CONTACT" in update.body
    assert "Thresholds not met" in update.body and "disagree" in update.body
    assert "reclassification_requested" in kinds(h, ref) and "reclassified" in kinds(h, ref)


async def test_upgrade_to_child_protection_is_immediate(h: Harness) -> None:
    root, ref = await refer(h, Referral_type="contact")
    await h.send(WORKER, f"!reclassify {ref} child-protection Disclosure of harm by the child.")
    assert column(h, ref, "current_type") == "child protection referral"
    assert "to CHILD PROTECTION REFERRAL" in h.thread(root)[0].body


async def test_rag_sets_the_deadline_in_working_time(h: Harness) -> None:
    _, ref = await refer(h)  # Wednesday 10:00
    e = await h.send(WORKER, f"!rag {ref} red")
    assert "RED" in h.reply(e) and "Wednesday 25 November 2026, 14:00" in h.reply(e)
    await h.send(WORKER, f"!rag {ref} green")
    assert str(column(h, ref, "decision_due")).startswith("2026-11-26T10:00")
    _, contact = await refer(h, Referral_type="contact")
    await h.send(WORKER, f"!rag {contact} green")
    assert str(column(h, contact, "decision_due")).startswith("2026-11-30T10:00")
    assert kinds(h, ref).count("rag_set") == 2


async def test_immediate_danger_starts_red_with_a_short_deadline(h: Harness) -> None:
    _, ref = await refer(h, Immediate_danger="yes")
    assert column(h, ref, "rag") == "red"
    assert str(column(h, ref, "decision_due")).startswith("2026-11-25T11:00")


async def test_reminders_near_and_past_the_deadline_repeat_and_reach_managers(
    h: Harness,
) -> None:
    _, ref = await refer(h)  # due Thursday 10:00
    assert await h.tick() == 0
    assert await h.tick(timedelta(hours=22, minutes=30)) == 1  # 1.5 h before: warned
    [near] = [m for m in h.team() if "Deadline near" in m.body]
    assert ref in near.body and "NOT CLAIMED" in near.body and near.mentions == ()
    assert await h.tick(timedelta(minutes=30)) == 0  # not again before the interval
    assert await h.tick(timedelta(hours=1, minutes=30)) == 1  # overdue now
    [late] = [m for m in h.team() if "OVERDUE" in m.body]
    assert late.mentions == (MANAGER,)
    await h.send(WORKER, f"!claim {ref}")
    await h.send(WORKER, f"!decide {ref} early-help Family agreed to early help.")
    assert await h.tick(timedelta(hours=2)) == 0  # decided: no more reminders
    assert kinds(h, ref).count("deadline_reminder") == 2


async def test_timers_survive_a_restart(tmp_path: Path) -> None:
    first = await Harness.open(tmp_path / "r.db")
    _, ref = await refer(first)
    await first.store.close()
    second = await Harness.open(tmp_path / "r.db")
    second.now = first.now
    assert await second.tick(timedelta(days=1, hours=1)) == 1
    assert any(ref in m.body and "OVERDUE" in m.body for m in second.team())
    await second.store.close()


async def test_phone_referral_and_its_written_follow_up(h: Harness) -> None:
    body = referral(Referrer_name="Caller Person").replace("!refer", "!phone-referral", 1)
    e = await h.send(NURSE, body)
    assert "Only members of the advice team" in h.reply(e)
    e = await h.send(WORKER, body)
    ack = next(m for m in h.replies_to(e) if m.thread_root == e).body
    ref = re.findall(r"REF-\d{4}-\d{6}", ack)[0]
    assert "obtain the caller's written follow-up by Friday 27 November 2026, 10:00" in ack
    assert column(h, ref, "channel") == "phone"
    await h.tick(timedelta(hours=49))
    assert any("Written follow-up missing" in m.body and ref in m.body for m in h.team())
    e = await h.send(WORKER, f"!written {ref} Letter received from the caller.")
    assert "recorded" in h.reply(e)
    assert "written_followup_overdue" in kinds(h, ref)
    assert "written_followup_received" in kinds(h, ref)


async def test_repeated_contacts_from_several_agencies_show_a_pattern(h: Harness) -> None:
    await refer(h, Referral_type="contact", Agency="School")
    h.now += timedelta(days=60)
    await refer(h, Referral_type="contact", Agency="Police", Child_name="ALEX  testchild")
    h.now += timedelta(days=60)
    _, ref = await refer(h, Referral_type="contact", Agency="GP")
    summary = next(m for m in h.team() if ref in m.body and "New CONTACT" in m.body)
    assert "PATTERN: 3 contacts/referrals from 3 agencies in 4 months" in summary.body
    assert "consider a strategy discussion" in summary.body
    assert "pattern_shown" in kinds(h, ref)
    e = await h.send(WORKER, f"!show {ref}")
    shown = h.reply(e)
    assert "PATTERN" in shown and "Other records about this child" in shown
    assert "Alex Testchild" in shown and "Running record" in shown

    _, other = await refer(h, Referral_type="contact", Child_name="Someone Else")
    e = await h.send(WORKER, f"!show {other}")
    assert "PATTERN" not in h.reply(e)
    await h.send(WORKER, f"!link {other} {ref}")
    e = await h.send(WORKER, f"!show {other}")
    assert "Other records about this child" in h.reply(e)


async def test_first_contact_shows_no_pattern_and_unlink_removes_a_match(h: Harness) -> None:
    _, a = await refer(h, Referral_type="contact")
    _, b = await refer(h, Referral_type="contact")
    await h.send(WORKER, f"!unlink {a} {b}")
    e = await h.send(WORKER, f"!show {b}")
    assert "Other records about this child" not in h.reply(e)


async def test_referrers_see_only_their_own(h: Harness) -> None:
    _, ref = await refer(h)
    e = await h.send(NURSE, f"!status {ref}")
    assert "CHILD PROTECTION REFERRAL" in h.reply(e)
    e = await h.send("@police:example.org", f"!status {ref}")
    assert "only see referrals you made" in h.reply(e)


async def test_queue_lists_open_referrals_oldest_first(h: Harness) -> None:
    _, first = await refer(h)
    h.now += timedelta(hours=1)
    _, second = await refer(h, Referral_type="contact")
    await h.send(WORKER, f"!claim {second}")
    e = await h.send(WORKER, "!queue", room=TEAM_ROOM)
    text = h.reply(e)
    assert text.index(first) < text.index(second)
    assert "UNCLAIMED" in text and WORKER in text and "left" in text


@pytest.mark.parametrize(
    "command",
    [
        "!claim",
        "!claim REF-1",
        "!claim REF-2026-999999",
        "!decide",
        "!rag REF-2026-000001 pink",
        "!assign REF-2026-000001 nobody",
        "!link REF-2026-000001",
        "!reclassify REF-2026-000001 x y",
    ],
)
async def test_bad_arguments_get_a_specific_answer(h: Harness, command: str) -> None:
    await refer(h)
    sender = MANAGER if command.startswith("!assign") else WORKER
    e = await h.send(sender, command)
    answer = h.reply(e)
    assert any(
        w in answer
        for w in ("REF-2026-000123", "No referral", "must be one of", "Assign to", "Reclassify to")
    )


async def test_chronology_in_chat_and_export_to_files(h: Harness, tmp_path: Path) -> None:
    from bot.export import export_referral
    from schemas.config import load_config

    _, ref = await refer(h)
    await h.send(WORKER, f"!note {ref} Checked with the GP: not known.")
    e = await h.send(WORKER, f"!chronology {ref}")
    text = h.reply(e)
    assert text.startswith(f"# {ref}: CHILD PROTECTION REFERRAL") and "Checked with the GP" in text

    where = h.store.where
    data_dir = where.parent if isinstance(where, Path) else tmp_path / "data"
    database = "" if isinstance(where, Path) else f'database = "{where.dsn}"'
    (tmp_path / "key").write_text(TEST_KEY)
    config_path = tmp_path / "c.toml"
    config_path.write_text(
        f"""
[homeserver]
url = "http://127.0.0.1:8008"
[bot]
user_id = "@bot:example.org"
password = {{ file = "key" }}
[storage]
data_dir = "{data_dir}"
store_key = {{ file = "key" }}
database_key = {{ file = "key" }}
{database}
[access]
allowed_homeservers = ["example.org"]
[rooms]
advice_team = "{TEAM_ROOM}"
""",
        encoding="utf-8",
    )
    md, js = await export_referral(load_config(config_path), ref, tmp_path / "out")
    assert md.read_text().startswith(f"# {ref}") and "Checked with the GP" in md.read_text()
    data = json.loads(js.read_text())
    assert data["ref"] == ref and data["declared_type"] == "child protection referral"
    assert [e["kind"] for e in data["record"]][:1] == ["received"]
    assert oct(md.stat().st_mode & 0o777) == "0o600"


async def test_a_backlog_of_late_referrals_is_one_digest_not_a_flood(h: Harness) -> None:
    for _ in range(45):
        await refer(h, Referral_type="contact")
    before = len(h.team())
    assert await h.tick(timedelta(days=7)) == 45
    [digest] = h.team()[before:]
    assert digest.body.startswith("OVERDUE: 45 referral(s)")
    assert "… and 5 more: !queue lists them all" in digest.body
    assert digest.mentions == (MANAGER,)
