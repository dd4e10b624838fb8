"""Turning matrix-nio timeline events into inbox items: what the bot must act on, and how.

Only the literal body counts: a reply's quoted fallback is cut off before anything else
looks at the text, so quoting someone's command never runs it.
"""

from __future__ import annotations

from typing import Any

from nio import (
    BadEvent,
    Event,
    MegolmEvent,
    RedactionEvent,
    RoomMemberEvent,
    RoomMessage,
    RoomMessageText,
    UnknownEvent,
)

from schemas.messages import InboxItem


def strip_reply_fallback(body: str, content: dict[str, Any]) -> str:
    """Remove the `> <@user> …` lines a client puts in front of a reply's text."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, dict) or "m.in_reply_to" not in relates:
        return body
    lines = body.split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    if i and i < len(lines) and lines[i] == "":
        i += 1
    return "\n".join(lines[i:])


def edited_event(content: dict[str, Any]) -> str | None:
    """The event an edit (`m.replace`) replaces, or None if this is not an edit."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, dict) or relates.get("rel_type") != "m.replace":
        return None
    target = relates.get("event_id")
    return target if isinstance(target, str) and target else ""


def relation_of(content: dict[str, Any]) -> dict[str, Any]:
    """What the event's own `m.relates_to` says about where to answer it, as inbox payload
    keys: `thread_root` (the thread it was sent in) and `related` (it has any relation:
    a thread, a reply, a reference, an annotation). Empty for a plain message."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, dict) or not ("rel_type" in relates or "m.in_reply_to" in relates):
        return {}
    root = relates.get("event_id")
    if relates.get("rel_type") == "m.thread" and isinstance(root, str) and root:
        return {"thread_root": root, "related": True}
    return {"related": True}


MEDIA_TYPES = frozenset({"m.image", "m.file", "m.video", "m.audio"})


def media_payload(content: dict[str, Any]) -> dict[str, Any] | None:
    """The inbox payload keys of a file event: the encrypted-file descriptor (`media`), or
    `media_clear` for a file uploaded unencrypted (the homeserver holds it in clear; nothing
    of it is kept). None if it is no file event or its `file` object is malformed."""
    if content.get("msgtype") not in MEDIA_TYPES:
        return None
    relates = content.get("m.relates_to")
    reply = relates.get("m.in_reply_to") if isinstance(relates, dict) else None
    reply_to = reply.get("event_id") if isinstance(reply, dict) else None
    place: dict[str, Any] = {**relation_of(content)}
    if isinstance(reply_to, str) and reply_to:
        place["in_reply_to"] = reply_to
    file = content.get("file")
    if not isinstance(file, dict):
        return {"media_clear": True, **place}
    info = content.get("info") if isinstance(content.get("info"), dict) else {}
    hashes = file.get("hashes")
    sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
    key = file.get("key")
    url, iv = file.get("url"), file.get("iv")
    if not (
        isinstance(url, str)
        and url.startswith("mxc://")
        and isinstance(key, dict)
        and isinstance(key.get("k"), str)
        and isinstance(iv, str)
        and isinstance(sha256, str)
    ):
        return {"media_bad": True, **place}
    body = content.get("body") if isinstance(content.get("body"), str) else ""
    filename = content.get("filename") if isinstance(content.get("filename"), str) else None
    # Newer clients send the file name in `filename` and a caption in `body`.
    name = safe_text(filename or body or "file")[:255]
    caption = safe_text(body)[:2000] if filename and body and body != filename else None
    size = info.get("size") if isinstance(info, dict) else None
    mimetype = info.get("mimetype") if isinstance(info, dict) else None
    media = {
        "url": url,
        "key": key,
        "iv": iv,
        "sha256": sha256,
        "name": name,
        "caption": caption,
        "declared_size": size if isinstance(size, int) and not isinstance(size, bool) else None,
        "mimetype": mimetype if isinstance(mimetype, str) else None,
        "msgtype": content["msgtype"],
    }
    return {"media": media, **place}


POLL_RESPONSE_TYPES = ("org.matrix.msc3381.poll.response", "m.poll.response")
MAX_POLL_ANSWERS = 20


def poll_response(content: dict[str, Any]) -> tuple[str, tuple[str, ...]] | None:
    """The poll an MSC3381 poll response answers and the answer IDs chosen, or None if
    the content is not a well-formed response."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, dict) or relates.get("rel_type") != "m.reference":
        return None
    poll = relates.get("event_id")
    if not isinstance(poll, str) or not poll:
        return None
    inner = content.get("org.matrix.msc3381.poll.response")
    answers: Any = None
    if isinstance(inner, dict):
        answers = inner.get("answers")
    if answers is None:
        answers = content.get("answers", content.get("m.selections"))
    if not isinstance(answers, list) or len(answers) > MAX_POLL_ANSWERS:
        return None
    chosen = tuple(a[:100] for a in answers if isinstance(a, str))
    return poll, chosen


