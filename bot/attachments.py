"""The attachment worker: fetch a file the handler queued, check it, store it.

Runs outside any write transaction, one worker per room (bot/room_workers.py), so a large
download never holds the database and never delays another room; the handler that queued
it has long since committed. In order:

1. download the ciphertext through the authenticated media API, refusing as soon as it
   is larger than `attachments.max_bytes`;
2. check its SHA-256 against the hash in the (end-to-end encrypted) event, BEFORE
   decrypting anything;
3. decrypt it (AES-CTR, the key from the event);
4. tell its type from the bytes (handlers/filetypes.py), never from the declared mimetype;
5. store it, note it in the running record and queue the replies, in one transaction.

Any refusal stores nothing of the file and tells the sender why. A download that fails
for a passing reason (connection, 5xx, 429) is retried with back-off a few times.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from dataclasses import dataclass

from nio.crypto.attachments import decrypt_attachment
from nio.exceptions import EncryptionError

from handlers.attachments import file_arrived, file_refused, not_allowed_reason
from handlers.filetypes import FileType, size_text, sniff
from handlers.ports import MediaTooLarge, MediaTransfer, MediaUnavailable
from handlers.settings import Settings
from schemas.records import AttachmentJob
from storage.engine import Store

log = logging.getLogger(__name__)

MAX_FETCH_ATTEMPTS = 5
# Files in memory at once, in and out together: each costs a few times its size while it
# is checked and stored (or read and encrypted), so many rooms sending 20 MB files at once
# must not multiply that. Other rooms' messages never wait for this.
MAX_TRANSFERS = 2
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0


class Refused(Exception):
    """The file cannot be taken; the text is the reason told to the sender."""


@dataclass(frozen=True)
class CheckedFile:
    data: bytes
    file_type: FileType
    sha256_hex: str


def unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def check_file(job: AttachmentJob, ciphertext: bytes | bytearray, max_bytes: int) -> CheckedFile:
    """Steps 2-4 on the downloaded ciphertext (CPU work: run it in a thread)."""
    digest = unpadded_b64(hashlib.sha256(ciphertext).digest())
    if digest != job.media.sha256.rstrip("="):
        raise Refused(
            "its contents do not match the SHA-256 hash in your message (changed or damaged "
            "on the way)"
        )
    try:
        plain = decrypt_attachment(
            ciphertext, str(job.media.key.get("k", "")), job.media.sha256, job.media.iv
        )
    except (EncryptionError, ValueError, TypeError, KeyError):
        raise Refused("it could not be decrypted with the key in your message") from None
    if len(plain) > max_bytes:
        raise Refused(f"it is larger than the limit of {size_text(max_bytes)}")
    file_type = sniff(plain, job.media.name)
    if file_type is None:
        raise Refused(not_allowed_reason())
    return CheckedFile(plain, file_type, hashlib.sha256(plain).hexdigest())


class AttachmentFetcher:
    def __init__(self, store: Store, media: MediaTransfer) -> None:
        self.store = store
        self.media = media
        self.retry_first_s = FIRST_RETRY_S
        self.transfers = asyncio.Semaphore(MAX_TRANSFERS)

    async def run_room(self, room_id: str, settings: Settings) -> None:
        """Every pending file of the room, in order."""
        while True:
            async with self.store.transaction() as tx:
                job = await tx.next_attachment_job(room_id)
            if job is None:
                return
            await self._one(job, settings)

    async def _one(self, job: AttachmentJob, settings: Settings) -> None:
        limit = settings.attachments.max_bytes
        delay = self.retry_first_s
        attempt = job.attempts
        while True:
            try:
                async with self.transfers:
                    checked = await self._fetch_and_check(job, limit)
            except Refused as exc:
                await self._refuse(job, str(exc))
                return
            except MediaTooLarge:
                await self._refuse(job, f"it is larger than the limit of {size_text(limit)}")
                return
            except MediaUnavailable as exc:
                await self._refuse(job, f"the homeserver would not give me the file ({exc})")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                attempt += 1
                log.warning(
                    "file download failed: event=%s attempt=%d error=%s",
                    job.event_id,
                    attempt,
                    type(exc).__name__,
                )
                if attempt >= MAX_FETCH_ATTEMPTS:
                    await self._refuse(
                        job, "it could not be downloaded from the homeserver; send it again"
                    )
                    return
                async with self.store.transaction() as tx:
                    await tx.attachment_job_retry(job.id, type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            async with self.transfers, self.store.transaction() as tx:
                stored = await file_arrived(
                    tx,
                    job,
                    settings,
                    data=checked.data,
                    file_type=checked.file_type,
                    sha256_hex=checked.sha256_hex,
                )
            del checked
            if stored is not None:
                log.info(
                    "file stored: event=%s attachment=%d size=%d",
                    job.event_id,
                    stored.id,
                    stored.size,
                )
            return

    async def _fetch_and_check(self, job: AttachmentJob, limit: int) -> CheckedFile:
        ciphertext = await self.media.fetch_media(job.media.url, limit)
        return await asyncio.to_thread(check_file, job, ciphertext, limit)

    async def _refuse(self, job: AttachmentJob, reason: str) -> None:
        log.info("file refused: event=%s", job.event_id)
        async with self.store.transaction() as tx:
            await file_refused(tx, job, reason)
