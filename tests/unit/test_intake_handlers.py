"""The intake use case through the real store and pipeline, with an in-memory messenger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from bot.pipeline import Pipeline
from handlers import intake
from handlers.settings import Settings
from schemas.messages import InboxItem
from storage.engine import Store
from tests.engines import location, sql
from tests.forms import referral
from tests.keys import KEYRING
from tests.unit.harness import inject
from tests.unit.memory_messenger import MemoryMessenger

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")

DM = "!dm:example.org"
TEAM = "!team:example.org"
NURSE = "@nurse:example.org"
# Wednesday 25 November 2026, 10:00 UTC
TS = int(datetime(2026, 11, 25, 10, 0, tzinfo=UTC).timestamp() * 1000)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(location(tmp_path / "referrals.db"), KEYRING)
    yield s
    await s.close()


@pytest.fixture
def messenger() -> MemoryMessenger:
    return MemoryMessenger(encrypted_rooms={DM, TEAM})


@pytest.fixture
def pipeline(store: Store, messenger: MemoryMessenger) -> Pipeline:
    return Pipeline(
        store, Settings(bot_user_id="@bot:example.org", advice_team_room=TEAM), messenger
    )


_n = 0


async def deliver(
    store: Store,
    pipeline: Pipeline,
    body: str,
    *,
    room: str = DM,
    encrypted: bool = True,
    event_id: str | None = None,
) -> str:
    global _n
    _n += 1
    event_id = event_id or f"$event{_n}"
    payload = {"body": body} if encrypted else {"withheld": True}
    await inject(
        store, pipeline, InboxItem(event_id, room, NURSE, TS + _n, encrypted, "pending", payload)
    )
    return event_id


def rows(store: Store, query: str) -> list[tuple[object, ...]]:
    return sql(store.where, query)


async def test_valid_referral_is_recorded_acknowledged_and_summarised(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    event_id = await deliver(store, pipeline, referral())
    [ack] = messenger.to(DM)
    assert ack.reply_to == event_id and ack.thread_root == event_id
    assert "REF-2026-000001" in ack.body
    assert "CHILD PROTECTION REFERRAL" in ack.body
    assert "Thursday 26 November 2026, 10:00" in ack.body  # one working day later
    [summary] = messenger.to(TEAM)
    assert "REF-2026-000001" in summary.body and "CHILD PROTECTION REFERRAL" in summary.body
    assert "Alex Testchild" not in summary.body and "dad was angry" not in summary.body
    assert rows(store, "SELECT ref, declared_type, declared_by, state FROM referrals") == [
        ("REF-2026-000001", "child protection referral", NURSE, "received")
    ]
    kinds = [str(k) for (k,) in rows(store, "SELECT kind FROM record_entries ORDER BY id")]
    # The two rooms are served by separate workers, in either order.
    assert kinds[0] == "received" and sorted(kinds[1:]) == ["ack_sent", "team_summary_sent"]
    assert rows(store, "SELECT payload FROM inbox") == [(None,)], "handled text is forgotten"


async def test_references_are_sequential(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    for _ in range(3):
        await deliver(store, pipeline, referral(Referral_type="contact"))
    refs = [r for (r,) in rows(store, "SELECT ref FROM referrals ORDER BY id")]
    assert refs == ["REF-2026-000001", "REF-2026-000002", "REF-2026-000003"]
    assert all("CONTACT" in m.body for m in messenger.to(DM))


async def test_the_same_event_twice_makes_one_referral_and_one_ack(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    await deliver(store, pipeline, referral(), event_id="$same")
    await deliver(store, pipeline, referral(), event_id="$same")
    assert rows(store, "SELECT COUNT(*) FROM referrals") == [(1,)]
    assert len(messenger.to(DM)) == 1


@pytest.mark.parametrize("value", [None, "", "maybe", "referral"])
async def test_missing_or_unclear_type_stores_nothing_and_asks_to_choose(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger, value: str | None
) -> None:
    await deliver(store, pipeline, referral(Referral_type=value))
    [reply] = messenger.to(DM)
    assert "NOT recorded" in reply.body
    assert "Referral type" in reply.body
    assert "child protection referral" in reply.body and "contact" in reply.body
    assert rows(store, "SELECT COUNT(*) FROM referrals") == [(0,)]
    assert messenger.to(TEAM) == []


async def test_every_bad_field_is_listed_in_one_reply(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    await deliver(
        store, pipeline, referral(Date_of_birth="31/02/2015", Concerns="bad vibes", Phone="x")
    )
    [reply] = messenger.to(DM)
    for label in ("Date of birth", "Concerns", "Phone"):
        assert label in reply.body


async def test_immediate_danger_is_loud_in_both_messages(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    await deliver(store, pipeline, referral(Immediate_danger="yes"))
    [ack] = messenger.to(DM)
    [summary] = messenger.to(TEAM)
    assert ack.body.startswith("IMMEDIATE DANGER") and "999" in ack.body
    assert summary.body.startswith("IMMEDIATE DANGER")


async def test_unencrypted_room_gets_a_refusal_and_nothing_is_kept(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    await deliver(store, pipeline, "ignored", room="!plain:example.org", encrypted=False)
    [reply] = messenger.to("!plain:example.org")
    assert "not end-to-end encrypted" in reply.body
    assert rows(store, "SELECT COUNT(*) FROM referrals") == [(0,)]


async def test_a_failing_handler_rolls_back_and_says_so(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*args: object, **kwargs: object) -> str:
        raise RuntimeError("boom")

    # Fails after the referral row is inserted: the whole transaction must roll back.
    monkeypatch.setattr(intake, "describe_deadline", explode)
    await deliver(store, pipeline, referral())
    [reply] = messenger.to(DM)
    assert "NOTHING from it was recorded" in reply.body
    assert rows(store, "SELECT COUNT(*) FROM referrals") == [(0,)]
    assert rows(store, "SELECT COUNT(*) FROM record_entries") == [(0,)]


async def test_sends_are_retried_until_delivered(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    messenger.fail_next = 2
    await deliver(store, pipeline, referral())
    assert len(messenger.to(DM)) == 1
    assert rows(store, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]


async def test_details_are_never_sent_to_an_unencrypted_team_room(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    messenger.encrypted_rooms.discard(TEAM)
    await deliver(store, pipeline, referral())
    assert messenger.to(TEAM) == []
    kinds = [k for (k,) in rows(store, "SELECT kind FROM record_entries ORDER BY id")]
    assert "team_summary_refused" in kinds


async def test_help_template_and_unknown_commands(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    await deliver(store, pipeline, "!help")
    await deliver(store, pipeline, "!refer template")
    await deliver(store, pipeline, "!frobnicate")
    await deliver(store, pipeline, "hello?")
    help_, template, unknown, hint = messenger.to(DM)
    assert "!refer template" in help_.body
    assert "Referral type" in template.body and "<pre><code>" in template.html
    assert "Unknown command !frobnicate" in unknown.body
    assert "!help" in hint.body


async def test_oversized_message_is_refused(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    await deliver(store, pipeline, referral(Description="x" * 50_000))
    [reply] = messenger.to(DM)
    assert "too long" in reply.body
    assert rows(store, "SELECT COUNT(*) FROM referrals") == [(0,)]


async def test_user_text_cannot_inject_markup_or_ping_the_room(
    store: Store, pipeline: Pipeline, messenger: MemoryMessenger
) -> None:
    await deliver(store, pipeline, referral(Agency="<b>x</b> @room"))
    [summary] = messenger.to(TEAM)
    assert "<b>x</b>" not in summary.html and "&lt;b&gt;x&lt;/b&gt;" in summary.html
    assert "@room" not in summary.body


async def test_restart_resumes_unhandled_events_and_unsent_messages(
    tmp_path: Path,
) -> None:
    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    async with store.transaction() as tx:
        await tx.add_inbox([InboxItem("$e", DM, NURSE, TS, True, "pending", {"body": referral()})])
    await store.close()  # "crash" before any worker ran

    store = await Store.open(location(tmp_path / "r.db"), KEYRING)
    messenger = MemoryMessenger(encrypted_rooms={DM, TEAM})
    pipeline = Pipeline(store, Settings("@bot:example.org", TEAM), messenger)
    await pipeline.resume()
    await pipeline.wait_idle()
    assert len(messenger.to(DM)) == 1 and len(messenger.to(TEAM)) == 1
    await store.close()
