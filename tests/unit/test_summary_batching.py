"""Advice-team summaries under load: gathered into fewer messages, none lost, none twice,
immediate danger never kept waiting, and a retry after a failure sends the same batch."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import time
from pathlib import Path

import pytest

from handlers.ports import OutgoingMessage
from schemas.messages import InboxItem
from tests.forms import referral
from tests.unit.rig import DM, NURSE, START, TEAM, Rig, rig_at, sql

# Every test here runs on SQLite and on PostgreSQL (tests/engines.py).
pytestmark = pytest.mark.usefixtures("engine")

REF = re.compile(r"REF-\d{4}-\d{6}")


def batching(rig: Rig, seconds: float) -> None:
    rig.pipeline.settings = dataclasses.replace(
        rig.pipeline.settings, team_summary_batch_seconds=seconds
    )


async def arrive(rig: Rig, forms: list[str], first: int = 0) -> None:
    """Referrals in one sync response, as a burst from one room."""
    ts = int(START.timestamp() * 1000)
    await rig.inject(
        *(
            InboxItem(f"$b{first + n}", DM, NURSE, ts + n, True, "pending", {"body": body})
            for n, body in enumerate(forms)
        ),
        wait=False,
    )


def team_refs(rig: Rig) -> list[list[str]]:
    """The references each advice-team message is about, message by message."""
    return [sorted(set(REF.findall(m.body))) for m in rig.messenger.to(TEAM)]


_names = itertools.count()


def forms(n: int) -> list[str]:
    """Referrals about different children (no pattern line naming other references)."""
    return [referral(Child_name=f"Batch Child{chr(65 + next(_names) % 26)}{k}") for k in range(n)]


async def test_a_burst_of_referrals_reaches_the_team_in_fewer_messages_and_all_of_them(
    tmp_path: Path,
) -> None:
    db = tmp_path / "referrals.db"
    async with rig_at(db) as rig:
        batching(rig, 0.5)
        await arrive(rig, forms(6))
        await rig.pipeline.wait_idle()

        acks = [m for m in rig.messenger.to(DM) if m.reply_to]
        assert len(acks) == 6  # every referrer still gets their own acknowledgement
        messages = team_refs(rig)
        assert len(messages) < 6
        every = [ref for refs in messages for ref in refs]
        assert len(every) == 6 and len(set(every)) == 6
        combined = next(m for m in rig.messenger.to(TEAM) if len(set(REF.findall(m.body))) > 1)
        assert "new referrals and contacts arrived together" in combined.body

    # Each referral's running record names the event that carried its summary.
    sent = sql(
        db,
        "SELECT r.ref, e.detail FROM record_entries e JOIN referrals r ON r.id = e.referral_id"
        " WHERE e.kind = 'team_summary_sent'",
    )
    assert len(sent) == 6
    assert sql(db, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]


async def test_summaries_go_one_by_one_when_batching_is_off(tmp_path: Path) -> None:
    async with rig_at(tmp_path / "referrals.db") as rig:
        batching(rig, 0)
        await arrive(rig, forms(4))
        await rig.pipeline.wait_idle()
        assert [len(refs) for refs in team_refs(rig)] == [1, 1, 1, 1]


async def test_immediate_danger_is_not_kept_waiting_for_a_batch(tmp_path: Path) -> None:
    async with rig_at(tmp_path / "referrals.db") as rig:
        batching(rig, 30)  # far longer than the test may take
        await arrive(rig, forms(1))
        await rig.pipeline.wait_idle()  # the first after a quiet spell goes at once
        started = time.monotonic()
        await arrive(rig, forms(2), first=10)
        await arrive(rig, [referral(Child_name="Danger Child", Immediate_danger="yes")], 20)
        await rig.pipeline.wait_idle()
        assert time.monotonic() - started < 10
        last = rig.messenger.to(TEAM)[-1]
        assert last.body.startswith("IMMEDIATE DANGER: the first one below needs action now.")
        # The urgent summary comes first in the combined message, the others after it.
        parts = last.body.split("\n\n----\n\n")
        assert len(parts) == 4
        assert parts[1].startswith("IMMEDIATE DANGER: REF-")
        assert not any("IMMEDIATE DANGER" in p for p in parts[2:])
        assert sum(len(refs) for refs in team_refs(rig)) == 4


async def test_a_failed_batch_is_retried_as_the_same_batch(tmp_path: Path) -> None:
    db = tmp_path / "referrals.db"
    async with rig_at(db) as rig:
        batching(rig, 0.3)
        messenger = rig.messenger
        real_send = messenger.send
        failed: list[str] = []

        async def flaky_send(message: OutgoingMessage, txn_id: str) -> str:
            # The homeserver fails the first combined summary; while the bot waits to
            # retry, more referrals arrive. The retry must send the same batch.
            if message.room_id == TEAM and len(set(REF.findall(message.body))) > 1 and not failed:
                failed.append(txn_id)
                await arrive(rig, forms(2), first=20)
                raise ConnectionError("homeserver unreachable")
            return await real_send(message, txn_id)

        messenger.send = flaky_send  # type: ignore[method-assign]
        await arrive(rig, forms(1))
        await rig.pipeline.wait_idle()
        await arrive(rig, forms(3), first=10)
        await rig.pipeline.wait_idle()

    assert failed
    retried = [m for t, m in messenger.sent if t == failed[0]]
    assert len(retried) == 1 and len(set(REF.findall(retried[0].body))) == 3
    txn_ids = [t for t, m in messenger.sent if m.room_id == TEAM]
    assert len(txn_ids) == len(set(txn_ids))
    every = [ref for refs in team_refs(rig) for ref in refs]
    assert len(every) == 6 and len(set(every)) == 6
    assert sql(db, "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]


async def test_shutdown_sends_waiting_summaries_without_waiting_to_batch(tmp_path: Path) -> None:
    async with rig_at(tmp_path / "referrals.db") as rig:
        batching(rig, 30)
        await arrive(rig, forms(1))
        await rig.pipeline.wait_idle()
        await arrive(rig, forms(2), first=10)
        await asyncio.sleep(0.3)  # now waiting to batch
        rig.pipeline.stopping = True
        started = time.monotonic()
        await rig.pipeline.wait_idle()
        assert time.monotonic() - started < 5
        assert sum(len(refs) for refs in team_refs(rig)) == 3
