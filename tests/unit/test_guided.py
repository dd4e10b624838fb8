"""The guided referral's state machine, over the real store and pipeline (tests/unit/harness.py):
what the practitioner is asked, what is stored after each answer, and that *send* ends in
exactly what the typed form would have recorded."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from handlers.ports import OutgoingMessage
from tests.engines import dump, on_postgres
from tests.forms import ANSWERS, referral
from tests.keys import KEYRING
from tests.unit.harness import NURSE, WORKER, Harness

# Storage behaviour: every test here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.usefixtures("engine")


def last(h: Harness, room: str) -> OutgoingMessage:
    return [m for m in h.messenger.to(room) if m.poll is None or m.poll.end_of is None][-1]


def _normal(ack: str) -> str:
    """An acknowledgement without what differs between two referrals (REF, times)."""
    ack = re.sub(r"REF-\d{4}-\d{6}", "REF", ack)
    return re.sub(r"\w+day \d\d \w+ \d{4}, \d\d:\d\d", "TIME", ack)


async def answer_all(h: Harness, sender: str = NURSE) -> str:
    room = h.dm(sender)
    await h.send(sender, "!refer")
    for expected, text in ANSWERS:
        asked = last(h, room).body
        assert expected.lower() in asked.lower(), (expected, asked)
        await h.send(sender, text)
    review = [m for m in h.messenger.to(room) if m.poll is None][-1].body
    assert "Please check your referral" in review and "Alex Testchild" in review
    assert "Send this as a CHILD PROTECTION REFERRAL?" in last(h, room).body
    return await h.send(sender, "send")


async def test_a_guided_referral_answered_by_text_records_what_the_typed_form_would(
    tmp_path: Path,
) -> None:
    h = await Harness.open(tmp_path / "db")
    send = await answer_all(h)
    typed = await h.send("@other:example.org", referral())
    async with h.store.transaction() as tx:
        guided_ref = await tx.referral_by_event(send)
        typed_ref = await tx.referral_by_event(typed)
        assert guided_ref is not None and typed_ref is not None
        assert guided_ref.form == typed_ref.form
        assert guided_ref.declared_type == "child protection referral"
        record = await tx.record_of(guided_ref.id)
        assert record[0].kind == "received" and record[0].detail["guided"] is True
        assert "guided" not in (await tx.record_of(typed_ref.id))[0].detail
        assert await tx.draft_count() == 0
    [ack] = [m for m in h.messenger.sent if m[1].thread_root == send and m[1].reply_to == send]
    [typed_ack] = [m for m in h.messenger.sent if m[1].reply_to == typed and m[1].thread_root]
    assert _normal(ack[1].body) == _normal(typed_ack[1].body)
    assert "recorded as a CHILD PROTECTION REFERRAL" in ack[1].body
    assert len([m for m in h.team() if guided_ref.ref in m.body]) == 1


async def test_back_skip_a_wrong_date_and_a_change_at_review(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "db")
    room = h.dm(NURSE)
    await h.send(NURSE, "!refer")
    await h.send(NURSE, "no")
    await h.send(NURSE, "skip")  # the name cannot be skipped
    assert "cannot be skipped" in h.messenger.to(room)[-1].body
    assert "full name" in last(h, room).body
    await h.send(NURSE, "Alex Testchild")
    wrong = await h.send(NURSE, "31/02/2014")
    reason = last(h, room)
    assert reason.reply_to == wrong
    assert "'31/02/2014' is not a date; use dd/mm/yyyy" in reason.body
    assert "date of birth" in reason.body.lower()
    await h.send(NURSE, "back")
    assert "full name" in last(h, room).body and "Your answer was: Alex Testchild" in (
        last(h, room).body
    )
    await h.send(NURSE, "Alex Testchild")
    assert "date of birth" in last(h, room).body.lower()  # on where it left off
    for _, text in ANSWERS[2:]:
        await h.send(NURSE, text)
    assert "Send this as a CHILD PROTECTION REFERRAL?" in last(h, room).body
    await h.send(NURSE, "change")
    assert "Which answer do you want to change?" in last(h, room).body
    await h.send(NURSE, "school")
    assert "school" in last(h, room).body.lower()
    await h.send(NURSE, "Other Academy")
    assert "Send this as a CHILD PROTECTION REFERRAL?" in last(h, room).body
    await h.send(NURSE, "change 13")  # the type, by number
    await h.send(NURSE, "2")
    assert "Send this as a CONTACT?" in last(h, room).body
    send = await h.send(NURSE, "send")
    async with h.store.transaction() as tx:
        stored = await tx.referral_by_event(send)
    assert stored is not None
    assert stored.form["child"]["school"] == "Other Academy"
    assert stored.form["child"].get("gp") is None
    assert stored.declared_type == "contact"


async def test_cancel_and_expiry_leave_nothing_stored(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "db", draft_hours=24.0)
    room = h.dm(NURSE)
    await h.send(NURSE, "!refer")
    for _, text in ANSWERS[:5]:
        await h.send(NURSE, text)
    await h.send(NURSE, "cancel")
    assert "Cancelled" in h.messenger.to(room)[-1].body
    await _nothing_stored(h)

    await h.send(NURSE, "!refer")
    for _, text in ANSWERS[:3]:
        await h.send(NURSE, text)
    assert await h.tick(timedelta(hours=21)) == 0
    await h.tick(timedelta(hours=1, minutes=1))
    assert "Reminder: your unfinished referral will be deleted" in h.messenger.to(room)[-1].body
    await h.tick(timedelta(minutes=30))  # one reminder only
    assert sum("Reminder" in m.body for m in h.messenger.to(room)) == 1
    await h.tick(timedelta(hours=2))
    assert "unfinished referral was deleted" in h.messenger.to(room)[-1].body
    await _nothing_stored(h)
    answered = await h.send(NURSE, "Alex")  # no draft now: what would you like to do?
    assert "What would you like to do?" in last(h, room).body
    assert last(h, room).poll is not None
    assert answered


async def _nothing_stored(h: Harness) -> None:
    async with h.store.transaction() as tx:
        assert await tx.draft_count() == 0
        assert await tx.referral_count() == 0
        # The bot's questions and the review are not kept either, once sent.
        rows = await tx.unsent(limit=100)
        assert not [r for r in rows if "Alex Testchild" in r.message.body]
    async with h.store._db.execute("SELECT txn_id, content FROM outbox") as cur:
        stored = [(str(r[0]), str(r[1])) for r in await cur.fetchall()]
    texts = [KEYRING.decrypt(content, f"outbox.content:{txn}") for txn, content in stored]
    assert texts, "the last message (cancelled, deleted) is kept"
    assert not [t for t in texts if "Alex" in t or "Example Road" in t], (
        "nothing of the answers is left in the stored messages"
    )


async def test_a_restart_resumes_at_the_right_question(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "db")
    room = h.dm(NURSE)
    await h.send(NURSE, "!refer")
    for _, text in ANSWERS[:6]:
        await h.send(NURSE, text)
    asked = last(h, room).body
    await h.store.close()
    h2 = await Harness.open(tmp_path / "db")
    h2.rooms = h.rooms
    await h2.send(NURSE, ANSWERS[6][1])
    assert "What happened" in last(h2, room).body
    assert "worried about" in asked
    for _, text in ANSWERS[7:]:
        await h2.send(NURSE, text)
    send = await h2.send(NURSE, "send")
    async with h2.store.transaction() as tx:
        stored = await tx.referral_by_event(send)
    assert stored is not None and stored.form["child"]["full_name"] == "Alex Testchild"


async def test_poll_taps_give_the_same_referral(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "db")
    room = h.dm(NURSE)

    async def tap(*answers: str) -> str:
        index, poll = [
            (i, m) for i, (_, m) in enumerate(h.messenger.sent) if m.room_id == room and m.poll
        ][-1]
        assert poll.poll is not None and poll.poll.end_of is None
        ids = {a for a, _ in poll.poll.answers}
        assert set(answers) <= ids, (answers, ids)
        return await h.event(
            NURSE,
            {"poll_of": f"$sent{index + 1}", "poll_answers": list(answers), "private": True},
        )

    await h.send(NURSE, "!refer")
    await tap("no")
    for _, text in ANSWERS[1:6]:
        await h.send(NURSE, text)
    await tap("neglect")  # still choosing: no reply yet
    assert "worried about" in last(h, room).body
    await tap("neglect", "physical_abuse", "done")
    for _, text in ANSWERS[7:10]:
        await h.send(NURSE, text)
    await tap("yes")
    await h.send(NURSE, "skip")
    await tap("child_protection")
    for _, text in ANSWERS[13:]:
        await h.send(NURSE, text)
    poll_index = [i for i, (_, m) in enumerate(h.messenger.sent) if m.room_id == room and m.poll][
        -1
    ]
    await tap("send")
    poll_event = f"$sent{poll_index + 1}"
    async with h.store.transaction() as tx:
        stored = await tx.referral_by_event(poll_event)
        assert stored is not None
        assert stored.form["concerns"] == ["neglect", "physical abuse"]
    typed = await h.send("@other:example.org", referral())
    async with h.store.transaction() as tx:
        typed_ref = await tx.referral_by_event(typed)
    assert typed_ref is not None and typed_ref.form == stored.form
    ends = [m.poll.end_of for _, m in h.messenger.sent if m.poll and m.poll.end_of]
    assert poll_event in ends, "every answered poll is ended"
    assert len(ends) == len(set(ends)) == 5


async def test_saved_details_are_offered_the_second_time_and_forgotten(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "db")
    room = h.dm(NURSE)
    await answer_all(h)
    assert any("kept, encrypted" in m.body for m in h.messenger.to(room)[-3:])
    shown = await h.send(NURSE, "!me")
    assert "Sam Referrer" in h.reply(shown) and "01632 960 123" in h.reply(shown)
    await h.send(NURSE, "!refer")
    for _, text in ANSWERS[:13]:
        await h.send(NURSE, text)
    offer = last(h, room)
    assert "Use your details from last time?" in offer.body and "Sam Referrer" in offer.body
    await h.send(NURSE, "yes")
    assert "Send this as a CHILD PROTECTION REFERRAL?" in last(h, room).body
    send = await h.send(NURSE, "send")
    async with h.store.transaction() as tx:
        stored = await tx.referral_by_event(send)
    assert stored is not None and stored.form["referrer"]["name"] == "Sam Referrer"
    gone = await h.send(NURSE, "!me forget")
    assert "Deleted" in h.reply(gone)
    async with h.store.transaction() as tx:
        assert await tx.saved_referrer(NURSE) is None
    none = await h.send(NURSE, "!me")
    assert "I keep no details" in h.reply(none)
    await h.send(NURSE, "!refer")
    for _, text in ANSWERS[:13]:
        await h.send(NURSE, text)
    assert "Your full name" in last(h, room).body


async def test_editing_an_earlier_answer_changes_it_and_says_so(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "db")
    await h.send(NURSE, "!refer")
    await h.send(NURSE, "no")
    name = await h.send(NURSE, "Alex Testchlid")
    await h.send(NURSE, "02/05/2014")
    edit = await h.event(
        NURSE, {"edit_of": name, "command": False, "private": True, "body": "Alex Testchild"}
    )
    assert "Changed 'Child's name' to: Alex Testchild" in h.reply(edit)
    for _, text in ANSWERS[3:]:
        await h.send(NURSE, text)
    send = await h.send(NURSE, "send")
    async with h.store.transaction() as tx:
        stored = await tx.referral_by_event(send)
    assert stored is not None and stored.form["child"]["full_name"] == "Alex Testchild"


async def test_hello_offers_the_choices_and_a_worker_takes_a_call(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "db")
    room = h.dm(NURSE)
    await h.send(NURSE, "hello, I need to make a referral about a child")
    menu = last(h, room)
    assert menu.poll is not None and [a for a, _ in menu.poll.answers] == [
        "refer",
        "status",
        "help",
    ]
    await h.send(NURSE, "1")
    assert "immediate danger" in last(h, room).body
    await h.send(NURSE, "cancel")

    worker_room = h.dm(WORKER)
    refused = await h.send(NURSE, "!phone-referral")
    assert "Only members of the advice team" in h.reply(refused)
    await h.send(WORKER, "!phone-referral")
    assert "CALLER" in h.messenger.to(worker_room)[-2].body
    for _, text in ANSWERS[:13]:
        await h.send(WORKER, text)
    assert "The caller's full name?" in last(h, worker_room).body
    for _, text in ANSWERS[13:]:
        await h.send(WORKER, text)
    send = await h.send(WORKER, "send")
    async with h.store.transaction() as tx:
        stored = await tx.referral_by_event(send)
        assert await tx.saved_referrer(WORKER) is None, "a caller's details are not kept"
    assert stored is not None and stored.channel == "phone"
    assert stored.written_followup_due is not None


def test_poll_events_to_and_from_matrix() -> None:
    from nio import Event

    from bot.events import to_inbox_item
    from bot.messenger import matrix_event
    from handlers.ports import Poll

    content = {
        "m.relates_to": {"rel_type": "m.reference", "event_id": "$poll"},
        "org.matrix.msc3381.poll.response": {"answers": ["no"]},
    }
    event = Event.parse_decrypted_event(
        {
            "type": "org.matrix.msc3381.poll.response",
            "event_id": "$tap",
            "sender": NURSE,
            "origin_server_ts": 1,
            "content": content,
        }
    )
    event.decrypted = True
    item = to_inbox_item(event, "!dm:example.org", True, "@bot:example.org", private=True)
    assert item is not None
    assert item.payload == {"poll_of": "$poll", "poll_answers": ["no"], "private": True}
    event.decrypted = False
    assert to_inbox_item(event, "!dm:example.org", True, "@bot:example.org") is None

    start = OutgoingMessage(
        "!dm:example.org",
        "Q\n1. Yes\n2. No",
        "<p>Q</p>",
        poll=Poll(question="Q?", answers=(("yes", "Yes"), ("no", "No"))),
    )
    kind, body = matrix_event(OutgoingMessage.from_json(start.to_json()))
    assert kind == "org.matrix.msc3381.poll.start"
    poll = body["org.matrix.msc3381.poll.start"]
    assert poll["kind"] == "org.matrix.msc3381.poll.disclosed" and poll["max_selections"] == 1
    assert poll["answers"][1] == {"id": "no", "org.matrix.msc1767.text": "No"}
    assert body["org.matrix.msc1767.text"] == start.body, "the numbered text fallback"
    kind, body = matrix_event(OutgoingMessage("!r", "closed", "", poll=Poll(end_of="$p")))
    assert kind == "org.matrix.msc3381.poll.end"
    assert body["m.relates_to"] == {"rel_type": "m.reference", "event_id": "$p"}


async def test_drafts_and_kept_details_are_encrypted_at_rest_and_survive_rotation(
    tmp_path: Path,
) -> None:
    from storage.engine import Store
    from storage.keyring import Keyring

    h = await Harness.open(tmp_path / "db")
    await answer_all(h)  # kept details: Sam Referrer
    await h.send(NURSE, "!refer")
    await h.send(NURSE, "no")
    await h.send(NURSE, "Zebedee Secretchild")
    db = h.store.where
    if not on_postgres():  # the files SQLite writes (on PostgreSQL the server's)
        assert isinstance(db, Path)
        raw = b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))
        assert b"Zebedee" not in raw and b"Sam Referrer" not in raw and b"01632" not in raw
    else:
        dumped = dump(db)
        assert "Zebedee" not in dumped and "Sam Referrer" not in dumped and "01632" not in dumped

    new = Keyring("a-brand-new-database-key-" + "z" * 20)
    async with h.store.transaction() as tx:
        counts = await tx.reencrypt_all(KEYRING, new)
    assert counts["guided"] == 2
    await h.store.close()
    store = await Store.open(db, new)
    async with store.transaction() as tx:
        draft = await tx.draft_of(h.dm(NURSE), NURSE)
        saved = await tx.saved_referrer(NURSE)
    await store.close()
    assert draft is not None and draft.state["answers"]["child.full_name"] == "Zebedee Secretchild"
    assert saved is not None and saved["referrer.name"] == "Sam Referrer"


async def test_any_answer_gets_a_reply_and_never_breaks_the_draft(tmp_path: Path) -> None:
    """Odd answers at every question: each gets a reply, none makes a handler fail, and
    the draft goes on (the answers a person could really send, from many alphabets)."""
    import random

    from handlers.ports import txn_id_for

    rng = random.Random(12)
    odd = [
        "",
        " ",
        "0",
        "99",
        "1, 99",
        "-1",
        "yes no",
        "back back",
        "SKIP",
        "Review!",
        "change 0",
        "change 999",
        "\u202eevil\u202c",
        "\ud800",
        "x" * 25_000,
        "Child name: Sam\nDate of birth: 01/01/2015",
        "Ethnicity: a\nEthnicity: b",
        "Religion:",
        "31/12/9999",
        "due 01/01/1900",
        "about 300",
        "😀" * 50,
        "<b>bold</b> @room",
        "!not-a-command here",
    ]
    h = await Harness.open(tmp_path / "db")
    room = h.dm(NURSE)
    await h.send(NURSE, "!refer")
    for step in range(120):
        text = rng.choice(odd) if step % 3 else ANSWERS[step // 3 % len(ANSWERS)][1]
        before = len(h.messenger.to(room))
        h.now += timedelta(seconds=10)  # a person answering (handlers/flood.py: GUIDED)
        event = await h.send(NURSE, text)
        assert txn_id_for(event, "failed") not in h.messenger.seen_txn_ids, text[:50]
        if text.strip().casefold() == "cancel":
            continue
        assert len(h.messenger.to(room)) > before or text.startswith("!"), text[:50]
    async with h.store.transaction() as tx:
        draft = await tx.draft_of(room, NURSE)
    assert draft is None or draft.state["step"]


async def test_the_agency_is_a_poll_of_the_configured_agencies(tmp_path: Path) -> None:
    from schemas.config import AgencyConfig

    agencies = {
        "health": AgencyConfig(name="Community health"),
        "police": AgencyConfig(name="Police"),
    }
    h = await Harness.open(tmp_path / "db", agencies=agencies)
    room = h.dm(NURSE)
    await h.send(NURSE, "!refer")
    for _, text in ANSWERS[:15]:
        await h.send(NURSE, text)
    asked = last(h, room)
    assert asked.poll is not None and "organisation" in asked.poll.question
    assert asked.poll.answers == (("health", "Community health"), ("police", "Police"))
    await h.send(NURSE, "2")  # by number
    await h.send(NURSE, ANSWERS[-1][1])
    send = await h.send(NURSE, "send")
    async with h.store.transaction() as tx:
        stored = await tx.referral_by_event(send)
    assert stored is not None and stored.form["referrer"]["agency"] == "police"


async def test_concerns_tapped_then_finished_by_typing_done(tmp_path: Path) -> None:
    h = await Harness.open(tmp_path / "db")
    room = h.dm(NURSE)
    await h.send(NURSE, "!refer")
    for _, text in ANSWERS[:6]:
        await h.send(NURSE, text)
    index = [i for i, (_, m) in enumerate(h.messenger.sent) if m.room_id == room and m.poll][-1]
    await h.event(
        NURSE, {"poll_of": f"$sent{index + 1}", "poll_answers": ["self_harm"], "private": True}
    )
    await h.send(NURSE, "done")
    assert "What happened" in last(h, room).body
    async with h.store.transaction() as tx:
        draft = await tx.draft_of(room, NURSE)
    assert draft is not None and draft.state["answers"]["concerns"] == "self-harm"
