"""Files attached to referrals: taking them in (a file in a referral's thread, as a reply
to its acknowledgement, or after `!attach REF-…`), listing them, and sending them out
(`!attachments REF-…`).

The handler only decides and records a job: downloading, checking and storing happen in
the attachment worker (bot/attachments.py) outside any write transaction, so a 20 MB file
never holds the database or the room's other messages. `file_arrived` is what that
worker calls with the checked bytes, and `file_refused` when it could not take them.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from handlers.context import Call, Refusal
from handlers.filetypes import ALLOWED, FileType, size_text
from handlers.notify import answer_place, reply, team_message, thread_message
from handlers.ports import Incoming, OutgoingMessage, txn_id_for
from handlers.render import Doc
from handlers.settings import Settings
from schemas.records import Attachment, AttachmentJob, EncryptedMedia, Referral
from storage.tx import Tx

log = logging.getLogger(__name__)

HOW_TO_ATTACH = (
    "To attach a file to a referral, send it in the referral's thread (or as a reply to its "
    "acknowledgement), or send !attach REF-… first and then the file."
)


def _refuse_unencrypted_room(settings: Settings) -> Doc:
    return Doc().para(
        "This room is not end-to-end encrypted, so I will not take files here. Nothing was "
        f"stored. Send them in your encrypted direct message with {settings.bot_user_id}.",
        strong=True,
    )


async def _referral_for_file(tx: Tx, msg: Incoming) -> Referral | None:
    """The referral a file is for: the thread it was sent in, the message it replies to,
    or else the sender's open `!attach` window in this room."""
    for event_id in (msg.thread_root, msg.in_reply_to):
        if event_id:
            referral_id = await tx.referral_answered_by(msg.room_id, event_id)
            if referral_id is not None:
                return await tx.referral_by_id(referral_id)
    referral_id = await tx.attach_window(msg.room_id, msg.sender)
    return None if referral_id is None else await tx.referral_by_id(referral_id)


def may_attach(settings: Settings, referral: Referral, user_id: str) -> bool:
    """The referrer, or the advice team."""
    return user_id == referral.sender or settings.is_team(user_id)


async def _refuse(tx: Tx, msg: Incoming, text: str) -> None:
    log.info("file refused: event=%s", msg.event_id)
    await reply(tx, msg, "attachment_refused", Doc().para(text, strong=True), sensitive=False)


async def on_file(tx: Tx, msg: Incoming, settings: Settings) -> None:
    """A file arrived. Refuse it with the reason, or record a job to fetch it."""

    if not msg.room_encrypted:
        await reply(tx, msg, "unencrypted", _refuse_unencrypted_room(settings), sensitive=False)
        return
    referral = await _referral_for_file(tx, msg)
    if referral is None:
        # People share files in the team's and the meetings' rooms among themselves: only
        # a practitioner's room with the bot is told how to attach.
        if msg.room_id != settings.advice_team_room and not await tx.meeting_by_room(msg.room_id):
            await _refuse(tx, msg, f"This file was NOT attached to anything. {HOW_TO_ATTACH}")
        return
    await queue_file(tx, msg, settings, referral)


async def queue_file(tx: Tx, msg: Incoming, settings: Settings, referral: Referral) -> None:
    """Take the file event `msg` for `referral`, or refuse it with the reason: the checks
    that need no download (who, encrypted, declared size, count), then a fetch job.

    For other use cases that already know the referral (the guided intake asking for
    documents): call this with the file's Incoming; the worker does the rest and answers
    in the referral's thread."""

    if not may_attach(settings, referral, msg.sender):
        await _refuse(
            tx,
            msg,
            f"This file was NOT attached: only the referrer or the advice team can add files "
            f"to {referral.ref}.",
        )
        return
    if msg.media_clear or msg.media is None:
        if msg.media_clear:
            why = (
                "it was uploaded UNENCRYPTED, so the homeserver holds it in clear. Nothing "
                "was stored. Send it again from a client that encrypts files in encrypted "
                "rooms (Element and the other current apps do)"
            )
        else:
            why = "its encryption details (key, IV or hash) are incomplete. Nothing was stored"
        await _refuse(tx, msg, f"This file was NOT attached to {referral.ref}: {why}.")
        return
    media = EncryptedMedia.from_json(msg.media)
    limits = settings.attachments
    if media.declared_size is not None and media.declared_size > limits.max_bytes:
        await _refuse(
            tx,
            msg,
            f"This file was NOT attached to {referral.ref}: it is {size_text(media.declared_size)}"
            f" and the limit is {size_text(limits.max_bytes)}. Nothing was stored.",
        )
        return
    have = await tx.attachment_count(referral.id) + await tx.pending_attachment_count(referral.id)
    if have >= limits.max_per_referral:
        await _refuse(
            tx,
            msg,
            f"This file was NOT attached: {referral.ref} already has {have} files, the most "
            f"one referral can have ({limits.max_per_referral}). Nothing was stored. Send "
            "further evidence to the advice team another way.",
        )
        return
    thread_root, _ = answer_place(msg)
    await tx.add_attachment_job(
        event_id=msg.event_id,
        room_id=msg.room_id,
        sender=msg.sender,
        referral_id=referral.id,
        thread_root=thread_root,
        media=media,
    )
    log.info("file queued: ref=%s event=%s", referral.ref, msg.event_id)


def _job_msg(job: AttachmentJob) -> Incoming:
    """The media event as the notify helpers need it to answer in its place."""
    return Incoming(
        seq=0,
        event_id=job.event_id,
        room_id=job.room_id,
        sender=job.sender,
        origin_ts=0,
        room_encrypted=True,
        body="",
        thread_root=job.thread_root,
        related=job.thread_root is not None,
    )