def safe_text(text: str) -> str:
    """Text that can be stored and encrypted: lone surrogates become U+FFFD."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _item(
    event: Event, room_id: str, encrypted: bool, state: str, payload: dict[str, Any]
) -> InboxItem:
    return InboxItem(
        event_id=event.event_id,
        room_id=room_id,
        sender=event.sender,
        origin_ts=event.server_timestamp,
        room_encrypted=encrypted,
        state=state,
        payload=payload,
    )


def to_inbox_item(
    event: Event, room_id: str, room_encrypted: bool, bot_user_id: str, private: bool = False
) -> InboxItem | None:
    """The inbox item for one timeline event, or None if the bot has nothing to do with it.

    The caller has already checked that the sender is allowed to use the bot.
    `private` says that only the bot and the sender are in the room.
    """
    if event.sender == bot_user_id:
        return None
    if isinstance(event, MegolmEvent):
        # Keep the encrypted event: it is retried when its room key arrives.
        return _item(event, room_id, True, "undecrypted", event.source)
    if isinstance(event, RoomMemberEvent):
        # Attendance at strategy meetings follows joins, declines and leaves.
        return _item(
            event,
            room_id,
            room_encrypted,
            "pending",
            {"membership": event.membership, "target": event.state_key},
        )
    if isinstance(event, RedactionEvent):
        # Deleting a referral's message must not delete the referral: the handler keeps
        # the record and says so. Only the IDs are stored.
        return _item(
            event,
            room_id,
            room_encrypted,
            "pending",
            {"redacts": event.redacts, "private": private},
        )
    if isinstance(event, UnknownEvent) and event.type in POLL_RESPONSE_TYPES:
        # A tap in one of the bot's polls (the guided referral). Acted on only when it was
        # end-to-end encrypted, like any message.
        content = event.source.get("content", {})
        found = poll_response(content) if isinstance(content, dict) else None
        if found is None or not (room_encrypted and getattr(event, "decrypted", False)):
            return None
        return _item(
            event,
            room_id,
            True,
            "pending",
            {"poll_of": found[0], "poll_answers": list(found[1]), "private": private},
        )
    content = event.source.get("content", {})
    if not isinstance(content, dict):
        return None
    is_message = isinstance(event, RoomMessage) or (
        # nio makes a media event in an encrypted room without a `file` object (an
        # unencrypted upload) or with a malformed one a BadEvent: it is still a file sent.
        isinstance(event, BadEvent) and event.type == "m.room.message"
    )
    if is_message and content.get("msgtype") in MEDIA_TYPES:
        # A file: attached to a referral by the handler (handlers/attachments.py).
        media = media_payload(content)
        if media is None or edited_event(content) is not None:
            return None
        encrypted = room_encrypted and bool(getattr(event, "decrypted", False))
        if not encrypted:
            media = {"media_clear": True, **relation_of(content)}
        return _item(event, room_id, encrypted, "pending", {**media, "private": private})
    if not isinstance(event, RoomMessageText):
        # Notices (other bots), emotes and state are not commands.
        return None
    edit_of = edited_event(content)
    if edit_of is not None:
        # An edit never changes what was recorded. The handler answers it (the record is
        # unchanged; how to correct it); its new text is not stored.
        if not edit_of or not (room_encrypted and getattr(event, "decrypted", False)):
            return None
        new = content.get("m.new_content")
        new_body = new.get("body") if isinstance(new, dict) else None
        payload_edit: dict[str, Any] = {
            "edit_of": edit_of,
            "command": isinstance(new_body, str) and new_body.lstrip().startswith("!"),
            "private": private,
        }
        if private and isinstance(new_body, str) and not payload_edit["command"]:
            # In a direct message an edit may change an answer of an open guided referral
            # (handlers/guided.py): the new text of a plain (not command) message is kept,
            # encrypted, until it is handled. An edited command or referral keeps none.
            payload_edit["body"] = safe_text(new_body)
        return _item(event, room_id, True, "pending", payload_edit)
    body = strip_reply_fallback(safe_text(event.body or ""), content)
    encrypted = room_encrypted and bool(getattr(event, "decrypted", False))
    if not encrypted:
        if not body.lstrip().startswith("!"):
            return None
        # Never store what was sent in the clear: only that a command was attempted.
        payload: dict[str, Any] = {"withheld": True, **relation_of(content)}
    else:
        # `private`: only the bot and the sender are in the room (a direct message).
        payload = {"body": body, "private": private, **relation_of(content)}
    return _item(event, room_id, encrypted, "pending", payload)
