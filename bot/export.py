"""`referral-bot export REF-…`: the referral and its chronology as Markdown and JSON files."""

from __future__ import annotations

import os
from pathlib import Path

from bot.maintenance import database_location
from handlers.settings import Settings
from handlers.views import chronology_json, chronology_markdown
from schemas.config import Config
from storage.engine import Store
from storage.keyring import Keyring


async def export_referral(config: Config, ref: str, out_dir: Path) -> list[Path]:
    keyring = Keyring(config.storage.database_key.read())
    settings = Settings.from_config(config, config.rooms.advice_team)
    # Read beside a running bot: not the exclusive lock the bot holds.
    store = await Store.open(database_location(config), keyring, exclusive=False)
    try:
        async with store.transaction() as tx:
            referral = await tx.referral_by_ref(ref.upper())
            if referral is None:
                raise LookupError(f"no referral {ref} in {store.describe()}")
            markdown = await chronology_markdown(tx, referral, settings)
            data = await chronology_json(tx, referral)
            await tx.append_record(
                referral.id, "referral-bot export", "chronology_exported", {"to": "file"}
            )
    finally:
        await store.close()
    os.umask(0o077)  # the files hold the child's details in clear
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for suffix, text in ((".md", markdown), (".json", data)):
        path = out_dir / f"{referral.ref}{suffix}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        written.append(path)
    return written
