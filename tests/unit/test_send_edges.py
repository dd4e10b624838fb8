"""Answers the homeserver accepts, and no send that it refuses blocks a room (issue 10).

The shape of every answer follows the incoming event's own relation (handlers/notify.py,
answer_place); a lasting refusal (SendRejected) is tried in fallback shapes and then given
up as a failed outbox row, the advice team told, the room's later messages sent.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.events import relation_of
from bot.messenger import classify_refusal, matrix_content
from bot.pipeline import fallback_shapes
from handlers.notify import answer_place
from handlers.ports import Incoming, OutgoingMessage, SendRejected
from tests.engines import sql
from tests.forms import referral
from tests.unit.harness import NURSE, TEAM_ROOM, WORKER, Harness
from tests.unit.rig import cli, write_config

# Storage behaviour: every test here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.usefixtures("engine")


@pytest_asyncio.fixture
async def h(tmp_path: Path, engine: str) -> AsyncIterator[Harness]:
    harness = await Harness.open(tmp_path / "data" / "referrals.db")
    harness.pipeline.rejected_delay_s = 0.0
    yield harness
    await harness.store.close()


def incoming(**kw: Any) -> Incoming:
    base: dict[str, Any] = {
        "seq": 1,
        "event_id": "$ev",
        "room_id": "!dm:example.org",
        "sender": NURSE,
        "origin_ts": 0,
        "room_encrypted": True,
        "body": "!refer",
    }
    return Incoming(**{**base, **kw})


def refs(text: str) -> list[str]:
    return re.findall(r"REF-\d{4}-\d{6}", text)


def rows(h: Harness, query: str, *args: object) -> list[tuple[Any, ...]]:
    return sql(h.store.where, query, *args)


# -- where an answer goes -----------------------------------------------------------------


def test_answer_place_follows_the_events_own_relation() -> None:
    plain = incoming()
    assert answer_place(plain) == (None, "$ev")
    assert answer_place(plain, open_thread=True) == ("$ev", "$ev")
    in_thread = incoming(thread_root="$root", related=True)
    assert answer_place(in_thread) == ("$root", "$ev")
    assert answer_place(in_thread, open_thread=True) == ("$root", "$ev")
    other = incoming(related=True)  # a reply, a reference, an annotation
    assert answer_place(other) == (None, "$ev")
    assert answer_place(other, open_thread=True) == (None, "$ev"), "never a thread on it"


@pytest.mark.parametrize(
    ("relates", "expected"),
    [
        (None, {}),
        ("not a dict", {}),
        ({}, {}),
        ({"foo": 1}, {}),
        (
            {"rel_type": "m.thread", "event_id": "$r", "m.in_reply_to": {"event_id": "$x"}},
            {"thread_root": "$r", "related": True},
        ),
        ({"rel_type": "m.thread", "event_id": 5}, {"related": True}),
        ({"rel_type": "m.reference", "event_id": "$r"}, {"related": True}),
        ({"rel_type": "m.annotation", "event_id": "$r", "key": "x"}, {"related": True}),
        ({"m.in_reply_to": {"event_id": "$r"}}, {"related": True}),
    ],
)
def test_relation_of_an_events_content(relates: object, expected: dict[str, object]) -> None:
    content: dict[str, Any] = {"body": "!refer"}
    if relates is not None:
        content["m.relates_to"] = relates
    assert relation_of(content) == expected


async def test_referral_sent_in_a_thread_is_answered_in_that_thread(h: Harness) -> None:
    first = await h.send(NURSE, referral())
    [ack1] = h.replies_to(first)
    assert ack1.thread_root == first
    second = await h.send(
        NURSE, referral(Child_name="Bo Second"), relation={"thread_root": first, "related": True}
    )
    [ack2] = h.replies_to(second)
    assert ack2.thread_root == first, "in the thread it was sent in, not a new one on it"
    ref2 = refs(ack2.body)[0]
    assert "in this thread" in ack2.body
    assert h.messenger.thread_events[first] == second

    # Its updates go to the same thread.
    await h.send(WORKER, f"!claim {ref2}", room=TEAM_ROOM)
    update = [m for m in h.thread(first) if ref2 in m.body]
    assert update and "picked up" in update[-1].body
    # A plain referral after it still opens its own thread.
    third = await h.send(NURSE, referral(Child_name="Cy Third"))
    [ack3] = h.replies_to(third)
    assert ack3.thread_root == third


async def test_referral_with_another_relation_gets_a_plain_reply(h: Harness) -> None:
    event = await h.send(NURSE, referral(), relation={"related": True})
    [ack] = h.replies_to(event)
    assert ack.thread_root is None and ack.reply_to == event
    assert "in replies to your message" in ack.body
    ref = refs(ack.body)[0]
    assert rows(h, "SELECT thread_root FROM referrals WHERE ref = ?", ref) == [(None,)]
    await h.send(WORKER, f"!claim {ref}", room=TEAM_ROOM)
    told = [m for m in h.replies_to(event) if "picked up" in m.body]
    assert len(told) == 1 and told[0].thread_root is None


async def test_commands_from_a_thread_are_answered_in_it(h: Harness) -> None:
    event = await h.send(NURSE, referral())
    ref = refs(h.replies_to(event)[0].body)[0]
    status = await h.send(NURSE, f"!status {ref}", relation={"thread_root": event, "related": True})
    [answer] = h.replies_to(status)
    assert answer.thread_root == event and ref in answer.body
    queue = await h.send(
        WORKER, "!queue", room=TEAM_ROOM, relation={"thread_root": "$teamroot", "related": True}
    )
    [answer] = h.replies_to(queue)
    assert answer.thread_root == "$teamroot" and ref in answer.body


# -- the Matrix content ---------------------------------------------------------------------


def test_thread_fallback_points_at_the_latest_event_in_the_thread() -> None:
    update = OutgoingMessage("!r:x", "b", "<p>b</p>", thread_root="$root")
    relates = matrix_content(update, "$latest")["m.relates_to"]
    assert relates == {
        "rel_type": "m.thread",
        "event_id": "$root",
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": "$latest"},
    }
    assert matrix_content(update)["m.relates_to"]["m.in_reply_to"] == {"event_id": "$root"}
    answer = OutgoingMessage("!r:x", "b", "<p>b</p>", thread_root="$root", reply_to="$asked")
    relates = matrix_content(answer, "$latest")["m.relates_to"]
    assert relates["is_falling_back"] is False
    assert relates["m.in_reply_to"] == {"event_id": "$asked"}


def test_mentioned_users_are_pills_in_the_html() -> None:
    named = OutgoingMessage(
        "!r:x",
        "Managers: @boss:example.org, @boss:example.org.uk",
        "<p>Managers: @boss:example.org, @boss:example.org.uk</p>",
        mentions=("@boss:example.org",),
    )
    content = matrix_content(named)
    assert content["formatted_body"] == (
        '<p>Managers: <a href="https://matrix.to/#/@boss:example.org">@boss:example.org</a>'
        ", @boss:example.org.uk</p>"
    )
    assert content["body"] == named.body
    assert content["m.mentions"] == {"user_ids": ["@boss:example.org"]}

    unnamed = OutgoingMessage("!r:x", "Update", "<p>Update</p>", mentions=("@a&b:x.org",))
    content = matrix_content(unnamed)
    assert content["formatted_body"] == (
        '<p>Update</p><p><a href="https://matrix.to/#/@a%26b:x.org">@a&amp;b:x.org</a></p>'
    )
    assert content["body"] == "Update\n@a&b:x.org"


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "errcode", "code"),
    [
        (400, "M_UNKNOWN", "400 M_UNKNOWN"),
        (403, "M_FORBIDDEN", "403 M_FORBIDDEN"),
        (413, "M_TOO_LARGE", "413 M_TOO_LARGE"),
        (400, "M_BAD_JSON", "400 M_BAD_JSON"),
        (404, None, "404 no-errcode"),
        (429, "M_LIMIT_EXCEEDED", None),
        (401, "M_UNKNOWN_TOKEN", None),
        (408, None, None),
        (500, "M_UNKNOWN", None),
        (502, None, None),
        (None, None, None),
    ],
)
def test_which_refusals_last(status: int | None, errcode: str | None, code: str | None) -> None:
    rejected = classify_refusal(status, errcode)
    assert (rejected.code if rejected else None) == code


def test_fallback_shapes() -> None:
    ack = OutgoingMessage("!r:x", "b", "h", reply_to="$e", thread_root="$e")
    shapes = fallback_shapes(ack, "txn")
    assert [name for name, _, _ in shapes] == ["as-stored", "reply", "plain"]
    assert [(m.thread_root, m.reply_to) for _, m, _ in shapes] == [
        ("$e", "$e"),
        (None, "$e"),
        (None, None),
    ]
    assert len({t for _, _, t in shapes}) == 3, "each shape its own transaction ID"
    assert [n for n, _, _ in fallback_shapes(OutgoingMessage("!r:x", "b", "h"), "t")] == [
        "as-stored"
    ]


def refuse_threads(message: OutgoingMessage) -> SendRejected | None:
    if message.thread_root is not None:
        return SendRejected("M_UNKNOWN", 400)
    return None


async def test_ack_refused_as_a_thread_goes_as_a_plain_reply(h: Harness) -> None:
    h.messenger.reject = refuse_threads
    event = await h.send(NURSE, referral())
    [ack] = h.replies_to(event)
    assert ack.thread_root is None, "the referrer still learns the REF"
    ref = refs(ack.body)[0]
    assert len(h.messenger.rejected) == 3
    # Later updates follow: replies, not the thread the homeserver will not take.
    await h.send(WORKER, f"!claim {ref}", room=TEAM_ROOM)
    told = [m for m in h.replies_to(event) if "picked up" in m.body]
    assert len(told) == 1 and told[0].thread_root is None
    assert len(h.messenger.rejected) == 3, "no more attempts in the refused shape"
    assert rows(h, "SELECT thread_root FROM referrals") == [(None,)]
    assert rows(h, "SELECT COUNT(*) FROM outbox WHERE failed_at IS NOT NULL") == [(0,)]


async def test_a_lasting_refusal_is_given_up_and_the_room_goes_on(
    h: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def too_large(message: OutgoingMessage) -> SendRejected | None:
        return SendRejected("M_TOO_LARGE", 413) if len(message.html) > 60_000 else None

    h.messenger.reject = too_large
    event = await h.send(NURSE, referral())
    ref = refs(h.replies_to(event)[0].body)[0]
    await h.send(WORKER, f"!tell {ref} " + "<&>" * 10_000, room=TEAM_ROOM)
    await h.send(WORKER, f"!tell {ref} Please call us back today.", room=TEAM_ROOM)

    # The refused message was tried in every shape, 3 times each, then given up.
    assert len(h.messenger.rejected) == 9
    [(oid, purpose, error)] = rows(
        h, "SELECT id, purpose, last_error FROM outbox WHERE failed_at IS NOT NULL"
    )
    assert (purpose, error) == ("tell_note", "413 M_TOO_LARGE")
    # The room's later message went out.
    thread = h.thread(event)
    assert any("Please call us back today." in m.body for m in thread)
    # The advice team was told in one line, with no content of the message.
    [notice] = [m for m in h.team() if "NOT DELIVERED" in m.body]
    assert ref in notice.body and "413 M_TOO_LARGE" in notice.body and "tell note" in notice.body
    assert "<&>" not in notice.body and "&lt;" not in notice.html
    assert f"--retry {oid}" in notice.body
    # The running record notes it.
    kinds = [k for (k,) in rows(h, "SELECT kind FROM record_entries ORDER BY id")]
    assert "tell_note_send_failed" in kinds
    assert h.pipeline.send_failures == 1

    # The operator lists it and requeues it, beside the running bot.
    config = write_config(tmp_path)
    capsys.readouterr()
    assert await cli("outbox", "--failed", "-c", config) == 0
    listing = capsys.readouterr().out
    assert f"{oid}\t" in listing and ref in listing and "413 M_TOO_LARGE" in listing
    assert "<&>" not in listing and "call us back" not in listing, "no message text"
    assert await cli("outbox", "--retry", "99999", "-c", config) == 1
    h.messenger.reject = lambda _m: None  # say the homeserver's limit was raised
    assert await cli("outbox", "--retry", str(oid), "-c", config) == 0
    assert "Requeued" in capsys.readouterr().out
    await h.tick()  # the deadline clock picks it up
    assert any("<&><&>" in m.body for m in h.thread(event))
    assert rows(h, "SELECT COUNT(*) FROM outbox WHERE failed_at IS NOT NULL") == [(0,)]
    kinds = [k for (k,) in rows(h, "SELECT kind FROM record_entries ORDER BY id")]
    assert kinds[-2:] == ["tell_note_send_requeued", "tell_note_sent"]
    capsys.readouterr()
    assert await cli("outbox", "--failed", "-c", config) == 0
    assert "No failed messages" in capsys.readouterr().out


async def test_a_refusal_in_the_team_room_is_only_logged(h: Harness) -> None:
    def refuse_team(message: OutgoingMessage) -> SendRejected | None:
        return SendRejected("M_FORBIDDEN", 403) if message.room_id == TEAM_ROOM else None

    h.messenger.reject = refuse_team
    event = await h.send(NURSE, referral())
    assert refs(h.replies_to(event)[0].body)
    assert h.team() == []
    assert [p for (p,) in rows(h, "SELECT purpose FROM outbox WHERE failed_at IS NOT NULL")] == [
        "team_summary"
    ]
    second = await h.send(NURSE, referral(Child_name="Di Later"))
    assert refs(h.replies_to(second)[0].body), "the referrer's room is not held up"
