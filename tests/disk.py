"""Make the bot's own database refuse to grow, as a full disk would (SQLite's
`max_page_count`, set on the bot's open connection), and give the space back."""

from __future__ import annotations

from storage.engine import Store


async def page_count(store: Store) -> int:
    async with store._lock, store._db.execute("PRAGMA page_count") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def limit_pages(store: Store, extra: int) -> int:
    """Let the database grow by `extra` pages at most (4 KB each); returns the limit.
    Writes that need more fail with SQLITE_FULL ("database or disk is full")."""
    async with store._lock:
        async with store._db.execute("PRAGMA page_count") as cur:
            row = await cur.fetchone()
        assert row is not None
        limit = int(row[0]) + extra
        async with store._db.execute(f"PRAGMA max_page_count = {limit:d}") as cur:
            await cur.fetchall()
    return limit


async def free_space(store: Store) -> None:
    """The disk has room again."""
    async with store._lock, store._db.execute("PRAGMA max_page_count = 1073741823") as cur:
        await cur.fetchall()
