"""What every command handler is given (`Call`) and how it says no (`Refusal`).

Below every use-case module: the team's commands, the views, corrections and meetings all
build on this one, and none of them on each other for it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from handlers.notify import reply
from handlers.ports import Incoming, Reloader
from handlers.render import Doc
from handlers.settings import Settings
from schemas.config import USER_ID_RE
from schemas.domain import Kind, Purpose
from schemas.records import Referral
from storage.tx import Tx

REF_RE = re.compile(r"^REF-\d{4}-\d{6}$")
USER_RE = USER_ID_RE
# The shortest reason, note or correction taken as written on purpose.
MIN_REASON = 3


class Refusal(Exception):
    """A command that cannot be done as asked; the text is the reply."""


@dataclass(frozen=True)
class Call:
    tx: Tx
    msg: Incoming
    settings: Settings
    args: str
    # Re-reads the configuration file (`!reload`); None when started without one.
    reloader: Reloader | None = None

    async def say(
        self,
        doc: Doc,
        purpose: str = Purpose.REPLY,
        referral_id: int | None = None,
        *,
        sensitive: bool = True,
    ) -> None:
        await reply(self.tx, self.msg, purpose, doc, sensitive=sensitive, referral_id=referral_id)

    async def referral(self, ref_text: str | None) -> Referral:
        ref = (ref_text or "").strip().upper()
        if not REF_RE.match(ref):
            raise Refusal(f"Give a reference like REF-2026-000123 (got {ref_text or 'nothing'!r}).")
        found = await self.tx.referral_by_ref(ref)
        if found is None:
            raise Refusal(f"No referral {ref} found.")
        return found

    async def open_referral(self, ref_text: str | None) -> Referral:
        r = await self.referral(ref_text)
        if not r.is_open:
            raise Refusal(f"{r.ref} is already decided ({r.outcome}); it cannot be changed now.")
        return r

    async def record(self, r: Referral, kind: Kind | str, detail: dict[str, Any]) -> None:
        await self.tx.append_record(r.id, self.msg.sender, kind, detail)


Handler = Callable[[Call], Awaitable[None]]


def split_args(args: str, n: int) -> list[str]:
    """The first n-1 words and the rest, padded with "" to n items."""
    parts = args.split(None, n - 1)
    return parts + [""] * (n - len(parts))


def in_team_place(room_id: str, private: bool, settings: Settings) -> bool:
    """The advice-team room or a direct message with the bot: where referral details and
    the team's and admins' commands may be used (nobody else reads the reply)."""
    return room_id == settings.advice_team_room or private
