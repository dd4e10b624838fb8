"""Fill a referral-bot database with realistic fake referrals, for size and start-up figures.

    python -m bench.seed_db --db path/to/data/referrals.db --key-file path/to/database-key \
        --count 100000

Every referral goes through the bot's own use case (`take_referral`, in the bot's own
transactions), so the rows are exactly what the bot writes: the referral with its form,
the running record, the inbox row and the two outgoing messages, marked sent. Referrals
older than a day are then claimed and decided (store calls, with their record
entries), so only the last day's (about 55) are open, as in a real service. Names are
made up and numbered ("Testchild 004217"); no real person's details are used.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from handlers.intake import take_referral
from handlers.ports import Incoming
from handlers.settings import Settings
from schemas.domain import Outcome
from schemas.messages import InboxItem
from storage.engine import Store
from storage.keyring import Keyring
from storage.tx import Tx

SURNAMES = ("Example", "Sample", "Testington", "Placeholder", "Specimen", "Dummy", "Mock")
CONCERNS = (
    "physical abuse",
    "emotional abuse",
    "sexual abuse",
    "neglect",
    "child sexual exploitation",
    "child criminal exploitation",
    "missing from home",
    "self-harm",
    "domestic abuse",
)
AGENCIES = ("health", "school", "police", "GP", "early years", "housing", "probation")
ROLES = ("School nurse", "Health visitor", "Class teacher", "PC", "GP", "Key worker")
DESCRIPTIONS = (
    "Attendance has dropped to 70%; arrives hungry most mornings and wears the same clothes.",
    "Disclosed to a teacher: \"mum's boyfriend hits me when I'm loud\". Bruise on left cheek.",
    "Found by officers at 02:00 in a park two miles from home; says he was told to carry a bag.",
    "Sibling reports no adult at home for three nights; fridge empty; younger child unwell.",
    "Repeated A&E attendances with injuries inconsistent with the explanation given.",
)


def fake_referral(n: int, rng: random.Random, received: datetime) -> str:
    age_years = rng.randint(1, 16)
    dob = (received - timedelta(days=365 * age_years + rng.randint(0, 364))).date()
    concerns = rng.sample(CONCERNS, rng.randint(1, 3))
    danger = rng.random() < 0.05
    parents = rng.random() < 0.8
    lines = [
        "!refer",
        f"Child name: Testchild{n:06d} {rng.choice(SURNAMES)}",
        f"Date of birth: {dob:%d/%m/%Y}",
        f"Address: {rng.randint(1, 300)} Sample Street, ZZ{rng.randint(1, 99)} 1ZZ",
        f"School: Example Academy {rng.randint(1, 40)}",
        "Referral type: " + ("child protection referral" if rng.random() < 0.4 else "contact"),
        f"Concerns: {', '.join(concerns)}",
        f"Description: {rng.choice(DESCRIPTIONS)}",
        f"Immediate danger: {'yes' if danger else 'no'}",
        "Action taken: Informed the designated safeguarding lead; recorded on the school system.",
        f"Parents informed: {'yes' if parents else 'no'}",
    ]
    if not parents:
        lines.append("Reason parents not informed: informing them could put the child at risk.")
    lines += [
        "Child's views: Says they want things to be calmer at home.",
        f"Referrer name: Referrer{n % 5000:04d} Example",
        f"Referrer role: {rng.choice(ROLES)}",
        f"Agency: {rng.choice(AGENCIES)}",
        f"Phone: 01632 96{n % 10000:04d}",
    ]
    return "\n".join(lines)


OPEN_DAYS = 1
OUTCOMES = tuple(Outcome)


async def _decide(tx: Tx, event_id: str, received: datetime, rng: random.Random) -> None:
    """Claim and decide a seeded referral, a day after it arrived, as the workflow does."""
    referral = await tx.referral_by_event(event_id)
    if referral is None:
        return
    worker = f"@adviser{rng.randrange(20):02d}:localhost"
    now = tx.now
    tx.now = received + timedelta(hours=rng.randint(1, 24))
    try:
        await tx.claim(referral.id, worker)
        await tx.append_record(referral.id, worker, "claimed", {})
        outcome = rng.choice(OUTCOMES)
        await tx.decide(referral.id, outcome, worker)
        await tx.append_record(
            referral.id, worker, "decided", {"outcome": outcome, "reason": "Seeded decision."}
        )
    finally:
        tx.now = now


async def seed(
    db_path: Path, count: int, keyring: Keyring, *, batch: int = 2000, seed_value: int = 6
) -> float:
    """Add `count` referrals spread over the past five years; return the seconds it took."""
    rng = random.Random(seed_value)
    settings = Settings(bot_user_id="@referral-bot:localhost", advice_team_room="!team:localhost")
    store = await Store.open(db_path, keyring)
    start = datetime.now(UTC) - timedelta(days=5 * 365)
    # Older referrals have been decided (as they would be in a real service); only the
    # last weeks' are still open, so the deadline clock sees a realistic queue.
    decided_before = datetime.now(UTC) - timedelta(days=OPEN_DAYS)
    step = timedelta(days=5 * 365) / max(count, 1)
    started = time.monotonic()
    try:
        done = 0
        while done < count:
            async with store.transaction() as tx:
                for n in range(done, min(done + batch, count)):
                    received = start + step * n
                    event_id = f"$seed{n:07d}-{rng.getrandbits(48):012x}"
                    room_id = f"!seed-dm-{n % 2000:04d}:localhost"
                    sender = f"@practitioner{n % 2000:04d}:localhost"
                    origin_ts = int(received.timestamp() * 1000)
                    await tx.add_inbox(
                        [InboxItem(event_id, room_id, sender, origin_ts, True, "pending", {})]
                    )
                    msg = Incoming(
                        seq=0,
                        event_id=event_id,
                        room_id=room_id,
                        sender=sender,
                        origin_ts=origin_ts,
                        room_encrypted=True,
                        body=fake_referral(n, rng, received),
                    )
                    await take_referral(tx, msg, settings)
                    if received < decided_before:
                        await _decide(tx, event_id, received, rng)
                for pending in await tx.rooms_with_pending():
                    while (item := await tx.next_pending(pending)) is not None:
                        await tx.mark_handled(item.seq)
                while rows := await tx.unsent(limit=500):
                    for row in rows:
                        await tx.mark_sent(row, f"$sent-{row.txn_id}")
            done = min(done + batch, count)
        async with store.transaction() as tx:
            total = await tx.referral_count()
    finally:
        await store.close()
    if total < count:
        raise RuntimeError(f"only {total} of {count} fake referrals were accepted")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="the bot's referrals.db")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument(
        "--key-file", type=Path, required=True, help="the file named by storage.database_key"
    )
    args = parser.parse_args()
    keyring = Keyring(args.key_file.read_text(encoding="utf-8").strip())
    took = asyncio.run(seed(args.db, args.count, keyring))
    size = args.db.stat().st_size / 1e6
    print(f"seeded {args.count} referrals into {args.db} in {took:.1f} s ({size:.0f} MB)")


if __name__ == "__main__":
    main()