async def file_arrived(
    tx: Tx,
    job: AttachmentJob,
    settings: Settings,
    *,
    data: bytes,
    file_type: FileType,
    sha256_hex: str,
) -> Attachment | None:
    """The worker fetched and checked the file: store it, note it in the running record,
    tell the referrer (in the referral's thread) and the advice team. None (and a refusal
    to the sender) if the referral is gone or full meanwhile."""
    referral = await tx.referral_by_id(job.referral_id)
    if referral is None:
        await file_refused(tx, job, "its referral no longer exists")
        return None
    if await tx.attachment_count(referral.id) >= settings.attachments.max_per_referral:
        await file_refused(
            tx, job, f"{referral.ref} already has the most files one referral can have"
        )
        return None
    stored = await tx.add_attachment(
        referral_id=referral.id,
        event_id=job.event_id,
        sender=job.sender,
        kind=file_type.kind,
        mimetype=file_type.mimetype,
        sha256=sha256_hex,
        name=job.media.name,
        caption=job.media.caption,
        data=data,
    )
    await tx.finish_attachment_job(job.id)
    count = await tx.attachment_count(referral.id)
    # No file name or caption here: the record says what the file is, not what it is called.
    await tx.append_record(
        referral.id,
        job.sender,
        "attachment_added",
        {
            "attachment": stored.id,
            "event_id": job.event_id,
            "sha256": sha256_hex,
            "size": len(data),
            "type": file_type.kind,
            "file": f"{file_type.kind}, {size_text(len(data))}, sha256 {sha256_hex[:16]}",
        },
    )
    doc = Doc().para(
        f"Added to {referral.ref}: {stored.name} ({file_type.kind}, {size_text(len(data))}). "
        f"{referral.ref} now has {count} file{'s' if count != 1 else ''}."
    )
    await thread_message(
        tx,
        referral,
        doc,
        to=job.sender,
        txn_id=txn_id_for(job.event_id, "attachment_added"),
        purpose="attachment_added",
    )
    await team_message(
        tx,
        settings,
        Doc().para(
            f"{referral.ref}: a file was attached ({count} file{'s' if count != 1 else ''} "
            f"now). !attachments {referral.ref} to see them."
        ),
        txn_id=txn_id_for(job.event_id, "attachment_team"),
        purpose="attachment_team",
        referral_id=referral.id,
    )
    return stored


async def file_refused(tx: Tx, job: AttachmentJob, reason: str) -> None:
    """The worker could not take the file: nothing is stored, the job keeps the reason
    (no content), and the sender is told why, where they sent it."""
    referral = await tx.referral_by_id(job.referral_id)
    about = f" to {referral.ref}" if referral is not None else ""
    await tx.finish_attachment_job(job.id, refused=reason)
    await reply(
        tx,
        _job_msg(job),
        "attachment_refused",
        Doc().para(
            f"This file was NOT attached{about}: {reason}. Nothing was stored.", strong=True
        ),
        sensitive=False,
    )


def not_allowed_reason() -> str:
    return f"its contents are not a type I accept (only {ALLOWED}), whatever its name says"


# -- commands --------------------------------------------------------------------------


async def attach(c: Call) -> None:
    """`!attach REF-…`: the sender's next files in this room go to that referral."""
    words = c.args.split()
    r = await c.referral(words[0] if words else None)
    if not may_attach(c.settings, r, c.msg.sender):
        raise Refusal(f"You can only attach files to referrals you made. {r.ref} is not one.")
    if not c.msg.room_encrypted:
        raise Refusal("This room is not end-to-end encrypted: send files in an encrypted one.")
    minutes = c.settings.attachments.attach_window_minutes
    await c.tx.open_attach_window(
        c.msg.room_id, c.msg.sender, r.id, c.tx.now + timedelta(minutes=minutes)
    )
    await c.say(
        Doc().para(
            f"Send the files now: the files you send in this room in the next {minutes} "
            f"minutes go to {r.ref} (up to {c.settings.attachments.max_per_referral} files, "
            f"{size_text(c.settings.attachments.max_bytes)} each; {ALLOWED})."
        ),
        purpose="attach_window",
    )


async def send_attachments(c: Call) -> None:
    """`!attachments REF-…`: each file, re-encrypted with a fresh key, as a reply here."""
    words = c.args.split()
    r = await c.referral(words[0] if words else None)
    sender = c.msg.sender
    if sender != r.sender and not c.settings.is_team(sender):
        raise Refusal(f"You can only see the files of referrals you made. {r.ref} is not one.")
    if sender != r.sender and c.msg.room_id != c.settings.advice_team_room and not c.msg.private:
        raise Refusal(
            "Use !attachments in the advice-team room or in a direct message with me: "
            "referral files are not sent to other rooms."
        )
    files = await c.tx.attachments_of(r.id)
    if not files:
        await c.say(Doc().para(f"{r.ref} has no files attached."), referral_id=r.id)
        return
    await c.tx.append_record(r.id, sender, "attachments_requested", {"count": len(files)})
    await c.say(
        Doc().para(f"{r.ref}: sending {len(files)} file{'s' if len(files) != 1 else ''}."),
        referral_id=r.id,
    )
    thread_root, reply_to = answer_place(c.msg)
    for f in files:
        await c.tx.enqueue(
            OutgoingMessage(
                c.msg.room_id,
                f.name,
                "",
                reply_to=reply_to,
                thread_root=thread_root,
                attachment=f.id,
            ),
            txn_id=txn_id_for(c.msg.event_id, f"attachment_out:{f.id}"),
            purpose="attachment_out",
            referral_id=r.id,
        )
