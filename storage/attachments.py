"""Files attached to referrals: the jobs that fetch them, the stored files, and the
`!attach` windows.

A file's bytes are encrypted with AES-256-GCM under a key of their own, and that key is
wrapped by the database key's field encryption; both are bound to the referral and the
row's uid, so a file copied to another referral or row does not decrypt. Key rotation
re-wraps the small keys only. The file name and caption are field-encrypted.
The bytes live in the database (a BLOB; `bytea` on PostgreSQL): one backup, one
transaction, and a purge that removes a referral removes its files with it.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from schemas.records import Attachment, AttachmentJob, EncryptedMedia
from storage.base import TxBase
from storage.fields import (
    ctx_attachment_data,
    ctx_attachment_key,
    ctx_attachment_media,
    ctx_attachment_meta,
    dumps,
    iso,
)
from storage.keyring import Keyring

# Every file has a key of its own, used for that one encryption only, so a fixed nonce is
# safe; it saves prefixing (and later slicing off) a nonce, each a copy of the whole file.
_FILE_NONCE = bytes(12)


def seal_file(keyring: Keyring, referral_id: int, uid: str, data: bytes) -> tuple[str, bytes]:
    """(wrapped key, ciphertext) for a file's bytes, under a new random key."""
    key = AESGCM.generate_key(bit_length=256)
    sealed = AESGCM(key).encrypt(_FILE_NONCE, data, ctx_attachment_data(referral_id, uid).encode())
    wrapped = keyring.encrypt(
        base64.b64encode(key).decode("ascii"), ctx_attachment_key(referral_id, uid)
    )
    return wrapped, sealed


def open_file(keyring: Keyring, referral_id: int, uid: str, wrapped: str, sealed: bytes) -> bytes:
    """The plaintext bytes; raises (InvalidTag, ValueError) if anything was changed."""
    key = base64.b64decode(keyring.decrypt(wrapped, ctx_attachment_key(referral_id, uid)))
    return AESGCM(key).decrypt(_FILE_NONCE, sealed, ctx_attachment_data(referral_id, uid).encode())


