"""`!reload`: an admin (`team.admins`) re-reads the configuration without a restart."""

from __future__ import annotations

import logging

from handlers.context import Call
from handlers.ports import Reloader
from handlers.render import Doc
from schemas.domain import Purpose

log = logging.getLogger(__name__)


async def reload(c: Call) -> None:
    """Who may and where is the command table's rule (admins; advice-team room or DM)."""
    if c.reloader is None:
        doc = Doc().para(
            "This bot was not started from a configuration file, so there is nothing to "
            "reload. Nothing was changed."
        )
    else:
        doc = _outcome_doc(c.reloader)
        log.info("reload asked: event=%s", c.msg.event_id)
    await c.say(doc, Purpose.RELOAD, sensitive=False)


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
