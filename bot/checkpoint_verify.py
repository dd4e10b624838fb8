"""`verify`'s side of the checkpoints (bot/checkpoints.py): read the file back, check every
line is whole, signed and follows the one before, and compare what it last said about each
referral with the database."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from bot.checkpoint_file import LAST_KEY, ZERO, CheckpointFile, Line, xor_hex
from storage.keyring import Keyring
from storage.tx import Tx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """What the checkpoints last said about one referral."""

    entries: int
    leaf: str
    line: int  # line number in the file
    when: str


@dataclass
class AnchorReport:
    lines: int = 0
    last: Line | None = None
    last_line: int = 0
    problems: list[str] = field(default_factory=list)
    recorded: dict[str, Recorded] = field(default_factory=dict)


def replay(texts: list[str], keyring: Keyring) -> AnchorReport:
    """Check the file on its own: every line whole, signed, and following the one before;
    and what it last said about each referral (from the last key rotation on)."""
    report = AnchorReport(lines=len(texts))
    key_id = keyring.checkpoint_key_id()
    lines: list[tuple[int, Line]] = []
    for number, text in enumerate(texts, start=1):
        try:
            lines.append((number, Line.parse(text)))
        except ValueError:
            report.problems.append(
                f"checkpoint file line {number} is not a checkpoint (damaged or edited)"
            )
    # Lines from before the last key rotation are signed with the old key: only their
    # sequence is checked.
    start = 0
    for i, (_, line) in enumerate(lines):
        if line.kind == "rekey" and line.key == key_id:
            start = i
    prev: Line | None = None
    digest = ZERO
    digest_told = False
    for i, (number, line) in enumerate(lines):
        if prev is None:
            if line.n != 1 or line.prev != "":
                report.problems.append(
                    f"checkpoint file line {number} ({line.when}) is not checkpoint 1: "
                    "the lines before it were removed"
                )
        elif line.n != prev.n + 1 or line.prev != prev.mac:
            report.problems.append(
                f"checkpoint file line {number} ({line.when}) does not follow the line "
                f"before it ({prev.when}): a line was removed, inserted or changed"
            )
        prev = line
        if i < start:
            continue
        if line.key != key_id or not line.intact(keyring):
            report.problems.append(
                f"checkpoint file line {number} ({line.when}) does not verify with this "
                "database key: the line was changed"
            )
            continue
        if line.kind == "rekey":
            report.recorded.clear()
            digest = ZERO
        for ref, count, leaf in line.changed:
            before = report.recorded.get(ref)
            if before is not None:
                if count < before.entries:
                    report.problems.append(
                        f"{ref}: checkpoint file line {number} ({line.when}) records "
                        f"{count} running-record entries, fewer than the {before.entries} "
                        f"of line {before.line} ({before.when}): entries were removed from "
                        "the database while the bot ran, or an older copy was put back"
                    )
                digest = xor_hex(digest, bytes.fromhex(before.leaf))
            digest = xor_hex(digest, bytes.fromhex(leaf))
            report.recorded[ref] = Recorded(count, leaf, number, line.when)
        for ref in line.gone:
            gone = report.recorded.pop(ref, None)
            if gone is not None:
                digest = xor_hex(digest, bytes.fromhex(gone.leaf))
        if (digest != line.digest or len(report.recorded) != line.referrals) and not digest_told:
            digest_told = True
            report.problems.append(
                f"checkpoint file line {number} ({line.when}): its digest over every "
                "referral does not match the referrals the file lists up to it (the "
                "database was changed while the bot ran, or the file was edited)"
            )
        report.last, report.last_line = line, number
    return report


async def check_database(tx: Tx, keyring: Keyring, path: Path) -> AnchorReport:
    """Compare the database (a snapshot) with the checkpoint file: every referral the
    checkpoints recorded must still be there with at least the entries recorded, the
    same ones; the database must not be older than the latest checkpoint."""
    written = await tx.get_kv(LAST_KEY)
    if not path.exists():
        report = AnchorReport()
        if written is not None:
            report.problems.append(
                f"the checkpoint file {path} is missing, but the database says checkpoint "
                f"{json.loads(written)['n'] if written else '?'} was written to it"
            )
        return report
    report = replay(CheckpointFile(path).read_lines(), keyring)
    if written is not None:
        w = json.loads(written)
        last = report.last
        if last is None or int(w["n"]) > last.n:
            report.problems.append(
                f"the checkpoint file ends at "
                f"{last.when if last else 'nothing'} but the database recorded writing "
                f"checkpoint {w['n']} at {w['at']}: the file was cut short"
            )
    wanted = {ref: r.entries for ref, r in report.recorded.items()}
    now = await tx.record_heads_at(wanted)
    missing = 0
    for ref, r in sorted(report.recorded.items()):
        found = now.get(ref)
        where = f"checkpoint file line {r.line} ({r.when})"
        if found is None:
            missing += 1
            report.problems.append(
                f"{ref}: not in the database, but {where} recorded it with {r.entries} "
                "running-record entries: the referral was deleted"
            )
        elif found[0] < r.entries:
            missing += 1
            report.problems.append(
                f"{ref}: {found[0]} running-record entries, but {where} recorded "
                f"{r.entries}: its newest entries were deleted"
            )
        elif found[1] is None or keyring.checkpoint_leaf(ref, r.entries, found[1]).hex() != r.leaf:
            report.problems.append(
                f"{ref}: its first {r.entries} running-record entries are not the ones "
                f"{where} recorded: the record was rewritten"
            )
    last = report.last
    if last is not None:
        upto = await tx.record_max_id()
        referrals = await tx.referral_count()
        entries = await tx.record_entry_count()
        if upto < last.last_entry or (missing and referrals < last.referrals):
            report.problems.insert(
                0,
                f"the database is older than the latest checkpoint (file line "
                f"{report.last_line}, {last.when}): it holds {referrals} referrals and "
                f"{entries} running-record entries (newest entry number {upto}), the "
                f"checkpoint recorded {last.referrals} and {last.entries} (up to entry "
                f"{last.last_entry}): an older copy was restored or it was rolled back",
            )
    return report
