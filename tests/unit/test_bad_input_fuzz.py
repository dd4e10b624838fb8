"""Bad input, hundreds or thousands of times, through the real store and pipeline.

Generated and mutated referral messages and commands (wrong types, huge values, control
characters, right-to-left marks, emoji, 64 KB bodies, missing and duplicated fields,
commands with wrong arguments) go through the inbox, the handlers, the encrypted store
and the outbox to an in-memory chat network. After each batch:

* no handler raised (the pipeline's "something went wrong" reply never appears);
* every message got exactly one reply, of a kind that explains itself;
* a message either made a whole referral (row, `received` entry, acknowledgement and team
  summary queued) or nothing at all.

Batches of 1 to 10 messages, as many as the Hypothesis profile's examples (tests/conftest.py):
100 batches (about 550 messages) by default, 2,000 with `HYPOTHESIS_PROFILE=thorough`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers import flood
from handlers.ports import OutgoingMessage, txn_id_for
from schemas.messages import InboxItem
from storage.integrity import ChainReport
from tests.forms import BASE_FIELDS, referral
from tests.unit.rig import DM, NURSE, START, TEAM, Rig, sql

DM2 = "!dm2:example.org"
PLAIN = "!plain:example.org"  # an unencrypted room: bodies are withheld
ROOMS = (DM, DM2)
# Every reply the bot can give to a message, and the ones a referral must produce.
# "refused": a command the sender may not use (or with bad arguments), refused with the reason.
REPLY_KINDS = ("ack", "form_problems", "help", "template", "unknown", "hint", "too_long", "refused")
REPLY_KINDS_PLAIN = ("unencrypted",)
FAILED = "failed"
# -- what is thrown ------------------------------------------------------------------------

NASTY = [
    "\u202e",  # right-to-left override
    "\u200f",  # right-to-left mark
    "\u2066\u2069",  # isolates
    "\u200b\u200d",  # zero-width space and joiner
    "\ufeff",  # byte-order mark
    "\x00",
    "\x07",
    "\x1b[31m",
    "\r",
    "\u0085",
    "\u2028",
    "\ud800",  # lone surrogate
    "\U0001f600\U0001f469\u200d\U0001f467",  # emoji and a ZWJ sequence
    "e\u0301\u0301\u0301",  # stacked combining marks
    "<script>alert(1)</script>",
    "@room",
    "**bold** `code`",
    "${jndi:ldap://x}",
    "'); DROP TABLE referrals; --",
    ":",
    "：",
]
WRONG_VALUES = [
    "",
    "   ",
    "-5",
    "18",
    "1e309",
    "99999999999999999999",
    "NaN",
    "yes please",
    "maybe",
    "true",
    "31/02/2015",
    "2015-05-02",
    "00/00/0000",
    "14/03/2999",
    "child protection",
    "CONTACT!!",
    "contact, child protection referral",
    "neglect, neglect",
    "other",
    "+44 (0) 20-7946-0000 ext 123456789",
    "null",
    "[]",
    "{}",
]
_any = st.text(max_size=200)
_value = st.one_of(
    st.sampled_from(WRONG_VALUES),
    st.sampled_from(NASTY),
    _any,
    st.builds(
        lambda c, n: c * n,
        st.sampled_from(["x", "é", "\U0001f600", "\u202e"]),
        st.integers(500, 25_000),
    ),
)
_label = st.sampled_from(
    [
        *BASE_FIELDS,
        "Other concern",
        "Approximate age",
        "Unborn due date",
        "Reason parents not informed",
        "Ethnicity",
        "Nonsense field",
        "DOB",
    ]
)


@st.composite
def mutated_referral(draw: st.DrawFn) -> str:
    lines = referral(
        Referral_type=draw(st.sampled_from(["contact", "child protection referral"])),
        Immediate_danger=draw(st.sampled_from(["yes", "no"])),
    ).split("\n")
    head, fields = lines[:1], lines[1:]
    for _ in range(draw(st.integers(0, 4))):
        if not fields:
            break
        i = draw(st.integers(0, len(fields) - 1))
        action = draw(st.sampled_from(["drop", "duplicate", "retype", "insert", "nasty", "swap"]))
        label = fields[i].split(":", 1)[0]
        if action == "drop":
            del fields[i]
        elif action == "duplicate":
            fields.insert(i, f"{label}: {draw(st.one_of(_value, st.just(fields[i])))}")
        elif action == "retype":
            fields[i] = f"{label}: {draw(_value)}"
        elif action == "insert":
            fields.insert(i, draw(st.one_of(_any, st.builds("{}: {}".format, _label, _value))))
        elif action == "nasty":
            at = draw(st.integers(0, len(fields[i])))
            fields[i] = fields[i][:at] + draw(st.sampled_from(NASTY)) + fields[i][at:]
        else:
            j = draw(st.integers(0, len(fields) - 1))
            fields[i], fields[j] = fields[j], fields[i]
    if draw(st.integers(0, 9)) == 0:
        head = [
            draw(st.sampled_from(["!refer", "!REFER", "  !refer  ", "!refer now", "!refer\u202e"]))
        ]
    return "\n".join(head + fields)


_commands = st.builds(
    "{}{}{}{}".format,
    st.sampled_from(["", " ", "\n", "\u200b"]),
    st.sampled_from(
        [
            "!help",
            "!HELP",
            "!refer",
            "!refer template",
            "!refer templat",
            "!",
            "!!",
            "! refer",
            "!claim",
            "!decide",
            "!rEfEr",
            "!refer\ttemplate",
        ]
    ),
    st.sampled_from(
        [
            "",
            " ",
            " extra",
            " REF-2026-000001",
            " template template",
            " \u202eetalpmet",
            " 🚸",
            "\n\n\n",
            " " + "a" * 5_000,
        ]
    ),
    st.one_of(st.just(""), _any),
)
_huge = st.builds(
    lambda head, ch: head + ch * (65_536 - len(head)),
    st.sampled_from(["!refer\nDescription: ", "!help ", "", "!refer\n"]),
    st.sampled_from(["x", "\U0001f600", "\u202e", "\n", ":"]),
)
_valid = st.builds(
    lambda name, kind: referral(Child_name=name, Referral_type=kind),
    st.sampled_from(["Zoë O'Brien", "محمد علي", "Ana\u202eevil", "Li 🌟 Wei", "A" * 200]),
    st.sampled_from(
        ["contact", "child protection referral", "CONTACT", "Child Protection Referral"]
    ),
)


@dataclass(frozen=True)
class Thrown:
    body: str
    room: str


_message = st.builds(
    Thrown,
    st.one_of(
        mutated_referral(),
        mutated_referral(),
        _valid,
        _commands,
        _any,
        _huge,
        st.text(alphabet=st.characters(codec="utf-8"), max_size=2_000),
    ),
    st.sampled_from([*ROOMS, *ROOMS, PLAIN]),
)

# -- the run ------------------------------------------------------------------------------

_ids = itertools.count(1)


@dataclass
class Tally:
    batches: int = 0
    messages: int = 0
    referrals: int = 0
    by_kind: dict[str, int] | None = None


@contextmanager
def running_rig(folder: Path) -> Iterator[tuple[asyncio.AbstractEventLoop, Rig]]:
    # Hypothesis drives a plain function, so the test runs its own event loop.
    loop = asyncio.new_event_loop()
    rig = loop.run_until_complete(Rig.open(folder / "referrals.db"))
    rig.messenger.encrypted_rooms.add(DM2)
    # The fuzz is about handling, not durability: skip the fsync on each commit.
    loop.run_until_complete(rig.store._db.execute("PRAGMA synchronous = OFF"))
    # Every message gets its answer here: the rationing of chatter is test_flood.py's.
    rations = flood.CHATTER, flood.GUIDED
    flood.CHATTER = flood.Ration(flood.CHATTER.name, 10**9, flood.CHATTER.refill_s)
    flood.GUIDED = flood.Ration(flood.GUIDED.name, 10**9, flood.GUIDED.refill_s)
    try:
        yield loop, rig
    finally:
        flood.CHATTER, flood.GUIDED = rations
        loop.run_until_complete(rig.close())
        loop.close()


def replies_to(rig: Rig, event_id: str) -> list[tuple[str, OutgoingMessage]]:
    """(kind, message) of every reply sent to one event; the kind comes from its txn ID."""
    kinds = {txn_id_for(event_id, k): k for k in (*REPLY_KINDS, *REPLY_KINDS_PLAIN, FAILED)}
    return [(kinds[t], m) for t, m in rig.messenger.sent if t in kinds]


async def throw(rig: Rig, batch: list[Thrown]) -> list[tuple[str, Thrown]]:
    sent = [(f"$fuzz{next(_ids)}", t) for t in batch]
    await rig.inject(
        *(
            InboxItem(
                event_id,
                t.room,
                NURSE,
                int(START.timestamp() * 1000),
                t.room != PLAIN,
                "pending",
                {"body": t.body} if t.room != PLAIN else {"withheld": True},
            )
            for event_id, t in sent
        )
    )
    return sent


async def check(rig: Rig, sent: list[tuple[str, Thrown]], tally: Tally) -> None:
    async with rig.store.snapshot() as tx:
        for event_id, thrown in sent:
            replies = replies_to(rig, event_id)
            assert len(replies) == 1, (event_id, [k for k, _ in replies], thrown.body[:200])
            [(kind, reply)] = replies
            assert kind != FAILED, f"a handler raised on: {thrown.body[:300]!r}"
            allowed = REPLY_KINDS_PLAIN if thrown.room == PLAIN else REPLY_KINDS
            assert kind in allowed, kind
            assert reply.room_id == thrown.room and reply.reply_to == event_id
            assert reply.body.strip() and reply.html.strip()
            stored = await tx.referral_by_event(event_id)
            if kind == "ack":
                assert stored is not None, "acknowledged but not recorded"
                assert stored.ref in reply.body
                assert stored.current_type.upper() in reply.body
                record = await tx.record_of(stored.id)
                assert record[0].kind == "received"
                tally.referrals += 1
            else:
                assert stored is None, f"{kind} reply but a referral was stored"
                if kind == "too_long":
                    assert "too long" in reply.body
            assert tally.by_kind is not None
            tally.by_kind[kind] = tally.by_kind.get(kind, 0) + 1
            tally.messages += 1


@pytest.mark.slow
def test_bad_input_never_escapes_and_never_half_records(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tally = Tally(by_kind={})
    with running_rig(tmp_path_factory.mktemp("fuzz")) as (loop, rig):

        @settings(
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(batch=st.lists(_message, min_size=1, max_size=10))
        def batches(batch: list[Thrown]) -> None:
            tally.batches += 1
            loop.run_until_complete(check(rig, loop.run_until_complete(throw(rig, batch)), tally))

        batches()
        db = rig.store.path
        report = loop.run_until_complete(_chains(rig))

    # Across the whole run: every referral row is whole, and nothing else was stored.
    assert tally.batches >= 100 and tally.messages >= 3 * tally.batches, tally
    # The mutations leave enough valid referrals.
    assert tally.referrals >= tally.batches // 8, tally
    assert sql(db, "SELECT COUNT(*) FROM referrals") == [(tally.referrals,)]
    assert sql(
        db,
        "SELECT COUNT(*) FROM referrals r WHERE NOT EXISTS (SELECT 1 FROM record_entries e"
        " WHERE e.referral_id = r.id AND e.kind = 'received')"
        " OR (SELECT COUNT(*) FROM outbox o WHERE o.referral_id = r.id"
        " AND o.purpose IN ('ack', 'team_summary')) != 2",
    ) == [(0,)]
    assert sql(db, "SELECT COUNT(*) FROM inbox WHERE state != 'done' OR payload IS NOT NULL") == [
        (0,)
    ]
    assert len([m for m in rig.messenger.to(TEAM)]) == tally.referrals
    assert report.breaks == [] and report.referrals == tally.referrals
    print(f"fuzz: {tally.messages} messages, replies by kind {tally.by_kind}")


async def _chains(rig: Rig) -> ChainReport:
    async with rig.store.snapshot() as tx:
        return await tx.check_chains()
