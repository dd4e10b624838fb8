"""Re-reading the configuration file while the bot runs (`!reload` or SIGHUP).

Roles are checked on every command against `CurrentSettings.current`, the one holder the
pipeline, device trust and verification share, so swapping its value is all a reload
needs: the next command, wherever it is handled, sees the new roles. A file with
problems changes nothing. Keys that the running bot cannot change (homeserver, bot
account, storage, allowed homeservers, the advice-team room, checkpoints) keep their running values
and the reply says a restart is needed for them.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from handlers.ports import ReloadOutcome
from handlers.settings import CurrentSettings, Settings
from schemas.config import Config, ConfigError, load_config

log = logging.getLogger(__name__)

RESTART_ONLY = ("homeserver", "bot", "storage", "access", "rooms", "integrity")
RELOADED = (
    "intake",
    "attachments",
    "agencies",
    "deadlines",
    "pattern",
    "disagreement",
    "meetings",
    "reports",
    "logging",
)
ROLES = ("advice_team", "managers", "admins")


class ConfigReloader:
    def __init__(self, path: Path, running: Config, settings: CurrentSettings) -> None:
        self.path = path
        self._started_with = running  # what restart-only keys are compared with
        self._current = running
        self._settings = settings

    def reload(self) -> ReloadOutcome:
        try:
            new = load_config(self.path)
        except ConfigError as exc:
            return ReloadOutcome(applied=False, problems=tuple(exc.problems))
        old = self._settings.current
        settings = replace(
            Settings.from_config(new, old.advice_team_room),
            allowed_homeservers=old.allowed_homeservers,
        )
        changes = _role_changes(self._current, new) + [
            f"{name}: changed"
            for name in RELOADED
            if getattr(new, name) != getattr(self._current, name)
        ]
        needs_restart = [
            name for name in RESTART_ONLY if getattr(new, name) != getattr(self._started_with, name)
        ]
        self._settings.current = settings
        self._current = new
        logging.getLogger().setLevel(new.logging.level)
        return ReloadOutcome(
            applied=True, changes=tuple(changes), needs_restart=tuple(needs_restart)
        )


def _role_changes(old: Config, new: Config) -> list[str]:
    lines = []
    for role in ROLES:
        before, after = set(getattr(old.team, role)), set(getattr(new.team, role))
        added, removed = sorted(after - before), sorted(before - after)
        if added:
            lines.append(f"team.{role}: added {', '.join(added)}")
        if removed:
            lines.append(f"team.{role}: removed {', '.join(removed)}")
    return lines


def log_outcome(outcome: ReloadOutcome, trigger: str) -> None:
    """For SIGHUP, where nobody gets a reply: the operator reads the log."""
    if not outcome.applied:
        log.error(
            "configuration NOT reloaded (%s): %d problem(s); the settings in use are unchanged",
            trigger,
            len(outcome.problems),
        )
        for problem in outcome.problems:
            log.error("  - %s", problem)
        return
    log.info(
        "configuration reloaded (%s): %d change(s)%s",
        trigger,
        len(outcome.changes),
        f"; needs a restart for: {', '.join(outcome.needs_restart)}"
        if outcome.needs_restart
        else "",
    )
