"""`!report` on a real Synapse with real E2EE: the advice team's client gets the figures
as text and the chart as an encrypted image, downloads and decrypts it (authenticated
media), and gets exactly the PNG the bot rendered."""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from PIL import Image

from bot.chat_user import Received
from bot.world import World
from storage.fields import ctx_content
from storage.keyring import Keyring
from tests.forms import referral
from tests.integration.live import db_rows, open_dm, running

pytestmark = pytest.mark.integration


async def test_report_chart_reaches_the_team_encrypted_and_decrypts(world: World) -> None:
    worker = world.worker
    today = datetime.now(UTC).astimezone(ZoneInfo("Europe/London")).date()
    week_ago = today - timedelta(days=6)
    async with running(world):
        nurse, dm = await open_dm(world, f"rnurse-{world.bot_user[1:5]}")
        root = await nurse.send(dm, referral())
        ref = re.findall(r"REF-\d{4}-\d{6}", (await nurse.wait_reply(root)).body)[0]
        await worker.wait_joined(world.team_room, world.bot_user)

        ask = await worker.send(world.team_room, f"!report {week_ago} {today}")

        def answer(r: Received) -> bool:
            return r.sender == world.bot_user and r.in_reply_to == ask

        text, image = await worker.wait_for(answer, count=2, timeout=30)
        png = await worker.open_file(image.content)

        # A manager in a direct message: refused, with the reason.
        manager = world.manager
        assert manager is not None
        manager_dm = await manager.create_room(invite=[world.bot_user], encrypted=True)
        await manager.wait_joined(manager_dm, world.bot_user)
        in_dm = await manager.send(manager_dm, "!report month")
        refused = await manager.wait_reply(in_dm)

    assert text.decrypted and image.decrypted, "both must arrive end-to-end encrypted"
    assert text.content["msgtype"] == "m.notice"
    assert f"Front door report: {week_ago:%a %d %b}" in text.body
    assert "Received: 1 (1 child protection referrals, 0 contacts" in text.body
    assert "Open now: 1, of which overdue: 0" in text.body
    assert ref not in text.body and "@" not in text.body  # counts only, no IDs

    assert image.content["msgtype"] == "m.image"
    assert image.content["info"]["mimetype"] == "image/png"
    assert "url" not in image.content  # only the encrypted `file`, never a plain upload
    assert image.content["file"]["url"].startswith("mxc://")
    decoded = Image.open(io.BytesIO(png))
    assert decoded.format == "PNG" and decoded.size == (1000, 760)
    assert image.content["info"]["size"] == len(png)

    # Byte for byte what the bot rendered and kept (encrypted) in its outbox.
    [(txn_id, content)] = db_rows(
        world, "SELECT txn_id, content FROM outbox WHERE purpose = 'report_chart'"
    )
    keyring = Keyring(world.config.storage.database_key.read())
    stored = json.loads(keyring.decrypt(str(content), ctx_content(str(txn_id))))
    assert base64.b64decode(stored["file"]["data_b64"]) == png
    assert "advice-team room only" in refused.body
