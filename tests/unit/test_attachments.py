"""Attachments: type from the bytes, limits, encrypted storage, refusals, sending out,
purge, verify, rotate-key and export, over the real store and pipeline."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nio.crypto.attachments import encrypt_attachment

from handlers import filetypes
from handlers.filetypes import sniff
from schemas.config import AttachmentsConfig, load_config
from storage.engine import Store
from storage.keyring import Keyring
from storage.retention import PurgeCutoffs
from tests.engines import config_lines, sql
from tests.files import executable, odt, office, pdf, png
from tests.forms import referral
from tests.keys import KEYRING, TEST_KEY
from tests.unit.harness import NURSE, TEAM_ROOM, WORKER, Harness
from tests.unit.rig import edit_by_hand

# Storage behaviour: every test here runs on SQLite and on PostgreSQL.
pytestmark = pytest.mark.usefixtures("engine")


OTHER = "@other-nurse:example.org"


@pytest_asyncio.fixture
async def h(tmp_path: Path, engine: str) -> AsyncIterator[Harness]:
    harness = await Harness.open(
        tmp_path / "referrals.db",
        attachments=AttachmentsConfig(max_bytes=50_000, max_per_referral=3),
    )
    harness.pipeline.use_media(harness.messenger)
    assert harness.pipeline.attachments is not None
    harness.pipeline.attachments.retry_first_s = 0.01
    yield harness
    await harness.pipeline.stop()
    await harness.store.close()


async def refer(h: Harness, sender: str = NURSE) -> tuple[str, str]:
    event_id = await h.send(sender, referral())
    ack = next(m for m in h.replies_to(event_id) if m.thread_root == event_id)
    ref = ack.body.split(":")[0].split()[-1]
    assert ref.startswith("REF-"), ack.body
    return event_id, ref


def media(h: Harness, data: bytes, name: str, **over: Any) -> dict[str, Any]:
    """What a client puts in an encrypted file event, as bot/events.py stores it."""
    ciphertext, keys = encrypt_attachment(data)
    m: dict[str, Any] = {
        "url": h.messenger.upload(ciphertext),
        "key": keys["key"],
        "iv": keys["iv"],
        "sha256": keys["hashes"]["sha256"],
        "name": name,
        "caption": None,
        "declared_size": len(data),
        "mimetype": "application/octet-stream",
        "msgtype": "m.file",
    }
    m.update(over)
    return m


async def send_file(
    h: Harness,
    sender: str,
    data: bytes,
    name: str,
    thread: str | None,
    room: str | None = None,
    **over: Any,
) -> str:
    payload: dict[str, Any] = {"media": media(h, data, name, **over), "private": True}
    if thread is not None:
        payload |= {"thread_root": thread, "related": True}
    return await h.event(sender, payload, room=room)


def rows(h: Harness, query: str) -> list[tuple[Any, ...]]:
    return sql(h.store.where, query)


# -- the type, from the bytes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (png(), "PNG image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "JPEG image"),
        (b"GIF89a\x01\x00\x01\x00", "GIF image"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "WebP image"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIC image"),
        (pdf("x"), "PDF document"),
        (office("word/document.xml"), "Word document"),
        (office("xl/workbook.xml"), "Excel workbook"),
        (office("ppt/presentation.xml"), "PowerPoint presentation"),
        (odt(), "OpenDocument text"),
        (bytes.fromhex("d0cf11e0a1b11ae1") + b"\x00" * 100, "Office 97-2003 document"),
    ],
)
def test_allowed_types_are_known_from_their_bytes(data: bytes, kind: str) -> None:
    found = sniff(data, "whatever.bin")
    assert found is not None and found.kind == kind


@pytest.mark.parametrize(
    "data",
    [
        executable(),
        b"<html><script>alert(1)</script></html>",
        b"plain text that says it is a PNG",
        b"",
        b"PK\x03\x04 not really a zip",
        office("docProps/app.xml"),  # an OOXML container with no document in it
        odt(mimetype="application/x-shellscript"),
        b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00",  # an MP4 video
    ],
)
def test_anything_else_is_refused_whatever_it_is_called(data: bytes) -> None:
    assert sniff(data, "photo.png") is None


def test_an_old_office_file_is_named_by_its_extension_only_among_ole2() -> None:
    ole = bytes.fromhex("d0cf11e0a1b11ae1") + b"\x00" * 100
    assert sniff(ole, "budget.XLS") == filetypes.XLS
    assert sniff(ole, "letter.doc") == filetypes.DOC
    assert sniff(executable(), "letter.doc") is None


# -- in ---------------------------------------------------------------------------------


async def test_a_file_in_the_thread_is_stored_encrypted_and_announced(h: Harness) -> None:
    root, ref = await refer(h)
    picture = png("MARKER-IN-PIXELS", side=32)
    event = await send_file(h, NURSE, picture, "bodymap-Jordan.png", root, caption="left arm")
    added = [m for m in h.thread(root) if "Added to" in m.body]
    assert len(added) == 1 and "bodymap-Jordan.png (PNG image" in added[0].body
    assert added[0].mentions == (NURSE,)
    notice = [m.body for m in h.team() if "a file was attached" in m.body]
    assert notice == [f"{ref}: a file was attached (1 file now). !attachments {ref} to see them."]
    async with h.store.transaction() as tx:
        referral_row = await tx.referral_by_ref(ref)
        assert referral_row is not None
        [stored] = await tx.attachments_of(referral_row.id)
        got = await tx.attachment_bytes(stored.id)
        record = await tx.record_of(referral_row.id)
    assert got is not None and got[1] == picture
    assert (stored.name, stored.caption, stored.kind) == (
        "bodymap-Jordan.png",
        "left arm",
        "PNG image",
    )
    assert stored.sha256 == hashlib.sha256(picture).hexdigest() and stored.event_id == event
    entry = next(e for e in record if e.kind == "attachment_added")
    assert entry.detail["sha256"] == stored.sha256 and entry.detail["size"] == len(picture)
    assert "bodymap" not in json.dumps(entry.detail)  # no name in the record
    raw = b"".join(
        bytes(c) if isinstance(c, bytes) else str(c).encode()
        for r in rows(h, "SELECT * FROM attachments")
        for c in r
    )
    assert b"MARKER-IN-PIXELS" not in raw and b"bodymap" not in raw and b"left arm" not in raw
    assert picture[20:80] not in raw
    assert rows(h, "SELECT state, media FROM attachment_jobs") == [("done", None)]


async def test_a_reply_to_the_acknowledgement_or_after_attach_goes_to_the_referral(
    h: Harness,
) -> None:
    _root, ref = await refer(h)
    ack_event = "$sent1"  # the memory messenger's first event: the acknowledgement
    assert rows(h, "SELECT purpose FROM outbox WHERE sent_event_id = '$sent1'") == [("ack",)]
    await h.event(
        NURSE,
        {"media": media(h, pdf("a"), "letter.pdf"), "in_reply_to": ack_event, "related": True},
    )
    plain = await send_file(h, NURSE, pdf("b"), "second.pdf", None)
    assert "NOT attached to anything" in h.reply(plain)
    attach = await h.send(NURSE, f"!attach {ref}")
    assert "Send the files now" in h.reply(attach)
    await send_file(h, NURSE, pdf("c"), "third.pdf", None)
    h.now += timedelta(minutes=6)  # the window has closed
    late = await send_file(h, NURSE, pdf("d"), "late.pdf", None)
    assert "NOT attached to anything" in h.reply(late)
    assert rows(h, "SELECT COUNT(*) FROM attachments") == [(2,)]


async def test_refusals_store_nothing_and_say_why(h: Harness) -> None:
    root, _ = await refer(h)
    other_root, _ = await refer(h, OTHER)
    cases = {
        "UNENCRYPTED": await h.event(
            NURSE, {"media_clear": True, "thread_root": root, "related": True}
        ),
        "incomplete": await h.event(
            NURSE, {"media_bad": True, "thread_root": root, "related": True}
        ),
        "the limit is": await send_file(h, NURSE, pdf(padding=30_000), "big.pdf", root),
        "larger than the limit": await send_file(
            h, NURSE, pdf(padding=30_000), "lying.pdf", root, declared_size=100
        ),
        "not a type I accept": await send_file(
            h, NURSE, executable(), "photo.png", root, mimetype="image/png"
        ),
        "SHA-256": await send_file(h, NURSE, png(), "x.png", root, sha256="A" * 43),
        "could not be decrypted": await send_file(
            h, NURSE, png(), "y.png", root, key={"k": "short", "alg": "A256CTR"}
        ),
        "only the referrer or the advice team": await send_file(
            h, OTHER, png(), "z.png", root, room=h.dm(NURSE)
        ),
    }
    for expected, event in cases.items():
        answer = h.reply(event)
        assert expected in answer and "NOT attached" in answer, (expected, answer)
    assert rows(h, "SELECT COUNT(*) FROM attachments") == [(0,)]
    assert rows(h, "SELECT COUNT(*) FROM attachment_jobs WHERE media IS NOT NULL") == [(0,)]
    assert other_root != root


async def test_a_referral_takes_at_most_max_per_referral_files(h: Harness) -> None:
    root, _ref = await refer(h)
    for n in range(3):
        await send_file(h, NURSE, png(), f"{n}.png", root)
    fourth = await send_file(h, NURSE, png(), "3.png", root)
    assert "already has 3 files" in h.reply(fourth)
    assert rows(h, "SELECT COUNT(*) FROM attachments") == [(3,)]


async def test_a_download_that_fails_for_a_while_is_retried(h: Harness) -> None:
    root, _ = await refer(h)
    h.messenger.fetch_fails = 2
    await send_file(h, NURSE, png(), "a.png", root)
    assert rows(h, "SELECT COUNT(*) FROM attachments") == [(1,)]
    assert len(h.messenger.fetched) == 3
    h.messenger.fetch_fails = 10
    gone = await send_file(h, NURSE, png(), "b.png", root)
    assert "could not be downloaded" in h.reply(gone)
    assert rows(h, "SELECT COUNT(*) FROM attachments") == [(1,)]


# -- out --------------------------------------------------------------------------------


async def test_attachments_are_sent_where_asked_and_show_lists_them(h: Harness) -> None:
    root, ref = await refer(h)
    files = {"a.png": png(), "b.pdf": pdf("b")}
    for name, data in files.items():
        await send_file(h, NURSE, data, name, root)
    shown = h.reply(await h.send(WORKER, f"!show {ref}", room=TEAM_ROOM))
    assert "Files (2" in shown and "a.png · PNG image" in shown and "b.pdf · PDF document" in shown
    ask = await h.send(WORKER, f"!attachments {ref}", room=TEAM_ROOM)
    sent = {f.name: f for m, f in h.messenger.sent_files if m.reply_to == ask}
    assert {n: f.data for n, f in sent.items()} == files
    assert sent["a.png"].mimetype == "image/png"
    assert all(m.room_id == TEAM_ROOM for m, _ in h.messenger.sent_files)
    # The referrer may have their own; another practitioner may not.
    own = await h.send(NURSE, f"!attachments {ref}")
    assert len([m for m, _ in h.messenger.sent_files if m.reply_to == own]) == 2
    theirs = await h.send(OTHER, f"!attachments {ref}")
    assert "only see the files of referrals you made" in h.reply(theirs)
    # The outbox holds a reference to the file, never its bytes.
    outbox = rows(h, "SELECT content FROM outbox")
    assert all(b"%PDF" not in str(c).encode() for (c,) in outbox)
    kinds = [k for (k,) in rows(h, "SELECT kind FROM record_entries")]
    assert kinds.count("attachment_out_sent") == 4 and kinds.count("attachments_requested") == 2


# -- purge, verify, rotate-key, export ----------------------------------------------------


async def test_purge_removes_files_with_their_referral(h: Harness) -> None:
    root, _ = await refer(h)
    await send_file(h, NURSE, png(), "a.png", root)
    far = h.now + timedelta(days=1)
    cutoffs = PurgeCutoffs(None, far, far, far)
    async with h.store.transaction() as tx:
        plan = await tx.purge_plan(cutoffs)
        assert plan.attachments == 1
        await tx.purge(cutoffs, {"child protection referral": "test", "contact": "test"})
    for table in ("attachments", "attachment_jobs", "referrals"):
        assert rows(h, f"SELECT COUNT(*) FROM {table}") == [(0,)]  # noqa: S608


async def test_verify_checks_each_file_against_the_running_record(h: Harness) -> None:
    root, ref = await refer(h)
    await send_file(h, NURSE, png(), "a.png", root)
    await send_file(h, NURSE, pdf("x"), "b.pdf", root)
    async with h.store.snapshot() as tx:
        report = await tx.check_chains()
    assert report.breaks == [] and report.attachments == 2
    path = h.store.where
    await h.store.close()
    # The digest changed with the bytes: not what the running record says.
    edit_by_hand(path, "UPDATE attachments SET sha256 = 'ab' || substr(sha256, 3) WHERE id = 1")
    # The bytes of one file copied over the other's: they no longer decrypt.
    edit_by_hand(
        path,
        "UPDATE attachments SET data = (SELECT data FROM attachments WHERE id = 1) WHERE id = 2",
    )
    store = await Store.open(path, KEYRING)
    try:
        async with store.snapshot() as tx:
            report = await tx.check_chains()
    finally:
        await store.close()
    problems = sorted(b.problem for b in report.breaks)
    assert [b.ref for b in report.breaks] == [ref, ref]
    assert "attached file 1: its contents do not match" in problems[0]
    assert "attached file 2: it cannot be decrypted" in problems[1]
    h.store = await Store.open(path, KEYRING)


async def test_rotate_key_rewraps_files_that_open_with_the_new_key(h: Harness) -> None:
    root, _ = await refer(h)
    picture = png()
    await send_file(h, NURSE, picture, "a.png", root)
    new = Keyring("another-database-key-0123456789abcdef")
    async with h.store.transaction() as tx:
        counts = await tx.reencrypt_all(KEYRING, new)
    assert counts["attachments"] == 1
    path = h.store.where
    await h.store.close()
    store = await Store.open(path, new)
    try:
        async with store.transaction() as tx:
            got = await tx.attachment_bytes(1)
            report = await tx.check_chains()
    finally:
        await store.close()
    assert got is not None and got[1] == picture and got[0].name == "a.png"
    assert report.breaks == []
    h.store = await Store.open(path, new)


async def test_export_writes_the_files_beside_the_chronology(h: Harness, tmp_path: Path) -> None:
    from bot.export import export_referral

    root, ref = await refer(h)
    files = {"../../etc/passwd body map.png": png(), "letter.pdf": pdf("x")}
    for name, data in files.items():
        await send_file(h, NURSE, data, name, root)
    (tmp_path / "key").write_text(TEST_KEY)
    config_path = tmp_path / "c.toml"
    config_path.write_text(
        f"""
