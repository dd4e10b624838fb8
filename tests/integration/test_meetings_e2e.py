"""Strategy meetings on a real Synapse: an encrypted room with the right invitees and
power levels, an agenda every invitee can decrypt, attendance that follows what people do,
and minutes that reach the referral's record and the referrer's thread."""

from __future__ import annotations

import asyncio
import re

import pytest
from nio import RoomGetStateEventResponse

from bot.chat_user import ChatUser
from bot.world import World
from tests.forms import referral
from tests.integration.live import db_rows, open_dm, running

pytestmark = pytest.mark.integration


async def invited_room(user: ChatUser, timeout: float = 20.0) -> str:
    """Wait for an invite, join it, return the room."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if user.client.invited_rooms:
            room_id: str = next(iter(user.client.invited_rooms))
            await user.join(room_id)
            return room_id
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{user.user_id} got no invite")


async def test_strategy_meeting_end_to_end(world: World) -> None:
    tag = world.bot_user[1:5]
    police = await world.add_user(f"police-{tag}")
    health = await world.add_user(f"health-{tag}")
    school = await world.add_user(f"school-{tag}")
    with world.config_path.open("a", encoding="utf-8") as fh:
        fh.write(
            f'\n[agencies.police]\nname = "Police"\nsafeguarding_lead = "{police.user_id}"\n'
            f'[agencies.health]\nname = "Health"\nsafeguarding_lead = "{health.user_id}"\n'
            f'[agencies.education]\nname = "Schools"\nsafeguarding_lead = "{school.user_id}"\n'
        )
    worker = world.worker
    async with running(world):
        nurse, dm = await open_dm(world, f"mnurse-{tag}")
        root = await nurse.send(dm, referral(Child_name="Private Person"))
        ref = re.findall(r"REF-\d{4}-\d{6}", (await nurse.wait_reply(root)).body)[0]
        await worker.wait_joined(world.team_room, world.bot_user)
        ask = await worker.send(world.team_room, f"!strategy {ref} today 15:00")
        assert "Setting up" in (await worker.wait_reply(ask)).body

        # Police and health join; education declines.
        police_room = await invited_room(police)
        health_room = await invited_room(health)
        school_room = next(iter((await _wait_invite(school)).keys()))
        await school.client.room_leave(school_room)
        worker_room = await invited_room(worker)
        await invited_room(nurse)
        assert police_room == health_room == worker_room == school_room
        room = police_room

        # Everyone who was invited decrypts the agenda.
        for person in (police, health, worker, nurse):
            agenda = (
                await person.wait_for(
                    lambda r: r.room_id == room and "Questions for the meeting" in r.body
                )
            )[0]
            assert agenda.decrypted, f"{person.user_id} must decrypt the agenda"

        state = await worker.client.room_get_state_event(room, "m.room.power_levels")
        assert isinstance(state, RoomGetStateEventResponse)
        assert state.content["users"][worker.user_id] == 50
        # Room version 12: the bot created the room, so it holds unlimited power as creator.
        create = await worker.client.room_get_state_event(room, "m.room.create")
        assert isinstance(create, RoomGetStateEventResponse)
        assert create.content.get("room_version") == "12"
        enc = await worker.client.room_get_state_event(room, "m.room.encryption")
        assert isinstance(enc, RoomGetStateEventResponse)
        hist = await worker.client.room_get_state_event(room, "m.room.history_visibility")
        assert isinstance(hist, RoomGetStateEventResponse)
        assert hist.content["history_visibility"] == "invited"
        name = await worker.client.room_get_state_event(room, "m.room.name")
        assert isinstance(name, RoomGetStateEventResponse)
        assert name.content["name"] == f"Strategy meeting {ref}"

        await worker.wait_joined(room, police.user_id)
        att = await worker.send(room, "!attendance")
        attendance = (await worker.wait_reply(att)).body
        assert "police" in attendance and "attended" in attendance
        assert "declined" in attendance

        for cmd in (
            "!views child Wants to stay with her gran.",
            "!views parents Father disputes the account.",
            "!decision Section 47 enquiry, joint with police.",
            f"!action {police.user_id} 31/12/2030 Visit the home jointly.",
        ):
            await worker.wait_reply(await worker.send(room, cmd))
        warn = await worker.send(room, "!close")
        assert "education" in (await worker.wait_reply(warn)).body
        close = await worker.send(room, "!close anyway Head teacher unavailable today.")
        minutes = (await worker.wait_reply(close)).body
        assert "Minutes: strategy meeting" in minutes and "Visit the home jointly" in minutes

        outcome = await nurse.wait_for(
            lambda r: r.room_id == dm and "has taken place" in r.body, timeout=20
        )
        assert outcome[0].decrypted and "Section 47 enquiry" in outcome[0].body

    record = [k for (k,) in db_rows(world, "SELECT kind FROM record_entries ORDER BY id")]
    assert "strategy_meeting_minutes" in record
    assert "meeting_joined" in record and "meeting_declined" in record


async def _wait_invite(user: ChatUser, timeout: float = 20.0) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if user.client.invited_rooms:
            return dict(user.client.invited_rooms)
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{user.user_id} got no invite")
