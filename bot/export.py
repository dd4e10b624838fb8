"""`referral-bot export REF-…`: the referral and its chronology as Markdown and JSON files,
and its attached files beside them (`REF-…-file<N>-<name>`)."""

from __future__ import annotations

import os
import re
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
            files = [f.id for f in await tx.attachments_of(referral.id)]
            await tx.append_record(
                referral.id,
                "referral-bot export",
                "chronology_exported",
                {"to": "file", "files": len(files)},
            )
            # Written one at a time below: a 20 MB file is read only when it is written.
            attachment_ids = files
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
    store = await Store.open(database_location(config), keyring, exclusive=False)
    try:
        for attachment_id in attachment_ids:
            async with store.reading() as tx:
                found = await tx.attachment_bytes(attachment_id)
            if found is None:
                continue  # purged meanwhile
            stored, content = found
            path = out_dir / f"{referral.ref}-file{stored.id}-{safe_file_name(stored.name)}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            written.append(path)
    finally:
        await store.close()
    return written


def safe_file_name(name: str) -> str:
    """A sender's file name as a name in one folder: no path, no odd characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "file"
    return cleaned[:100]
