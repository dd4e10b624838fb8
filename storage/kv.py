"""Key/value settings: the sync token, device trust records, the database key check."""

from __future__ import annotations

from storage.base import TxBase

# A value encrypted with the database key, so that a wrong key is refused at start rather
# than on the first referral.
KEY_CHECK = "database_key_check"
KEY_CHECK_TEXT = "referral-bot database key check"
# A kv row written and emptied to test for free space (storage/disk_faults.py).
SPACE_PROBE = "space_probe"


class KvStore(TxBase):
    async def get_kv(self, key: str) -> str | None:
        async with self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def set_kv(self, key: str, value: str) -> None:
        await self._db.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    async def delete_kv(self, key: str) -> None:
        await self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    async def kv_with_prefix(self, prefix: str) -> list[tuple[str, str]]:
        async with self._db.execute(
            "SELECT key, value FROM kv WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        ) as cur:
            return [(str(r[0]), str(r[1])) for r in await cur.fetchall()]
