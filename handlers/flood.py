"""Answers that record nothing are rationed, per sender and room: no echo storm.

A client that sends hundreds of messages that are not commands, or commands the bot does
not know (a script gone wrong, another bot answering this one, someone pasting a chat log),
would otherwise get one reply each: hundreds of messages that load the homeserver ahead of
other practitioners' acknowledgements and bury the conversation. So these answers come
from a small token bucket per sender and room, kept in the `kv` table (inside the
message's own transaction, so a rolled-back message spends nothing): up to `BURST`
answers in a row, then one more every `REFILL_S` seconds. The last answer of a burst
says the bot will go quiet; the first after a silence says how many went unanswered.

Only these explanations are rationed. A referral, a command the bot knows, a refusal and
any message that carries referral form fields (a referral with a mistyped command word)
are always answered: the sender must learn what was, and was not, recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from handlers.form_lines import form_fields_in
from handlers.ports import Incoming
from handlers.render import Doc, Para
from storage.tx import Tx

# Reply purposes that are rationed (handlers/commands.py): "not a command", "unknown command".
RATIONED = frozenset({"hint", "unknown"})
BURST = 3
REFILL_S = 60.0
KEY_PREFIX = "ration:"


@dataclass(frozen=True)
class Ration:
    """How many answers in a row (`burst`), and how fast one comes back (`refill_s`)."""

    name: str
    burst: int
    refill_s: float


# Chatter and unknown commands: one explanation or three, then one a minute.
CHATTER = Ration("", BURST, REFILL_S)
# Wrong answers in a guided referral (handlers/guided.py): a person answering on a phone
# takes seconds per message and never runs dry; a flood at machine speed does at once.
GUIDED = Ration("guided:", 5, 10.0)


@dataclass
class Bucket:
    tokens: float
    at: datetime
    unanswered: int = 0


def _key(msg: Incoming, kind: Ration) -> str:
    # Hashed: the kv table needs no Matrix IDs in it.
    digest = hashlib.sha256(f"{msg.sender}\x00{msg.room_id}".encode()).hexdigest()
    return KEY_PREFIX + kind.name + digest[:32]


def refill(bucket: Bucket, now: datetime, kind: Ration) -> float:
    elapsed = max(0.0, (now - bucket.at).total_seconds())
    return min(float(kind.burst), bucket.tokens + elapsed / kind.refill_s)


async def ration(tx: Tx, msg: Incoming, doc: Doc, kind: Ration | None = None) -> Doc | None:
    """The answer to send for `msg` (`doc`, perhaps with a note), or None for silence.
    `kind`: which ration (default CHATTER, read when called)."""
    kind = kind or CHATTER
    if form_fields_in(msg.body) >= 2:
        return doc
    key = _key(msg, kind)
    raw = await tx.get_kv(key)
    if raw is None:
        bucket = Bucket(float(kind.burst), tx.now)
    else:
        data = json.loads(raw)
        bucket = Bucket(float(data["tokens"]), datetime.fromisoformat(data["at"]), data["quiet"])
    tokens = refill(bucket, tx.now, kind)
    if tokens < 1:
        bucket.unanswered += 1
        answer = None
    else:
        tokens -= 1
        blocks = list(doc.blocks)
        if bucket.unanswered:
            n = bucket.unanswered
            blocks.insert(
                0,
                Para(
                    f"I did not answer your {n} message{'s' if n != 1 else ''} before this one: "
                    "they were not commands I know, so nothing from them was recorded."
                ),
            )
        if tokens < 1:
            blocks.append(
                Para(
                    "I will not answer more messages like this for a while. Referrals "
                    "(!refer) and commands are always answered; send !help for the list."
                )
            )
        answer = Doc(blocks)
        bucket.unanswered = 0
    await tx.set_kv(
        key,
        json.dumps(
            {"tokens": round(tokens, 4), "at": tx.now.isoformat(), "quiet": bucket.unanswered}
        ),
    )
    return answer


async def forgive(tx: Tx, msg: Incoming) -> None:
    """A full ration again for this sender and room: they answered a question of a
    guided referral (handlers/guided.py), which no flood does for long. (No row is a
    full ration.)"""
    await tx.delete_kv(_key(msg, GUIDED))


async def forget_full_rations(tx: Tx) -> int:
    """Delete the rations that have filled up again with nothing left unanswered: a row
    is kept only while someone is being rationed (the deadline clock calls this)."""
    forgotten = 0
    for key, raw in await tx.kv_with_prefix(KEY_PREFIX):
        kind = GUIDED if key.startswith(KEY_PREFIX + GUIDED.name) else CHATTER
        data = json.loads(raw)
        bucket = Bucket(float(data["tokens"]), datetime.fromisoformat(data["at"]), data["quiet"])
        if bucket.unanswered == 0 and refill(bucket, tx.now, kind) >= kind.burst:
            await tx.delete_kv(key)
            forgotten += 1
    return forgotten
