"""`!reload`: an admin (`team.admins`) re-reads the configuration without a restart."""

from __future__ import annotations

import logging

from handlers.notify import reply
from handlers.ports import Incoming, Reloader
from handlers.render import Doc
from handlers.settings import Settings
from storage.tx import Tx

log = logging.getLogger(__name__)


async def reload_command(
    tx: Tx, msg: Incoming, settings: Settings, reloader: Reloader | None
) -> None:
    if not settings.is_admin(msg.sender):
        doc = Doc().para("Only an admin (team.admins in the configuration) can use !reload.")
    elif msg.room_id != settings.advice_team_room and not msg.private:
        doc = Doc().para("Use !reload in the advice-team room or in a direct message with me.")
    elif reloader is None:
        doc = Doc().para(
            "This bot was not started from a configuration file, so there is nothing to "
            "reload. Nothing was changed."
        )
    else:
        doc = _outcome_doc(reloader)
        log.info("reload asked: event=%s", msg.event_id)
    await reply(tx, msg, "reload", doc, sensitive=False)


def _outcome_doc(reloader: Reloader) -> Doc:
    outcome = reloader.reload()
    if not outcome.applied:
        return (
            Doc()
            .para(
                f"Configuration NOT reloaded: the file has {len(outcome.problems)} "
                "problem(s). The settings in use are unchanged.",
                strong=True,
            )
            .bullets(*outcome.problems)
        )
    doc = Doc().para("Configuration reloaded. Roles apply from the next command on.", strong=True)
    if outcome.changes:
        doc.bullets(*outcome.changes)
    else:
        doc.para("No changes to roles or settings.")
    if outcome.needs_restart:
        doc.para(
            "Changed, but only applied at a restart (the running values are kept): "
            + ", ".join(outcome.needs_restart)
            + "."
        )
    return doc