class AttachmentStore(TxBase):
    # -- jobs ---------------------------------------------------------------------------

    async def add_attachment_job(
        self,
        *,
        event_id: str,
        room_id: str,
        sender: str,
        referral_id: int,
        thread_root: str | None,
        media: EncryptedMedia,
    ) -> bool:
        """Record a file to fetch (False if this event already has a job). The commit
        starts the room's attachment worker."""
        cur = await self._db.execute(
            "INSERT OR IGNORE INTO attachment_jobs (event_id, room_id, sender, referral_id,"
            " thread_root, media, state, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
            (
                event_id,
                room_id,
                sender,
                referral_id,
                thread_root,
                self._keyring.encrypt(dumps(media.to_json()), ctx_attachment_media(event_id)),
                iso(self.now),
            ),
        )
        if cur.rowcount:
            self.attachment_rooms.add(room_id)
        return bool(cur.rowcount)

    async def next_attachment_job(self, room_id: str) -> AttachmentJob | None:
        async with self._db.execute(
            "SELECT * FROM attachment_jobs WHERE state = 'pending' AND room_id = ?"
            " ORDER BY id LIMIT 1",
            (room_id,),
        ) as cur:
            r = await cur.fetchone()
        if r is None:
            return None
        media = json.loads(self._keyring.decrypt(r["media"], ctx_attachment_media(r["event_id"])))
        return AttachmentJob(
            id=r["id"],
            event_id=r["event_id"],
            room_id=r["room_id"],
            sender=r["sender"],
            referral_id=r["referral_id"],
            media=EncryptedMedia.from_json(media),
            attempts=r["attempts"],
            thread_root=r["thread_root"],
        )

    async def rooms_with_attachment_jobs(self) -> list[str]:
        async with self._db.execute(
            "SELECT DISTINCT room_id FROM attachment_jobs WHERE state = 'pending'"
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    async def attachment_job_retry(self, job_id: int, error: str) -> None:
        await self._db.execute(
            "UPDATE attachment_jobs SET attempts = attempts + 1, error = ? WHERE id = ?",
            (error[:200], job_id),
        )

    async def finish_attachment_job(self, job_id: int, *, refused: str | None = None) -> None:
        """Done (or refused, with the reason: no content): the key to the homeserver's
        copy is forgotten."""
        await self._db.execute(
            "UPDATE attachment_jobs SET state = ?, media = NULL, error = ?, done_at = ?,"
            " attempts = attempts + 1 WHERE id = ?",
            ("refused" if refused else "done", refused, iso(self.now), job_id),
        )

    async def pending_attachment_count(self, referral_id: int) -> int:
        async with self._db.execute(
            "SELECT COUNT(*) FROM attachment_jobs WHERE referral_id = ? AND state = 'pending'",
            (referral_id,),
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- stored files -------------------------------------------------------------------

    async def add_attachment(
        self,
        *,
        referral_id: int,
        event_id: str,
        sender: str,
        kind: str,
        mimetype: str,
        sha256: str,
        name: str,
        caption: str | None,
        data: bytes,
    ) -> Attachment:
        uid = secrets.token_hex(16)
        wrapped, sealed = seal_file(self._keyring, referral_id, uid, data)
        meta = self._keyring.encrypt(
            dumps({"name": name, "caption": caption}), ctx_attachment_meta(referral_id, uid)
        )
        cur = await self._db.execute(
            "INSERT INTO attachments (uid, referral_id, event_id, sender, added_at, kind,"
            " mimetype, size, sha256, meta, file_key, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                uid,
                referral_id,
                event_id,
                sender,
                iso(self.now),
                kind,
                mimetype,
                len(data),
                sha256,
                meta,
                wrapped,
                sealed,
            ),
        )
        return Attachment(
            id=int(cur.lastrowid or 0),
            uid=uid,
            referral_id=referral_id,
            event_id=event_id,
            sender=sender,
            added_at=self.now,
            kind=kind,
            mimetype=mimetype,
            size=len(data),
            sha256=sha256,
            name=name,
            caption=caption,
        )

    async def attachments_of(self, referral_id: int) -> list[Attachment]:
        """The referral's files, oldest first (descriptions only, not the bytes)."""
        async with self._db.execute(
            "SELECT id, uid, referral_id, event_id, sender, added_at, kind, mimetype, size,"
            " sha256, meta FROM attachments WHERE referral_id = ? ORDER BY id",
            (referral_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [self._attachment(r) for r in rows]

    async def attachment(self, attachment_id: int) -> Attachment | None:
        async with self._db.execute(
            "SELECT id, uid, referral_id, event_id, sender, added_at, kind, mimetype, size,"
            " sha256, meta FROM attachments WHERE id = ?",
            (attachment_id,),
        ) as cur:
            r = await cur.fetchone()
        return None if r is None else self._attachment(r)

    async def attachment_count(self, referral_id: int) -> int:
        async with self._db.execute(
            "SELECT COUNT(*) FROM attachments WHERE referral_id = ?", (referral_id,)
        ) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def attachment_bytes(self, attachment_id: int) -> tuple[Attachment, bytes] | None:
        """A file's description and its decrypted bytes."""
        async with self._db.execute(
            "SELECT * FROM attachments WHERE id = ?", (attachment_id,)
        ) as cur:
            r = await cur.fetchone()
        if r is None:
            return None
        data = open_file(self._keyring, r["referral_id"], r["uid"], r["file_key"], r["data"])
        return self._attachment(r), data

    def _attachment(self, r: Any) -> Attachment:
        meta = json.loads(
            self._keyring.decrypt(r["meta"], ctx_attachment_meta(r["referral_id"], r["uid"]))
        )
        return Attachment(
            id=r["id"],
            uid=r["uid"],
            referral_id=r["referral_id"],
            event_id=r["event_id"],
            sender=r["sender"],
            added_at=datetime.fromisoformat(r["added_at"]),
            kind=r["kind"],
            mimetype=r["mimetype"],
            size=r["size"],
            sha256=r["sha256"],
            name=str(meta.get("name") or ""),
            caption=meta.get("caption"),
        )

    # -- !attach windows ----------------------------------------------------------------

    async def open_attach_window(
        self, room_id: str, sender: str, referral_id: int, until: datetime
    ) -> None:
        await self._db.execute(
            "INSERT INTO attach_windows (room_id, sender, referral_id, until) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (room_id, sender) DO UPDATE SET referral_id = excluded.referral_id,"
            " until = excluded.until",
            (room_id, sender, referral_id, iso(until)),
        )

    async def attach_window(self, room_id: str, sender: str) -> int | None:
        """The referral the sender's files in this room go to now, if `!attach` opened one."""
        async with self._db.execute(
            "SELECT referral_id FROM attach_windows WHERE room_id = ? AND sender = ? AND until > ?",
            (room_id, sender, iso(self.now)),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def referral_answered_by(self, room_id: str, event_id: str) -> int | None:
        """The referral whose message, or one of whose sent messages (its acknowledgement,
        an update in its thread), is `event_id` in this room."""
        async with self._db.execute(
            "SELECT id FROM referrals WHERE room_id = ? AND (event_id = ? OR thread_root = ?)"
            " LIMIT 1",
            (room_id, event_id, event_id),
        ) as cur:
            row = await cur.fetchone()
        if row is not None:
            return int(row[0])
        async with self._db.execute(
            "SELECT referral_id FROM outbox WHERE room_id = ? AND sent_event_id = ?"
            " AND referral_id IS NOT NULL LIMIT 1",
            (room_id, event_id),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else int(row[0])
