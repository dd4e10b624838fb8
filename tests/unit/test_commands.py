"""The one command table: `!help`, the role gate and the room rule all come from it, so
help can never list a command that does not run, nor leave out one that does."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bot.verification import VERIFY_COMMANDS
from handlers import (
    admin,
    attachments,
    corrections,
    guided,
    intake,
    meetings,
    reports,
    views,
    workflow,
)
from handlers.commands import COMMANDS, Where, Who
from tests.unit.harness import MANAGER, NURSE, TEAM_ROOM, WORKER, Harness
from tests.unit.test_meetings import AGENCIES, meeting_for

# Storage behaviour: every test here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.usefixtures("engine")


ADMIN = "@admin:example.org"


@pytest_asyncio.fixture
async def h(tmp_path: Path, engine: str) -> AsyncIterator[Harness]:
    harness = await Harness.open(tmp_path / "r.db", admins=frozenset({ADMIN}), agencies=AGENCIES)
    yield harness
    await harness.store.close()


def labels(where: Where | None, *who: Who) -> set[str]:
    """The help labels ("!claim REF-…") of the table's forms for an audience."""
    found = set()
    for command in COMMANDS.values():
        for form in command.forms:
            here = form.where == where if where is not None else form.where != Where.MEETING
            if here and form.who in who:
                found.add(command.label(form))
    return found


def help_labels(help_text: str) -> set[str]:
    """The labels a `!help` reply lists (each line "label: help")."""
    every = {c.label(f) for c in COMMANDS.values() for f in c.forms}
    return {label for label in every if f"{label}: " in help_text}


async def test_help_lists_every_command_for_its_audience_and_no_other(h: Harness) -> None:
    anyone = labels(None, Who.ANYONE)
    team = labels(None, Who.TEAM, Who.MANAGERS)
    admins = labels(None, Who.ADMINS)
    in_meeting = labels(Where.MEETING, Who.INVITED)
    assert anyone and team and admins and in_meeting
    assert len(anyone | team | admins | in_meeting) == sum(len(c.forms) for c in COMMANDS.values())

    assert help_labels(h.reply(await h.send(NURSE, "!help"))) == anyone
    assert help_labels(h.reply(await h.send(WORKER, "!help", room=TEAM_ROOM))) == anyone | team
    assert help_labels(h.reply(await h.send(MANAGER, "!help"))) == anyone | team
    assert help_labels(h.reply(await h.send(ADMIN, "!help"))) == anyone | admins

    _, _, room = await meeting_for(h)
    assert help_labels(h.reply(await h.send(NURSE, "!help", room=room))) == in_meeting


async def test_every_command_in_the_table_runs_and_no_other(h: Harness) -> None:
    """Each word reaches its handler (no "Unknown command") in its place, for its users."""
    _, ref, room = await meeting_for(h)
    for word, command in COMMANDS.items():
        if command.run is None:
            continue  # answered as it arrives, by the Matrix shell (see the next test)
        form = command.form
        sender = {Who.ADMINS: ADMIN, Who.MANAGERS: MANAGER}.get(form.who, WORKER)
        place = room if form.where == Where.MEETING else TEAM_ROOM
        answer = h.reply(await h.send(sender, f"{word} {ref}", room=place))
        assert "Unknown command" not in answer and "Only " not in answer, (word, answer)
    unknown = h.reply(await h.send(WORKER, "!frobnicate", room=TEAM_ROOM))
    assert "Unknown command !frobnicate" in unknown


async def test_the_gate_and_the_room_rule_come_from_the_table(h: Harness) -> None:
    _, ref, room = await meeting_for(h)
    outsider = "@outsider:example.org"
    for word, command in COMMANDS.items():
        form = command.form
        if command.run is None or form.who == Who.ANYONE:
            continue
        if form.where == Where.MEETING:
            answer = h.reply(await h.send(outsider, f"{word} x", room=room))
            assert "Only people invited to this meeting" in answer, word
            elsewhere = h.reply(await h.send(WORKER, f"{word} x", room=TEAM_ROOM))
            assert "in a strategy meeting's room" in elsewhere, word
            continue
        assert f"can use {word}. Nothing was changed." in h.reply(await h.send(NURSE, word))
        sender = {Who.ADMINS: ADMIN, Who.MANAGERS: MANAGER}.get(form.who, WORKER)
        group = await h.send(sender, f"{word} {ref}", room="!group:example.org", private=False)
        assert "in the advice-team room or in a direct message" in h.reply(group), word


def test_the_shell_answers_exactly_the_commands_the_table_leaves_to_it() -> None:
    assert {w for w, c in COMMANDS.items() if c.run is None} == set(VERIFY_COMMANDS)
    assert {"!verify", "!verify-match", "!verify-reject"} == VERIFY_COMMANDS


def test_every_command_handler_is_in_the_table() -> None:
    """A public function taking a Call (or a meeting's MeetingCall) is a command handler;
    each must be reachable through the table, or it is dead code or a hidden command."""
    in_table = {inspect.unwrap(c.run) for c in COMMANDS.values() if c.run is not None}
    handlers = [
        fn
        for module in (
            admin,
            attachments,
            corrections,
            guided,
            intake,
            meetings,
            reports,
            views,
            workflow,
        )
        for name, fn in vars(module).items()
        if inspect.iscoroutinefunction(fn)
        and not name.startswith("_")
        and fn.__module__ == module.__name__
        and [p.annotation for p in inspect.signature(fn).parameters.values()]
        in (["Call"], ["MeetingCall"])
    ]
    assert len(handlers) > 30
    assert [fn.__qualname__ for fn in handlers if fn not in in_table] == []