[homeserver]
url = "http://127.0.0.1:8008"
[bot]
user_id = "@bot:example.org"
password = {{ file = "key" }}
[storage]
data_dir = "{tmp_path}"
{config_lines(tmp_path / "referrals.db")}store_key = {{ file = "key" }}
database_key = {{ file = "key" }}
[access]
allowed_homeservers = ["example.org"]
[rooms]
advice_team = "{TEAM_ROOM}"
""",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    written = await export_referral(load_config(config_path), ref, out)
    names = sorted(p.name for p in written)
    assert names == sorted(
        [f"{ref}.md", f"{ref}.json", f"{ref}-file1-passwd_body_map.png", f"{ref}-file2-letter.pdf"]
    )
    assert (out / f"{ref}-file1-passwd_body_map.png").read_bytes() == files[
        "../../etc/passwd body map.png"
    ]
    assert all(p.parent == out and oct(p.stat().st_mode & 0o777) == "0o600" for p in written)
    data = json.loads((out / f"{ref}.json").read_text())
    assert [a["name"] for a in data["attachments"]] == list(files)
    assert "## Files (2)" in (out / f"{ref}.md").read_text()


# -- which events are files (bot/events.py) ------------------------------------------------


def _file_event(content: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "event_id": "$f1",
        "sender": NURSE,
        "origin_server_ts": 1,
        "room_id": "!dm:example.org",
        "content": content,
    }


def test_file_events_become_inbox_items_with_only_what_is_needed() -> None:
    from nio import Event

    from bot.events import media_payload, to_inbox_item

    _, keys = encrypt_attachment(b"x")
    file = {"v": "v2", "url": "mxc://example.org/abc", **keys}
    content = {
        "msgtype": "m.image",
        "body": "left arm, front",
        "filename": "body-map.png",
        "info": {"mimetype": "image/png", "size": 1234},
        "file": file,
        "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"},
    }
    event = Event.parse_decrypted_event(_file_event(content))
    event.decrypted = True
    item = to_inbox_item(event, "!dm:example.org", True, "@bot:example.org", private=True)
    assert item is not None and item.state == "pending"
    m = item.payload["media"]
    assert (m["name"], m["caption"], m["declared_size"]) == (
        "body-map.png",
        "left arm, front",
        1234,
    )
    assert m["sha256"] == keys["hashes"]["sha256"] and item.payload["thread_root"] == "$root"
    # Uploaded in clear (nio makes it a BadEvent in an encrypted room): only the fact.
    clear = dict(content, url="mxc://example.org/clear")
    del clear["file"]
    bad = Event.parse_decrypted_event(_file_event(clear))
    bad.decrypted = True
    item = to_inbox_item(bad, "!dm:example.org", True, "@bot:example.org", private=True)
    assert item is not None and item.payload["media_clear"] is True and "media" not in item.payload
    # An incomplete `file` object, a non-file message, an unencrypted room.
    assert media_payload({**content, "file": {"url": "mxc://x/y"}}) == {
        "media_bad": True,
        "thread_root": "$root",
        "related": True,
    }
    assert media_payload({"msgtype": "m.text", "body": "hi"}) is None
    item = to_inbox_item(event, "!dm:example.org", False, "@bot:example.org")
    assert item is not None and item.payload.get("media_clear") is True


async def test_the_team_gets_files_only_in_their_room_or_a_dm(h: Harness) -> None:
    root, ref = await refer(h)
    await send_file(h, NURSE, png(), "a.png", root)
    group = "!group:example.org"
    asked = await h.send(WORKER, f"!attachments {ref}", room=group, private=False)
    assert "advice-team room or in a direct message" in h.reply(asked)
    assert h.messenger.sent_files == []
    none_yet = await h.send(WORKER, "!attachments REF-2026-999999", room=TEAM_ROOM)
    assert "No referral REF-2026-999999" in h.reply(none_yet)
