"""The guided referral on a real Synapse with real end-to-end encryption: one question at a
time, answered by text or by tapping polls (MSC3381 events, encrypted), a crash in the
middle, expiry and cancel, and the referrer's details kept for next time."""

from __future__ import annotations

import re
import time

import pytest

from bot.chat_user import ChatUser, Received
from bot.world import World
from tests.forms import ANSWERS, referral
from tests.integration.botproc import BotProcess, poll_until
from tests.integration.live import db_rows, open_dm, running

pytestmark = pytest.mark.integration

POLL_START = "org.matrix.msc3381.poll.start"
POLL_END = "org.matrix.msc3381.poll.end"


class Talk:
    """A practitioner's side of the conversation, as their client sees it."""

    def __init__(self, world: World, user: ChatUser, room: str) -> None:
        self.world = world
        self.user = user
        self.room = room

    def from_bot(self, after: float = 0.0) -> list[Received]:
        return [
            r
            for r in self.user.received
            if r.room_id == self.room and r.sender == self.world.bot_user and r.at >= after
        ]

    async def say(
        self, text: str, expect: str, timeout: float = 30.0, *, poll: bool = False
    ) -> Received:
        """Send `text`; the bot's next message containing `expect` (not a poll's end;
        `poll`: only a poll)."""
        sent_at = time.monotonic()
        await self.user.send(self.room, text)
        return await self.wait(expect, sent_at, timeout, poll=poll)

    async def wait(
        self, expect: str, after: float, timeout: float = 30.0, *, poll: bool = False
    ) -> Received:
        found = await self.user.wait_for(
            lambda r: (
                r.room_id == self.room
                and r.sender == self.world.bot_user
                and r.at >= after
                and r.type != POLL_END
                and (r.type == POLL_START or not poll)
                and expect.lower() in r.body.lower()
            ),
            timeout,
        )
        assert found[0].decrypted, "every message of the conversation is end-to-end encrypted"
        return found[0]

    async def answers(self, start: int, stop: int, timeout: float = 30.0) -> None:
        """Answer ANSWERS[start:stop], each time waiting for the question after it."""
        for index in range(start, stop):
            await self.say(ANSWERS[index][1], ANSWERS[index + 1][0], timeout)

    def last_poll(self) -> Received:
        return [r for r in self.from_bot() if r.type == POLL_START][-1]

    async def tap(
        self, answers: list[str], expect: str | None, *, poll: bool = False
    ) -> Received | None:
        started = self.last_poll()
        ids = [a for a, _ in started.poll_answers]
        assert set(answers) <= set(ids), (answers, ids)
        sent_at = time.monotonic()
        await self.user.send_poll_response(self.room, started.event_id, answers)
        if expect is None:
            return None
        return await self.wait(expect, sent_at, poll=poll)


def _normal(ack: str) -> str:
    ack = re.sub(r"REF-\d{4}-\d{6}", "REF", ack)
    return re.sub(r"\w+day \d\d \w+ \d{4}, \d\d:\d\d", "TIME", ack)


async def _typed_ack(world: World) -> tuple[str, str]:
    """The same child sent with the typed form by someone else: (event, acknowledgement)."""
    other, dm = await open_dm(world, f"typed-{world.bot_user[1:5]}")
    event = await other.send(dm, referral())
    return event, (await other.wait_reply(event, 30)).body


def _form_of(world: World, event_id: str) -> str:
    rows = db_rows(world, "SELECT ref FROM referrals WHERE event_id = ?", event_id)
    assert len(rows) == 1, rows
    return str(rows[0][0])


