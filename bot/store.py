"""Compatibility shim: the store now lives in the `storage/` package.

Kept only so that branches still writing `from bot.store import X` work after merge; new
code imports from `storage.*` and `schemas.*`. To be deleted once every branch is merged.
"""

from __future__ import annotations

from schemas.messages import InboxItem, OutboxRow, UndecryptedItem
from schemas.records import (
    OPEN_STATES,
    Meeting,
    MeetingItem,
    Participant,
    RecordEntry,
    Referral,
    RoomJob,
)
from storage.engine import DatabaseInUse, Store, WrongDatabaseKey, _split_sql
from storage.fields import child_key_of
from storage.integrity import SEAL_FLAG, ChainBreak, ChainReport
from storage.kv import KEY_CHECK, KEY_CHECK_TEXT
from storage.metrics import OpsCounts
from storage.record import SYSTEM_ACTOR
from storage.retention import PurgeCutoffs, PurgedReferral, PurgePlan
from storage.tx import Tx

__all__ = [
    "KEY_CHECK",
    "KEY_CHECK_TEXT",
    "OPEN_STATES",
    "SEAL_FLAG",
    "SYSTEM_ACTOR",
    "ChainBreak",
    "ChainReport",
    "DatabaseInUse",
    "InboxItem",
    "Meeting",
    "MeetingItem",
    "OpsCounts",
    "OutboxRow",
    "Participant",
    "PurgeCutoffs",
    "PurgePlan",
    "PurgedReferral",
    "RecordEntry",
    "Referral",
    "RoomJob",
    "Store",
    "Tx",
    "UndecryptedItem",
    "WrongDatabaseKey",
    "_split_sql",
    "child_key_of",
]
