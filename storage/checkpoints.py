"""Reads for the checkpoints that anchor the running record's chain heads outside the
database (bot/checkpoints.py): how many entries there are and each referral's newest hash."""

from __future__ import annotations

from dataclasses import dataclass

from storage.base import TxBase

_HEADS = (
    "SELECT g.referral_id, r.ref, g.n, h.hash FROM"
    " (SELECT referral_id, COUNT(*) AS n, MAX(id) AS last FROM record_entries"
    " WHERE id <= ?{} GROUP BY referral_id) AS g"
    " JOIN record_entries AS h ON h.id = g.last"
    " LEFT JOIN referrals AS r ON r.id = g.referral_id"
)
_HEADS_ALL = _HEADS.format("")
_HEADS_SINCE = _HEADS.format(
    " AND referral_id IN (SELECT DISTINCT referral_id FROM record_entries WHERE id > ? AND id <= ?)"
)


@dataclass(frozen=True)
class RecordHead:
    referral_id: int
    ref: str
    entries: int
    head: str


class CheckpointStore(TxBase):
    async def record_max_id(self) -> int:
        async with self._db.execute("SELECT MAX(id) FROM record_entries") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def record_heads(
        self, upto: int, changed: tuple[int, int] | None = None
    ) -> list[RecordHead]:
        """Each referral with running-record entries (only those with an entry numbered in
        `changed` = (after, until]): its reference, how many entries it has up to entry
        number `upto`, and the hash of the newest of those. Read through the
        (referral_id, id) index, so a few changed referrals cost a few lookups however
        many referrals there are."""
        args: tuple[int, ...] = (upto,)
        sql = _HEADS_ALL
        if changed is not None:
            sql, args = _HEADS_SINCE, (upto, *changed)
        async with self._db.execute(sql, args) as cur:
            return [
                RecordHead(
                    int(r[0]),
                    str(r[1]) if r[1] is not None else f"referral id {r[0]}",
                    int(r[2]),
                    str(r[3]),
                )
                for r in await cur.fetchall()
            ]

    async def record_heads_at(self, wanted: dict[str, int]) -> dict[str, tuple[int, str | None]]:
        """For each reference in `wanted`: how many running-record entries it has now, and
        the hash of its entry number `wanted[ref]` (None if it has fewer). One pass."""
        found: dict[str, tuple[int, str | None]] = {}
        ref, count, at = "", 0, None

        def flush() -> None:
            if ref in wanted:
                found[ref] = (count, at)

        async with self._db.execute(
            "SELECT r.ref, e.hash FROM record_entries AS e JOIN referrals AS r"
            " ON r.id = e.referral_id ORDER BY e.referral_id, e.id"
        ) as cur:
            async for row in cur:
                if row[0] != ref:
                    flush()
                    ref, count, at = str(row[0]), 0, None
                count += 1
                if count == wanted.get(ref):
                    at = str(row[1])
        flush()
        return found

    async def record_entry_count(self, upto: int | None = None) -> int:
        """How many running-record entries there are (numbered up to `upto`)."""
        query, args = "SELECT COUNT(*) FROM record_entries WHERE id <= ?", (upto,)
        if upto is None:
            query, args = "SELECT COUNT(*) FROM record_entries WHERE ? = 1", (1,)
        async with self._db.execute(query, args) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
