"""Integrity of what is stored: verify every chain (`verify`), re-encrypt and re-chain
everything with a new key (`rotate-key`), and seal rows written before field encryption."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from storage.attachments import open_file
from storage.drafts import DraftStore
from storage.fields import (
    child_key_of,
    ctx_attachment_key,
    ctx_attachment_media,
    ctx_attachment_meta,
    ctx_close_note,
    ctx_content,
    ctx_detail,
    ctx_form,
    ctx_item,
    ctx_payload,
    ctx_pending,
)
from storage.keyring import Keyring
from storage.kv import KEY_CHECK, KEY_CHECK_TEXT, KvStore
from storage.record import RecordStore
from storage.sql import Row

# Set by migration step 3: rows written before field encryption still have to be sealed.
SEAL_FLAG = "legacy_rows_to_seal"


@dataclass(frozen=True)
class ChainBreak:
    ref: str
    entry_id: int | None  # None: the problem is in the referral row itself
    problem: str


@dataclass
class ChainReport:
    referrals: int = 0
    entries: int = 0
    attachments: int = 0
    breaks: list[ChainBreak] = field(default_factory=list)


class IntegrityStore(KvStore, RecordStore, DraftStore):
    async def check_chains(self) -> ChainReport:
        """Check every referral: form readable, child key right, running record unbroken.

        Per referral the first problem found is reported (a broken chain makes every later
        entry of it unverifiable anyway).
        """
        keyring = self._keyring
        report = ChainReport()
        heads: dict[int, _ChainState] = {}
        # Row by row (Connection.stream): the two tables are read whole.
        async for r in self._db.stream(
            "SELECT id, ref, event_id, declared_type, declared_by, form, child_key"
            " FROM referrals ORDER BY id"
        ):
            report.referrals += 1
            state = _ChainState(
                ref=r["ref"],
                expect={
                    "event_id": r["event_id"],
                    "declared_type": r["declared_type"],
                    "declared_by": r["declared_by"],
                },
            )
            heads[r["id"]] = state
            try:
                form = json.loads(keyring.decrypt(r["form"], ctx_form(r["event_id"])))
            except (InvalidTag, ValueError):
                state.broken = True
                report.breaks.append(
                    ChainBreak(
                        r["ref"],
                        None,
                        "its form cannot be decrypted: changed by hand, "
                        "copied from another row, or encrypted with another key",
                    )
                )
                continue
            if r["child_key"] != child_key_of(keyring, form):
                state.broken = True
                report.breaks.append(
                    ChainBreak(r["ref"], None, "child_key does not match the child's details")
                )
        async for e in self._db.stream(
            "SELECT id, referral_id, at, actor, kind, detail, prev_hash, hash"
            " FROM record_entries ORDER BY referral_id, id"
        ):
            report.entries += 1
            if e["referral_id"] not in heads:  # foreign keys are off in a sqlite3 shell
                orphan = _ChainState(f"referral id {e['referral_id']}", {}, broken=True)
                heads[e["referral_id"]] = orphan
                report.breaks.append(
                    ChainBreak(
                        orphan.ref,
                        e["id"],
                        "it belongs to no referral (the referral was deleted by hand)",
                    )
                )
            state = heads[e["referral_id"]]
            state.count += 1
            if state.broken:
                continue
            problem = _entry_problem(keyring, state, e)
            if problem is not None:
                state.broken = True
                report.breaks.append(ChainBreak(state.ref, e["id"], problem))
            else:
                state.last_hash = str(e["hash"])
        for state in heads.values():
            if state.count == 0 and not state.broken:
                report.breaks.append(ChainBreak(state.ref, None, "it has no running record"))
        await self._check_attachments(report, heads)
        return report

    async def _check_attachments(self, report: ChainReport, heads: dict[int, _ChainState]) -> None:
        """Every attached file: it decrypts (its bytes, key and name unchanged and bound to
        its referral), its SHA-256 is what was stored, and its referral's running record
        has that digest (an `attachment_added` entry). One file in memory at a time."""
        async with self._db.execute(
            "SELECT id, referral_id FROM attachments ORDER BY referral_id, id"
        ) as cur:
            rows = [(int(r[0]), int(r[1])) for r in await cur.fetchall()]
        recorded: dict[int, set[tuple[int, str]]] = {}
        for attachment_id, referral_id in rows:
            report.attachments += 1
            state = heads.get(referral_id)
            ref = state.ref if state is not None else f"referral id {referral_id}"
            if state is None:
                report.breaks.append(
                    ChainBreak(ref, None, f"attached file {attachment_id} belongs to no referral")
                )
                continue
            if state.broken:
                continue
            if referral_id not in recorded:
                recorded[referral_id] = {
                    (int(e.detail.get("attachment", 0)), str(e.detail.get("sha256", "")))
                    for e in await self.record_of(referral_id)
                    if e.kind == "attachment_added"
                }
            problem = await self._attachment_problem(attachment_id, recorded[referral_id])
            if problem is not None:
                report.breaks.append(
                    ChainBreak(ref, None, f"attached file {attachment_id}: {problem}")
                )

    async def _attachment_problem(
        self, attachment_id: int, recorded: set[tuple[int, str]]
    ) -> str | None:
        async with self._db.execute(
            "SELECT * FROM attachments WHERE id = ?", (attachment_id,)
        ) as cur:
            r = await cur.fetchone()
        if r is None:
            return "gone while checking"
        try:
            self._keyring.decrypt(r["meta"], ctx_attachment_meta(r["referral_id"], r["uid"]))
            data = open_file(self._keyring, r["referral_id"], r["uid"], r["file_key"], r["data"])
        except (InvalidTag, ValueError):
            return (
                "it cannot be decrypted: changed by hand, copied from another row, or "
                "encrypted with another key"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != r["sha256"] or len(data) != r["size"]:
            return "its contents do not match the digest stored with it"
        if (attachment_id, digest) not in recorded:
            return "its digest is not in the referral's running record"
        return None

    async def reencrypt_all(self, old: Keyring, new: Keyring) -> dict[str, int]:
        """Re-encrypt every encrypted field and re-chain every running record with `new`.

        Call inside one transaction, after `check_chains()` with the old key found nothing
        broken: the chains are re-hashed with the new key, so a break left would be hidden.
        """
        counts = {"referrals": 0, "record_entries": 0, "outbox": 0, "inbox": 0}
        async with self._db.execute("SELECT id, event_id, form FROM referrals") as cur:
            referrals = list(await cur.fetchall())
        for r in referrals:
            text = old.decrypt(r["form"], ctx_form(r["event_id"]))
            await self._db.execute(
                "UPDATE referrals SET form = ?, child_key = ? WHERE id = ?",
                (
                    new.encrypt(text, ctx_form(r["event_id"])),
                    child_key_of(new, json.loads(text)),
                    r["id"],
                ),
            )
            counts["referrals"] += 1
        async with self.append_only_lifted():
            for r in referrals:
                counts["record_entries"] += await self._rechain(r["id"], old, new)
        async with self._db.execute("SELECT id, txn_id, content FROM outbox") as cur:
            outbox = list(await cur.fetchall())
        for o in outbox:
            text = old.decrypt(o["content"], ctx_content(o["txn_id"]))
            await self._db.execute(
                "UPDATE outbox SET content = ? WHERE id = ?",
                (new.encrypt(text, ctx_content(o["txn_id"])), o["id"]),
            )
            counts["outbox"] += 1
        async with self._db.execute(
            "SELECT seq, event_id, payload FROM inbox WHERE payload IS NOT NULL"
        ) as cur:
            inbox = list(await cur.fetchall())
        for i in inbox:
            text = old.decrypt(i["payload"], ctx_payload(i["event_id"]))
            await self._db.execute(
                "UPDATE inbox SET payload = ? WHERE seq = ?",
                (new.encrypt(text, ctx_payload(i["event_id"])), i["seq"]),
            )
            counts["inbox"] += 1
        counts["workflow"] = await self._reencrypt_workflow(old, new)
        counts["attachments"] = await self._rewrap_attachments(old, new)
        counts["guided"] = await self._reencrypt_guided(old, new)
        await self.set_kv(KEY_CHECK, new.encrypt(KEY_CHECK_TEXT, KEY_CHECK))
        return counts

    async def _rewrap_attachments(self, old: Keyring, new: Keyring) -> int:
        """Attached files: only their own keys are re-wrapped (and names re-encrypted);
        the bytes, encrypted under those keys, stay as they are. Files still waiting to be
        fetched have their descriptors re-encrypted."""
        done = 0
        async with self._db.execute(
            "SELECT id, uid, referral_id, meta, file_key FROM attachments"
        ) as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            meta_ctx = ctx_attachment_meta(r["referral_id"], r["uid"])
            key_ctx = ctx_attachment_key(r["referral_id"], r["uid"])
            await self._db.execute(
                "UPDATE attachments SET meta = ?, file_key = ? WHERE id = ?",
                (
                    new.encrypt(old.decrypt(r["meta"], meta_ctx), meta_ctx),
                    new.encrypt(old.decrypt(r["file_key"], key_ctx), key_ctx),
                    r["id"],
                ),
            )
            done += 1
        async with self._db.execute(
            "SELECT id, event_id, media FROM attachment_jobs WHERE media IS NOT NULL"
        ) as cur:
            jobs = list(await cur.fetchall())
        for j in jobs:
            ctx = ctx_attachment_media(j["event_id"])
            await self._db.execute(
                "UPDATE attachment_jobs SET media = ? WHERE id = ?",
                (new.encrypt(old.decrypt(j["media"], ctx), ctx), j["id"]),
            )
            done += 1
        return done

    async def _reencrypt_workflow(self, old: Keyring, new: Keyring) -> int:
        """Pending reclassification reasons, meeting notes and close notes."""
        done = 0
        async with self._db.execute(
            "SELECT id, pending_reclassification FROM referrals"
            " WHERE pending_reclassification IS NOT NULL"
        ) as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            text = old.decrypt(r[1], ctx_pending(r[0]))
            await self._db.execute(
                "UPDATE referrals SET pending_reclassification = ? WHERE id = ?",
                (new.encrypt(text, ctx_pending(r[0])), r[0]),
            )
            done += 1
        async with self._db.execute("SELECT id, meeting_id, text FROM meeting_items") as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            text = old.decrypt(r[2], ctx_item(r[1]))
            await self._db.execute(
                "UPDATE meeting_items SET text = ? WHERE id = ?",
                (new.encrypt(text, ctx_item(r[1])), r[0]),
            )
            done += 1
        async with self._db.execute(
            "SELECT id, close_note FROM meetings WHERE close_note IS NOT NULL"
        ) as cur:
            rows = list(await cur.fetchall())
        for r in rows:
            text = old.decrypt(r[1], ctx_close_note(r[0]))
            await self._db.execute(
                "UPDATE meetings SET close_note = ? WHERE id = ?",
                (new.encrypt(text, ctx_close_note(r[0])), r[0]),
            )
            done += 1
        return done

    async def _rechain(self, referral_id: int, old: Keyring | None, new: Keyring) -> int:
        """Re-encrypt and re-hash one running record. `old=None`: details are plain JSON
        (rows written before field encryption). The append-only guard must be lifted."""
        async with self._db.execute(
            "SELECT id, at, actor, kind, detail FROM record_entries"
            " WHERE referral_id = ? ORDER BY id",
            (referral_id,),
        ) as cur:
            entries = list(await cur.fetchall())
        prev = ""
        ctx = ctx_detail(referral_id)
        for e in entries:
            stored = str(e["detail"])
            if old is None:  # sealing: plain JSON, or already sealed with the current key
                text = new.decrypt(stored, ctx) if Keyring.is_encrypted(stored) else stored
            else:
                text = old.decrypt(stored, ctx)
            digest = new.chain_hash(prev, referral_id, e["at"], e["actor"], e["kind"], text)
            await self._db.execute(
                "UPDATE record_entries SET detail = ?, prev_hash = ?, hash = ? WHERE id = ?",
                (new.encrypt(text, ctx), prev, digest, e["id"]),
            )
            prev = digest
        return len(entries)

    async def seal_legacy_rows(self) -> int:
        """Encrypt and chain rows written before field encryption (migration step 3)."""
        if await self.get_kv(SEAL_FLAG) is None:
            return 0
        sealed = 0
        keyring = self._keyring
        async with self._db.execute("SELECT id, event_id, form FROM referrals") as cur:
            referrals = list(await cur.fetchall())
        for r in referrals:
            form = str(r["form"])
            if Keyring.is_encrypted(form):
                continue
            await self._db.execute(
                "UPDATE referrals SET form = ?, child_key = ? WHERE id = ?",
                (
                    keyring.encrypt(form, ctx_form(r["event_id"])),
                    child_key_of(keyring, json.loads(form)),
                    r["id"],
                ),
            )
            sealed += 1
        async with self._db.execute(
            "SELECT DISTINCT referral_id FROM record_entries WHERE hash IS NULL"
        ) as cur:
            unchained = [int(r[0]) for r in await cur.fetchall()]
        async with self.append_only_lifted():
            for referral_id in unchained:
                sealed += await self._rechain(referral_id, None, keyring)
        async with self._db.execute("SELECT id, txn_id, content FROM outbox") as cur:
            for o in list(await cur.fetchall()):
                if not Keyring.is_encrypted(str(o["content"])):
                    await self._db.execute(
                        "UPDATE outbox SET content = ? WHERE id = ?",
                        (keyring.encrypt(o["content"], ctx_content(o["txn_id"])), o["id"]),
                    )
                    sealed += 1
        async with self._db.execute(
            "SELECT seq, event_id, payload FROM inbox WHERE payload IS NOT NULL"
        ) as cur:
            for i in list(await cur.fetchall()):
                if not Keyring.is_encrypted(str(i["payload"])):
                    await self._db.execute(
                        "UPDATE inbox SET payload = ? WHERE seq = ?",
                        (keyring.encrypt(i["payload"], ctx_payload(i["event_id"])), i["seq"]),
                    )
                    sealed += 1
        await self._db.execute("DELETE FROM kv WHERE key = ?", (SEAL_FLAG,))
        return sealed


@dataclass
class _ChainState:
    ref: str
    expect: dict[str, str]
    last_hash: str = ""
    count: int = 0
    broken: bool = False


def _entry_problem(keyring: Keyring, state: _ChainState, e: Row) -> str | None:
    if e["prev_hash"] != state.last_hash:
        return "it does not follow the entry before it (an entry was removed, inserted or moved)"
    try:
        text = keyring.decrypt(e["detail"], ctx_detail(e["referral_id"]))
    except (InvalidTag, ValueError):
        return "its detail cannot be decrypted (changed by hand or copied from elsewhere)"
    expected = keyring.chain_hash(
        state.last_hash, e["referral_id"], e["at"], e["actor"], e["kind"], text
    )
    if e["hash"] != expected:
        return "its hash does not match its content (the entry was changed)"
    if state.count == 1:
        detail = json.loads(text)
        if (
            e["kind"] != "received"
            or not isinstance(detail, dict)
            or any(detail.get(k) != v for k, v in state.expect.items())
        ):
            return (
                "the referral's event, declared type or declared-by differ from "
                "its 'received' entry (the referral row was changed)"
            )
    return None
