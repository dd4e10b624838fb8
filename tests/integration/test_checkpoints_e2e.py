"""Checkpoints on a real run (issue 10, part 5): the running bot anchors its records in a
file outside data_dir and posts counts and digests to an encrypted audit room; verify
agrees with them, and a record cut short by hand afterwards is reported."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest

from bot.maintenance import verify
from bot.world import World
from tests.forms import referral
from tests.integration.live import open_dm, running
from tests.unit.rig import edit_by_hand

pytestmark = pytest.mark.integration


async def test_a_running_bot_anchors_its_records_and_verify_agrees(world: World) -> None:
    audit_room = await world.worker.create_room(
        invite=[world.bot_user], encrypted=True, direct=False, name="Audit"
    )
    anchor_file = world.base / "anchor" / "checkpoints.jsonl"
    with world.config_path.open("a", encoding="utf-8") as f:
        f.write(
            f'\n[integrity]\ncheckpoint_file = "{anchor_file}"\ncheckpoint_seconds = 1\n'
            f'audit_room = "{audit_room}"\n'
        )
    async with running(world):
        nurse, dm = await open_dm(world, "nurse-anchor")
        refs = []
        for name in ("Anchor One", "Anchor Two"):
            event_id = await nurse.send(dm, referral(Child_name=name))
            ack = await nurse.wait_reply(event_id)
            refs += re.findall(r"REF-\d{4}-\d{6}", ack.body)[:1]
        # A checkpoint appears within a few seconds, counting both referrals.
        deadline = time.monotonic() + 20
        lines: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            if anchor_file.exists():
                lines = [json.loads(t) for t in anchor_file.read_text().splitlines()]
                if lines and lines[-1]["referrals"] == 2:
                    break
            await asyncio.sleep(0.2)
        assert lines and lines[-1]["referrals"] == 2, lines
        # The audit room gets the counts and the digest, decrypted by a member's client,
        # and nothing else: no reference, no name.
        posts = await world.worker.wait_for(
            lambda r: r.room_id == audit_room and "checkpoint" in r.body
        )
        assert posts[0].decrypted
        assert any(str(line["digest"]) in posts[0].body for line in lines)
        assert "REF-" not in posts[0].body and "Anchor" not in posts[0].body

    config = world.config
    out = await verify(config)
    assert out.code == 0, out.lines
    assert "The database agrees with every checkpoint." in out.lines

    # Someone with the file deletes the newest entry of the first referral.
    edit_by_hand(
        config.storage.data_dir / "referrals.db",
        "DELETE FROM record_entries WHERE id = (SELECT MAX(id) FROM record_entries"
        " WHERE referral_id = 1)",  # the first referral of this fresh database
    )
    out = await verify(config)
    assert out.code == 1
    assert any(
        line.startswith(f"CHECKPOINT: {refs[0]}: ") and "newest entries were deleted" in line
        for line in out.lines
    ), out.lines


async def test_the_last_entries_are_anchored_when_the_bot_stops(world: World) -> None:
    anchor_file = world.base / "anchor-stop" / "checkpoints.jsonl"
    with world.config_path.open("a", encoding="utf-8") as f:
        f.write(f'\n[integrity]\ncheckpoint_file = "{anchor_file}"\ncheckpoint_seconds = 3600\n')
    async with running(world):
        nurse, dm = await open_dm(world, "nurse-stop")
        event_id = await nurse.send(dm, referral(Child_name="Stop Anchor"))
        await nurse.wait_reply(event_id)
        assert not anchor_file.exists() or anchor_file.read_text() == ""
    lines = [json.loads(t) for t in anchor_file.read_text().splitlines()]
    assert [(line["n"], line["referrals"]) for line in lines] == [(1, 1)]
    out = await verify(world.config)
    assert out.code == 0, out.lines