async def test_a_guided_referral_by_text_with_back_skip_a_wrong_date_and_a_change(
    world: World,
) -> None:
    async with running(world):
        nurse, dm = await open_dm(world, f"gnurse-{world.bot_user[1:5]}")
        talk = Talk(world, nurse, dm)
        menu = await talk.say("hello, I need to make a referral about a child", "like to do")
        assert menu.type == POLL_START and [a for a, _ in menu.poll_answers] == [
            "refer",
            "status",
            "help",
        ]
        first = await talk.say("1", "immediate danger")
        assert first.type == POLL_START, "fixed answers come as a poll"
        assert "1. Yes" in first.body, "with a numbered text fallback"
        await talk.say("no", "full name")
        await talk.say("skip", "cannot be skipped")
        await talk.say("Alex Testchild", "date of birth")
        reason = await talk.say("31/02/2014", "is not a date")
        assert "'31/02/2014' is not a date; use dd/mm/yyyy" in reason.body
        back = await talk.say("back", "full name")
        assert "Your answer was: Alex Testchild" in back.body
        await talk.say("Alex Testchild", "date of birth")
        await talk.answers(2, len(ANSWERS) - 1)
        review_poll = await talk.say(
            ANSWERS[-1][1], "Send this as a CHILD PROTECTION REFERRAL", poll=True
        )
        assert review_poll.type == POLL_START
        review = [r for r in talk.from_bot() if "Please check your referral" in r.body][-1]
        assert "Alex Testchild" in review.body and "GP: (skipped)" in review.body
        await talk.say("change", "Which answer do you want to change")
        await talk.say("school", "school")
        await talk.say(
            "Example Primary School", "Send this as a CHILD PROTECTION REFERRAL", poll=True
        )
        review_poll = talk.last_poll()
        sent_at = time.monotonic()
        send = await nurse.send(dm, "send")
        ack = await nurse.wait_reply(send, 30)
        ref = ack.body.split(":", 1)[0]
        await world.worker.wait_for(lambda r: r.room_id == world.team_room and ref in r.body)
        ended = await nurse.wait_for(
            lambda r: r.room_id == dm and r.type == POLL_END and r.at >= sent_at
        )
        assert ended[0].content["m.relates_to"]["event_id"] == review_poll.event_id
        _typed_event, typed = await _typed_ack(world)

    assert _normal(ack.body) == _normal(typed)
    assert _form_of(world, send) == ref
    forms = db_rows(world, "SELECT COUNT(*) FROM referrals")
    assert forms == [(2,)]
    assert db_rows(world, "SELECT COUNT(*) FROM drafts") == [(0,)]


async def test_a_guided_referral_by_poll_taps_matches_the_typed_form(world: World) -> None:
    async with running(world) as app:
        nurse, dm = await open_dm(world, f"gpoll-{world.bot_user[1:5]}")
        talk = Talk(world, nurse, dm)
        await talk.say("!refer", "immediate danger")
        await talk.tap(["no"], "full name")
        await talk.answers(1, 6)
        await talk.tap(["neglect"], None)  # still choosing
        await talk.tap(["neglect", "physical_abuse", "done"], "What happened")
        await talk.answers(7, 10)
        await talk.tap(["yes"], "Identity and needs")
        await talk.say("skip", "CHILD PROTECTION REFERRAL or a CONTACT")
        await talk.tap(["child_protection"], "Your full name")
        await talk.answers(13, len(ANSWERS) - 1)
        await talk.say(ANSWERS[-1][1], "Send this as a CHILD PROTECTION REFERRAL", poll=True)
        review_poll = talk.last_poll()
        await talk.tap(["send"], None)
        ack = await nurse.wait_reply(review_poll.event_id, 30)
        ref = ack.body.split(":", 1)[0]
        typed_event, typed = await _typed_ack(world)
        assert app.store is not None
        async with app.store.transaction() as tx:
            guided_referral = await tx.referral_by_event(review_poll.event_id)
            typed_referral = await tx.referral_by_event(typed_event)
            assert guided_referral is not None and typed_referral is not None
            assert guided_referral.form == typed_referral.form, "the same stored form"
            record = await tx.record_of(guided_referral.id)
            assert record[0].detail.get("guided") is True
        polls = [r.event_id for r in talk.from_bot() if r.type == POLL_START]
        await poll_until(
            lambda: (
                {
                    r.content["m.relates_to"]["event_id"]
                    for r in talk.from_bot()
                    if r.type == POLL_END
                }
                >= set(polls)
            ),
            20,
            "every poll ended",
        )

    assert _normal(ack.body) == _normal(typed)
    assert ref.startswith("REF-")
    assert db_rows(world, "SELECT COUNT(*) FROM drafts") == [(0,)]


