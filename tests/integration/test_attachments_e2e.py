"""Files attached to a referral on the real homeserver, with real E2EE both ways: taken
in encrypted, stored encrypted, sent out re-encrypted and byte-identical; every bad file
refused with a clear reply and nothing stored."""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from bot.world import World
from tests.files import executable, pdf, png
from tests.forms import referral
from tests.integration.live import db_rows, open_dm, running

pytestmark = pytest.mark.integration

LIMIT = 300_000


def letters(n: int) -> str:
    return "".join(chr(ord("a") + b % 26) for b in secrets.token_bytes(n))


def readable(data_dir: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in data_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{n[:12]!r} in {path.name}" for n in needles if n in data]
    return found


def in_thread(root: str) -> dict[str, Any]:
    return {
        "m.relates_to": {
            "rel_type": "m.thread",
            "event_id": root,
            "is_falling_back": True,
            "m.in_reply_to": {"event_id": root},
        }
    }


async def test_files_in_and_out_encrypted_and_byte_identical(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot")
    caplog.set_level(logging.DEBUG, logger="handlers")
    with world.config_path.open("a", encoding="utf-8") as fh:
        fh.write(f"\n[attachments]\nmax_bytes = {LIMIT}\n")
    u = letters(10)
    picture = png(f"bodymap{u}", side=64)
    letter = pdf(f"signed{u}")
    third = png(f"note{u}")
    names = [f"body-map-{u}.png", f"referral-letter-{u}.pdf", f"childs-note-{u}.png"]
    data_dir = world.config.storage.data_dir
    async with running(world):
        nurse, dm = await open_dm(world, f"nurse-{world.bot_user[1:5]}")
        ref_event = await nurse.send(dm, referral())
        ack = await nurse.wait_reply(ref_event)
        found = re.search(r"REF-\d{4}-\d{6}", ack.body)
        assert found is not None, ack.body
        ref = found.group(0)

        # 1. In the referral's thread; 2. as a reply to the acknowledgement.
        await nurse.send_file(
            dm,
            picture,
            names[0],
            mimetype="image/png",
            msgtype="m.image",
            extra=in_thread(ref_event),
        )
        added = await nurse.wait_for(lambda r: names[0] in r.body and "Added to" in r.body)
        assert f"Added to {ref}" in added[0].body and "PNG image" in added[0].body
        assert added[0].content["m.relates_to"]["event_id"] == ref_event  # in the thread
        await nurse.send_file(
            dm,
            letter,
            names[1],
            mimetype="application/pdf",
            extra={"m.relates_to": {"m.in_reply_to": {"event_id": ack.event_id}}},
        )
        await nurse.wait_for(lambda r: names[1] in r.body and "PDF document" in r.body)
        # 3. After !attach, a plain file in the DM.
        attach = await nurse.send(dm, f"!attach {ref}")
        assert "Send the files now" in (await nurse.wait_reply(attach)).body
        await nurse.send_file(dm, third, names[2], mimetype="image/png", msgtype="m.image")
        third_added = await nurse.wait_for(lambda r: names[2] in r.body and "Added to" in r.body)
        assert "now has 3 files" in third_added[0].body

        # Refused, each with its reason, nothing stored.
        thread = in_thread(ref_event)
        clear = await nurse.send_file(
            dm, png("clear"), "clear.png", msgtype="m.image", encrypted=False, extra=thread
        )
        assert "UNENCRYPTED" in (await nurse.wait_reply(clear)).body
        big = await nurse.send_file(dm, pdf(padding=LIMIT), "big.pdf", extra=thread)
        assert "the limit is" in (await nurse.wait_reply(big)).body
        lying = await nurse.send_file(
            dm, pdf(padding=LIMIT), "lying.pdf", declared_size=1000, extra=thread
        )
        assert "larger than the limit" in (await nurse.wait_reply(lying)).body
        exe = await nurse.send_file(
            dm, executable(), "photo.png", mimetype="image/png", msgtype="m.image", extra=thread
        )
        assert "not a type I accept" in (await nurse.wait_reply(exe)).body
        tampered = await nurse.send_file(dm, png(), "x.png", wrong_hash=True, extra=thread)
        assert "SHA-256" in (await nurse.wait_reply(tampered)).body

        # Out: the worker asks in the advice-team room and gets each file, re-encrypted.
        show = await world.worker.send(world.team_room, f"!show {ref}")
        shown = (await world.worker.wait_reply(show)).body
        assert all(n in shown for n in names), shown
        ask = await world.worker.send(world.team_room, f"!attachments {ref}")
        files = await world.worker.wait_for(
            lambda r: r.in_reply_to == ask and "file" in r.content, count=3
        )
        got = {r.content["body"]: await world.worker.open_file(r.content) for r in files}
        assert got == dict(zip(names, [picture, letter, third], strict=True))
        assert files[0].decrypted and files[0].content["info"]["mimetype"] == "image/png"
        assert "url" not in files[0].content  # only inside the encrypted `file` object
        # The team was told of each file, by reference and count only.
        notices = [r.body for r in world.worker.received if "a file was attached" in r.body]
        assert len(notices) == 3 and all(u not in n for n in notices)

    assert db_rows(world, "SELECT COUNT(*) FROM attachments") == [(3,)]
    assert db_rows(
        world, "SELECT state, COUNT(*) FROM attachment_jobs GROUP BY state ORDER BY state"
    ) == [("done", 3), ("refused", 3)]
    assert db_rows(world, "SELECT COUNT(*) FROM attachment_jobs WHERE media IS NOT NULL") == [(0,)]
    kinds = [k for (k,) in db_rows(world, "SELECT kind FROM record_entries ORDER BY id")]
    assert kinds.count("attachment_added") == 3 and kinds.count("attachment_out_sent") == 3
    # At rest: neither the file names nor the bytes (nor a slice of them) in clear.
    needles = [u.encode(), picture[40:100], letter[:64], letter[-64:], third[40:100]]
    needles += [n.encode() for n in names]
    assert readable(data_dir, needles) == []
    assert u not in caplog.text, "a file name or content was logged"
