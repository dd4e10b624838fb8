"""The device's own files kept in the database (table `device_files`, migration 14).

With PostgreSQL nothing of the bot's device stays on local disk: `credentials.json` (the
access token and device ID) and `cross_signing.json` are rows here, sealed by their owner
(bot/device_files.py) before they arrive: this module stores and returns opaque bytes.
SQLite installs keep them as files in `data_dir` and leave the table empty.
"""

from __future__ import annotations

from storage.base import TxBase


class DeviceFileStore(TxBase):
    async def get_device_file(self, name: str) -> bytes | None:
        async with self._db.execute(
            "SELECT content FROM device_files WHERE name = ?", (name,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else bytes(row[0])

    async def put_device_file(self, name: str, content: bytes) -> None:
        await self._db.execute(
            "INSERT INTO device_files (name, content, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET content = excluded.content,"
            " updated_at = excluded.updated_at",
            (name, content, self.now.isoformat()),
        )
