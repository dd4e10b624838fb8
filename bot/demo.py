"""`referral-bot demo`: a throwaway homeserver, the bot, demo users, one referral end to end."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from pathlib import Path

from bot.app import BotApp
from bot.chat_user import ChatUser, Received
from bot.devserver import DevSynapse
from bot.world import make_world

DEMO_REFERRAL = """\
!refer
Child name: Jordan Example
Date of birth: 14/03/2013
Address: 1 Sample Street, AB1 2CD
School: Example Academy
Referral type: child protection referral
Concerns: neglect, emotional abuse
Description: Jordan told the school nurse: "there is no food at home again".
Seen twice this month with unexplained bruising; attendance has dropped to 70%.
Immediate danger: no
Action taken: Spoke with Jordan; informed the designated safeguarding lead.
Parents informed: yes
Child's views: "I don't want to go home on Fridays."
Referrer name: Pat Nurse
Referrer role: School nurse
Agency: health
Phone: 01632 960 001
"""


# A guided referral (`!refer` on its own), answered one question at a time.
GUIDED_ANSWERS = (
    "no",
    "Sam Example",
    "about 9",
    "3 Sample Road, AB1 2CD",
    "Example Primary",
    "skip",
    "neglect",
    "Came to school hungry three days this week; no coat in the rain.",
    '"There is never any breakfast."',
    "Told the designated safeguarding lead; breakfast club offered.",
    "yes",
    "skip",
    "2",
    "Pat Nurse",
    "School nurse",
    "health",
    "01632 960 001",
)
POLL_START = "org.matrix.msc3381.poll.start"
POLL_END = "org.matrix.msc3381.poll.end"


async def _guided(nurse: ChatUser, dm: str, bot: str) -> Received:
    """Make a guided referral as a practitioner on a phone would; the acknowledgement."""

    async def next_message(after: float) -> Received:
        """The next question (text or poll) or the review's poll: not the lines before it."""
        found = await nurse.wait_for(
            lambda r: (
                r.room_id == dm
                and r.sender == bot
                and r.at >= after
                and (r.type == POLL_START or r.body.startswith("Question "))
            ),
            timeout=30,
        )
        return found[0]

    async def say(text: str) -> Received:
        t0 = time.monotonic()
        await nurse.send(dm, text)
        got = await next_message(t0)
        tag = "[poll] " if got.type == POLL_START else ""
        print(f"> {text}\n  {tag}{got.body.splitlines()[0]}")
        return got

    await say("!refer")
    for answer in GUIDED_ANSWERS:
        last = await say(answer)
    assert last.type == POLL_START, "the review ends with a poll: send, change or cancel"
    print("> (taps) Send it")
    await nurse.send_poll_response(dm, last.event_id, ["send"])
    return await nurse.wait_reply(last.event_id, timeout=30)


def _rule(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)))


async def run_demo(keep: bool = False) -> int:
    base = Path(tempfile.mkdtemp(prefix="referral-bot-demo-"))
    hs = DevSynapse(base / "synapse")
    t0 = time.monotonic()
    await hs.start()
    print(f"Local homeserver (Synapse) up at {hs.url} in {time.monotonic() - t0:.1f} s")
    world = await make_world(hs, base / "world", log_level="WARNING")
    app = BotApp(world.config)
    try:
        await app.start()
        await app.wait_ready()
        nurse = await world.add_user("demo-nurse")
        dm = await nurse.create_room(invite=[world.bot_user], encrypted=True)
        await nurse.wait_joined(dm, world.bot_user)
        print(
            f"Bot {world.bot_user} is ready; practitioner {nurse.user_id} opened an encrypted DM."
        )

        _rule("The practitioner sends")
        print(DEMO_REFERRAL)
        sent_at = time.monotonic()
        event_id = await nurse.send(dm, DEMO_REFERRAL)
        ack = await nurse.wait_reply(event_id, timeout=30)
        _rule(
            f"The practitioner sees (decrypted={ack.decrypted}, "
            f"{(ack.at - sent_at) * 1000:.0f} ms after sending)"
        )
        print(ack.body)
        summary = (
            await world.worker.wait_for(
                lambda r: r.room_id == world.team_room and r.sender == world.bot_user, timeout=30
            )
        )[0]
        _rule("The advice team sees, in its encrypted room")
        print(summary.body)

        ref = ack.body.split(":", 1)[0]
        worker = world.worker
        await worker.wait_joined(world.team_room, world.bot_user)
        claim = await worker.send(world.team_room, f"!claim {ref}")
        await worker.wait_reply(claim, timeout=30)
        update = (
            await nurse.wait_for(lambda r: r.room_id == dm and "picked up" in r.body, timeout=30)
        )[0]
        _rule(f"{worker.user_id} sends !claim {ref}; the practitioner sees, in the thread")
        print(update.body)

        _rule("A guided referral: one question at a time, as on a phone (!refer on its own)")
        guided_ack = await _guided(nurse, dm, world.bot_user)
        _rule(f"The practitioner sees (decrypted={guided_ack.decrypted})")
        print(guided_ack.body)

        if keep:
            _rule("Still running: log in from Element or any Matrix client")
            print(f"Homeserver URL: {hs.url}")
            print(f"Bot:            {world.bot_user}")
            for user in world.users:
                print(f"User:           {user.user_id}  password: {user.password}")
            print(f"Advice-team room: {world.team_room}")
            print(f"Files (config, data, homeserver): {base}")
            print("Press Ctrl-C to stop.")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        ok = ack.decrypted and "CHILD PROTECTION REFERRAL" in ack.body
        return 0 if ok and "recorded as a CONTACT" in guided_ack.body else 1
    finally:
        await app.shutdown()
        await world.close()
        await hs.stop()
        if not keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(base)
