"""The operator's commands on the stored records: verify, rotate-key, purge.

Each opens the database like the bot does (same key check, same migrations) and prints
references and counts only: never a name or any other personal field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.checkpoint_verify import AnchorReport, check_database
from bot.checkpoints import append_purged, append_rekeyed
from schemas.config import Config, ConfigError
from storage.engine import Location, Postgres, Store
from storage.integrity import ChainReport
from storage.keyring import Keyring
from storage.retention import PurgeCutoffs, PurgePlan

MIN_KEY_CHARS = 32


@dataclass
class Outcome:
    """What a command says, and its exit code (0 fine, 1 found a problem, 2 refused)."""

    code: int = 0
    lines: list[str] = field(default_factory=list)

    def say(self, line: str) -> None:
        self.lines.append(line)


def database_path(config: Config) -> Path:
    """The SQLite database file (used when no PostgreSQL database is configured)."""
    return config.storage.data_dir / "referrals.db"


def database_location(config: Config) -> Location:
    """Where the bot's tables are: `[storage] database` (PostgreSQL), else SQLite in
    data_dir."""
    s = config.storage
    if s.database is None:
        return database_path(config)
    password = None if s.database_password is None else s.database_password.read()
    return Postgres(s.database, password)


def _keyring(secret: str, what: str) -> Keyring:
    try:
        return Keyring(secret)
    except ValueError as exc:
        raise ConfigError([f"{what}: {exc}"]) from None


async def _open_existing(config: Config, keyring: Keyring, *, exclusive: bool) -> Store:
    where = database_location(config)
    if isinstance(where, Path) and not where.exists():
        raise ConfigError([f"there is no database at {where} (check storage.data_dir)"])
    return await Store.open(where, keyring, exclusive=exclusive)


def describe_breaks(report: ChainReport, out: Outcome) -> None:
    for b in report.breaks:
        where = b.ref if b.entry_id is None else f"{b.ref}, running-record entry {b.entry_id}"
        out.say(f"BROKEN: {where}: {b.problem}")


# -- verify ------------------------------------------------------------------------------


async def verify(config: Config) -> Outcome:
    """Check every running record's hash chain (and that every form decrypts).

    Reads a snapshot, so it may run while the bot runs.
    """
    keyring = _keyring(config.storage.database_key.read(), "storage.database_key")
    path = config.integrity.checkpoint_file
    anchor: AnchorReport | None = None
    store = await _open_existing(config, keyring, exclusive=False)
    try:
        async with store.snapshot() as tx:
            report = await tx.check_chains()
            if path is not None:
                anchor = await check_database(tx, keyring, path)
    finally:
        await store.close()
    out = Outcome()
    describe_breaks(report, out)
    summary = f"{report.referrals} referral(s), {report.entries} running-record entries"
    if report.attachments:
        summary += f", {report.attachments} attached file(s)"
    if report.breaks:
        out.code = 1
        out.say(f"{summary}: {len(report.breaks)} referral(s) with a broken record.")
    else:
        out.say(f"{summary}: every chain intact.")
    if anchor is None:
        out.say(
            "No checkpoints (integrity.checkpoint_file is not set): deleted newest entries, "
            "a deleted referral or an older copy of the database cannot be detected."
        )
        return out
    describe_anchor(anchor, path, out)
    return out


def describe_anchor(anchor: AnchorReport, path: Path | None, out: Outcome) -> None:
    for problem in anchor.problems:
        out.say(f"CHECKPOINT: {problem}")
    last = anchor.last
    if last is None:
        out.say(f"Checkpoint file {path}: no checkpoint yet.")
    else:
        out.say(
            f"Checkpoint file {path}: {anchor.lines} line(s); the latest is line "
            f"{anchor.last_line}, {last.when}: {last.referrals} referral(s), {last.entries} "
            f"entries, digest {last.digest}, line digest {last.mac} (compare with the "
            "audit room's latest post)."
        )
    if anchor.problems:
        out.code = 1
        out.say(f"{len(anchor.problems)} disagreement(s) with the checkpoints.")
    elif last is not None:
        out.say("The database agrees with every checkpoint.")


# -- rotate-key --------------------------------------------------------------------------


async def rotate_key(config: Config, new_secret: str) -> Outcome:
    """Re-encrypt every encrypted field and re-chain every running record with a new key,
    in one transaction. Refused while the bot runs or if any chain is already broken
    (re-chaining would hide the break)."""
    out = Outcome()
    old_secret = config.storage.database_key.read()
    if len(new_secret) < MIN_KEY_CHARS:
        out.code = 2
        out.say(f"the new key is too short: use a random secret of {MIN_KEY_CHARS}+ characters")
        return out
    if new_secret == old_secret:
        out.code = 2
        out.say("the new key is the key already in use")
        return out
    old = _keyring(old_secret, "storage.database_key")
    new = _keyring(new_secret, "the new key")
    path = config.integrity.checkpoint_file
    store = await _open_existing(config, old, exclusive=True)
    try:
        async with store.transaction() as tx:
            before = await tx.check_chains()
            anchor = None
            if path is not None:
                anchor = await check_database(tx, old, path)
            if before.breaks or (anchor is not None and anchor.problems):
                describe_breaks(before, out)
                if anchor is not None:
                    for problem in anchor.problems:
                        out.say(f"CHECKPOINT: {problem}")
                out.code = 1
                out.say(
                    "Key NOT rotated: a running record is broken or disagrees with the "
                    "checkpoints, and re-chaining with a new key would hide that. "
                    "Investigate with `referral-bot verify` first."
                )
                return out
            counts = await tx.reencrypt_all(old, new)
        await store.compact()
    finally:
        await store.close()

    # Read everything back with the new key before saying it worked.
    store = await _open_existing(config, new, exclusive=True)
    try:
        async with store.snapshot() as tx:
            after = await tx.check_chains()
        if path is not None and not after.breaks:
            # The checkpoints so far are keyed with the old key: a new line lists every
            # referral under the new one, chained to the old lines.
            async with store.transaction() as tx:
                rekeyed = await append_rekeyed(tx, path, new)
            if rekeyed is not None:
                out.say(f"Checkpoint file {path}: {rekeyed.when} lists every referral.")
    finally:
        await store.close()
    if after.breaks or after.referrals != before.referrals or after.entries != before.entries:
        describe_breaks(after, out)
        out.code = 1
        out.say("The re-encrypted database does not verify: restore the backup and report this.")
        return out
    out.say(
        f"Re-encrypted {counts['referrals']} referral(s), {counts['record_entries']} "
        f"running-record entries, {counts['outbox']} outgoing and {counts['inbox']} incoming "
        "message(s); every chain verifies with the new key."
        + (
            f" Re-wrapped the keys of {counts['attachments']} attached file(s) and pending "
            "download(s)."
            if counts["attachments"]
            else ""
        )
    )
    out.say(
        "Now point storage.database_key at the new key before starting the bot: the old key "
        "no longer opens this database. Backups made before now still need the old key."
    )
    return out


# -- purge -------------------------------------------------------------------------------


def years_before(now: datetime, years: int) -> datetime:
    try:
        return now.replace(year=now.year - years)
    except ValueError:  # 29 February
        return now.replace(year=now.year - years, day=28)


def cutoffs_for(config: Config, now: datetime) -> tuple[PurgeCutoffs, dict[str, str]]:
    r = config.retention
    cutoffs = PurgeCutoffs(
        contact_before=None if r.contact_years is None else years_before(now, r.contact_years),
        child_protection_before=(
            None
            if r.child_protection_years is None
            else years_before(now, r.child_protection_years)
        ),
        inbox_before=now - timedelta(days=r.handled_inbox_days),
        outbox_before=now - timedelta(days=r.sent_outbox_days),
        saved_referrers_before=now - timedelta(days=r.saved_referrer_days),
    )
    rules = {
        "contact": f"retention.contact_years = {r.contact_years}",
        "child protection referral": (
            f"retention.child_protection_years = {r.child_protection_years}"
        ),
    }
    return cutoffs, rules


def _describe_rules(config: Config) -> str:
    r = config.retention

    def years(n: int | None) -> str:
        return "kept for ever" if n is None else f"{n} year(s) after receipt"

    return (
        f"Retention: contacts {years(r.contact_years)}; child protection referrals "
        f"{years(r.child_protection_years)}; handled inbox rows {r.handled_inbox_days} day(s); "
        f"sent messages {r.sent_outbox_days} day(s); referrers' kept details "
        f"{r.saved_referrer_days} day(s) after their last use."
    )


def _describe_plan(plan: PurgePlan, verb: str, out: Outcome) -> None:
    out.say(
        f"{verb} {len(plan.referrals)} referral(s), each with its running record and messages"
        + (f" ({plan.attachments} attached file(s) with them)" if plan.attachments else "")
        + (":" if plan.referrals else ".")
    )
    for p in plan.referrals:
        out.say(f"  {p.ref}  {p.record_class}")
    out.say(
        f"{verb} {plan.inbox_rows} handled inbox row(s), {plan.outbox_rows} other sent "
        f"message(s) and {plan.saved_referrers} referrer's kept details."
    )


async def purge(config: Config, *, confirmed: bool, now: datetime | None = None) -> Outcome:
    """List (and with `confirmed`, remove) what the retention rules say is due to go."""
    keyring = _keyring(config.storage.database_key.read(), "storage.database_key")
    cutoffs, rules = cutoffs_for(config, now or datetime.now(UTC))
    out = Outcome()
    out.say(_describe_rules(config))
    store = await _open_existing(config, keyring, exclusive=False)
    try:
        if not confirmed:
            async with store.snapshot() as tx:
                plan = await tx.purge_plan(cutoffs)
            _describe_plan(plan, "Would purge", out)
            out.say("Nothing was purged. Run again with --yes to purge the above.")
            return out
        async with store.transaction() as tx:
            plan = await tx.purge(cutoffs, rules)
            if config.integrity.checkpoint_file is not None:
                # Purged on purpose: the checkpoints say so, so verify does not report
                # them as deleted. Written before the commit: if it fails, nothing goes.
                append_purged(
                    config.integrity.checkpoint_file,
                    keyring,
                    [p.ref for p in plan.referrals],
                    await tx.record_max_id(),
                )
        await store.compact(vacuum=False)
    finally:
        await store.close()
    _describe_plan(plan, "Purged", out)
    return out


# -- outbox: messages the homeserver refused for good ------------------------------------


async def outbox_failed(config: Config) -> Outcome:
    """List the messages given up (refused for good): IDs, purpose, reference, error,
    time. Never the message text. Runs beside a running bot (reads a snapshot)."""
    keyring = _keyring(config.storage.database_key.read(), "storage.database_key")
    store = await _open_existing(config, keyring, exclusive=False)
    try:
        async with store.snapshot() as tx:
            failed = await tx.failed_sends()
    finally:
        await store.close()
    out = Outcome()
    if not failed:
        out.say("No failed messages.")
        return out
    out.say("id\tfailed at (UTC)\tpurpose\treference\terror\troom")
    for f in failed:
        out.say(
            f"{f.id}\t{f.failed_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S')}\t{f.purpose}"
            f"\t{f.ref or '-'}\t{f.error}\t{f.room_id}"
        )
    out.say(f"{len(failed)} failed message(s). Resend one with: referral-bot outbox --retry ID")
    return out


async def outbox_retry(config: Config, outbox_id: int) -> Outcome:
    """Put a failed message back in its room's queue. Safe beside a running bot: the row
    is out of the bot's queue until this commits, and the bot's deadline clock picks it up
    within `deadlines.check_interval_seconds` (at once on its next start)."""
    keyring = _keyring(config.storage.database_key.read(), "storage.database_key")
    store = await _open_existing(config, keyring, exclusive=False)
    try:
        async with store.transaction() as tx:
            failed = await tx.requeue_failed(outbox_id)
    finally:
        await store.close()
    out = Outcome()
    if failed is None:
        out.code = 1
        out.say(f"There is no failed message {outbox_id} (see referral-bot outbox --failed).")
        return out
    out.say(
        f"Requeued message {failed.id} ({failed.purpose}, {failed.ref or 'no reference'}; "
        f"it had failed with {failed.error}). A running bot sends it within "
        f"{config.deadlines.check_interval_seconds} s; a stopped one when it starts."
    )
    return out


# -- report ------------------------------------------------------------------------------


async def report(config: Config, start: str, end: str, out_dir: Path) -> Outcome:
    """Write the front door's figures for `start` to `end` (YYYY-MM-DD, Europe/London,
    inclusive) as a PNG chart and a CSV: counts only. Reads a snapshot, so it may run
    beside the bot."""
    from handlers.reports import LONDON, build_report, parse_period, report_csv
    from handlers.settings import Settings

    out = Outcome()
    keyring = _keyring(config.storage.database_key.read(), "storage.database_key")
    store = await _open_existing(config, keyring, exclusive=False)
    try:
        async with store.snapshot() as tx:
            try:
                period = parse_period(f"{start} {end}", tx.now.astimezone(LONDON).date())
            except ValueError as exc:
                out.code = 2
                out.say(str(exc).split(" Use !report")[0])
                return out
            built = await build_report(
                tx, Settings.from_config(config, config.rooms.advice_team), period
            )
    finally:
        await store.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / built.file_name
    csv_path = png.with_suffix(".csv")
    png.write_bytes(built.png)
    csv_path.write_text(report_csv(built), encoding="utf-8")
    f = built.figures
    out.say(str(png))
    out.say(str(csv_path))
    out.say(
        f"{period.title()}: {f.received} received, {f.decided} decided, "
        f"{f.open_now} open now ({f.overdue_now} overdue)"
    )
    return out