async def test_killed_mid_conversation_it_resumes_at_the_right_question(world: World) -> None:
    bot = BotProcess(world.config_path, world.base / "bot.log")
    async with bot:
        nurse, dm = await open_dm(world, f"gcrash-{world.bot_user[1:5]}")
        talk = Talk(world, nurse, dm)
        await talk.say("!refer", "immediate danger")
        await talk.answers(0, 5)
        # Killed right after an answer is sent: handled or not, nothing may be lost.
        sent_at = time.monotonic()
        await nurse.send(dm, ANSWERS[5][1])
        await bot.kill9()
        await bot.start()
        await talk.wait(ANSWERS[6][0], sent_at, 60)
        await talk.answers(6, 9, 60)
        # Killed while waiting for the next question.
        sent_at = time.monotonic()
        await nurse.send(dm, ANSWERS[9][1])
        await talk.wait(ANSWERS[10][0], sent_at, 60)
        await bot.kill9()
        await bot.start()
        await talk.answers(10, len(ANSWERS) - 1, 60)
        await talk.say(ANSWERS[-1][1], "Send this as a CHILD PROTECTION REFERRAL", 60, poll=True)
        send = await nurse.send(dm, "send")
        ack = await nurse.wait_reply(send, 60)

    questions = [
        m.group(1)
        for r in talk.from_bot()
        if r.type != POLL_END
        for m in [re.search(r"Question (\d+) of", r.body)]
        if m
    ]
    assert sorted(questions, key=int) == [str(n) for n in range(1, 18)], (
        "each question asked exactly once, none lost"
    )
    assert "CHILD PROTECTION REFERRAL" in ack.body
    rows = db_rows(world, "SELECT event_id FROM referrals")
    assert rows == [(send,)]
    assert db_rows(world, "SELECT COUNT(*) FROM drafts") == [(0,)]
    assert db_rows(world, "SELECT COUNT(*) FROM inbox WHERE state != 'done'") == [(0,)]


async def test_expiry_and_cancel_leave_nothing_and_details_are_kept_for_next_time(
    world: World,
) -> None:
    text = world.config_path.read_text(encoding="utf-8")
    world.config_path.write_text(
        text + "\n[intake]\ndraft_hours = 0.01\n\n[deadlines]\ncheck_interval_seconds = 1\n",
        encoding="utf-8",
    )
    async with running(world):
        nurse, dm = await open_dm(world, f"gexp-{world.bot_user[1:5]}")
        talk = Talk(world, nurse, dm)
        await talk.say("!refer", "immediate danger")
        await talk.say("no", "full name")
        await talk.say("Alex Testchild", "date of birth")
        await talk.wait("Reminder: your unfinished referral", time.monotonic() - 60, 60)
        await talk.wait("unfinished referral was deleted", time.monotonic() - 60, 60)
        assert db_rows(world, "SELECT COUNT(*) FROM drafts") == [(0,)]

        await talk.say("!refer", "immediate danger")
        await talk.say("no", "full name")
        await talk.say("cancel", "Cancelled")
        assert db_rows(world, "SELECT COUNT(*) FROM drafts") == [(0,)]
        assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(0,)]

        # First referral: the details are asked for, then kept.
        await talk.say("!refer", "immediate danger")
        await talk.answers(0, len(ANSWERS) - 1)
        await talk.say(ANSWERS[-1][1], "Send this as a CHILD PROTECTION REFERRAL", poll=True)
        await talk.say("send", "kept, encrypted")
        shown = await talk.say("!me", "Your details")
        assert "Sam Referrer" in shown.body and "01632 960 123" in shown.body
        # Second: offered for one tap.
        await talk.say("!refer", "immediate danger")
        await talk.answers(0, 12)
        offer = await talk.say(ANSWERS[12][1], "Use your details from last time")
        assert offer.type == POLL_START and "Sam Referrer" in offer.body
        await talk.tap(["yes"], "Send this as a CHILD PROTECTION REFERRAL", poll=True)
        send = await nurse.send(dm, "send")
        await nurse.wait_reply(send, 30)
        await talk.say("!me forget", "Deleted")
        assert db_rows(world, "SELECT COUNT(*) FROM saved_referrers") == [(0,)]

    assert db_rows(world, "SELECT COUNT(*) FROM referrals") == [(2,)]
    assert db_rows(world, "SELECT COUNT(*) FROM drafts") == [(0,)]
    stored = db_rows(world, "SELECT state FROM drafts") + db_rows(
        world, "SELECT details FROM saved_referrers"
    )
    assert stored == []
