"""The words of the domain as types: a referral's state and outcome, what an outgoing
message is for, and what a running-record entry records.

Each value is exactly the string stored in the database (except an outcome, stored by its
key: see `Outcome`), so using these changes nothing that is stored; they only let the code
say which strings it means (and mypy check it). Storage and handlers both use them; this
module imports nothing of the project.
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where a referral is (`referrals.state`)."""

    RECEIVED = "received"  # open, unclaimed
    CLAIMED = "claimed"  # open, a worker holds it
    DECIDED = "decided"


OPEN_STATES = (State.RECEIVED, State.CLAIMED)


class Outcome(StrEnum):
    """A decision. The value is the display text; `referrals.outcome` stores the key
    (`assessment`, `early-help` …; migration 13 rewrote older rows), so the wording can
    change without touching stored rows. Running-record entries (`decided`) quote the
    display text of their day and are never rewritten: they are hash-chained history."""

    ASSESSMENT = "proceed to child and family assessment"
    STRATEGY = "strategy discussion (section 47)"
    EARLY_HELP = "early help"
    NFA = "no further action, with advice/signposting"

    @property
    def key(self) -> str:
        """The word typed in `!decide REF-… <key> reason`."""
        return _OUTCOME_KEYS[self]


_OUTCOME_KEYS = {
    Outcome.ASSESSMENT: "assessment",
    Outcome.STRATEGY: "strategy",
    Outcome.EARLY_HELP: "early-help",
    Outcome.NFA: "nfa",
}
OUTCOME_BY_KEY = {key: outcome for outcome, key in _OUTCOME_KEYS.items()}


class Channel(StrEnum):
    """How a referral arrived (`referrals.channel`)."""

    MATRIX = "matrix"
    PHONE = "phone"


class Purpose(StrEnum):
    """What an outgoing message is for (`outbox.purpose`). It keys the message's
    transaction ID, and a referral's running record gets `<purpose>_sent` when it goes."""

    # replies to a message
    ACK = "ack"
    FORM_PROBLEMS = "form_problems"
    REPLY = "reply"
    REFUSED = "refused"
    HELP = "help"
    TEMPLATE = "template"
    UNKNOWN = "unknown"
    HINT = "hint"
    TOO_LONG = "too_long"
    UNENCRYPTED = "unencrypted"
    RELOAD = "reload"
    FAILED = "failed"
    AMENDED = "amended"
    EDIT_NOT_APPLIED = "edit_not_applied"
    UNDECRYPTABLE = "undecryptable"
    # to the advice team
    TEAM_SUMMARY = "team_summary"
    REMINDER = "reminder"
    FOLLOWUP_OVERDUE = "followup_overdue"
    CONFIRM_NEEDED = "confirm_needed"
    AMENDED_TEAM = "amended_team"
    MESSAGE_DELETED = "message_deleted"
    MESSAGE_DELETED_TEAM = "message_deleted_team"
    KEY_CHANGE = "key_change"
    # strategy meetings
    MEETING_AGENDA = "meeting_agenda"
    MEETING_PROBLEMS = "meeting_problems"
    MINUTES = "minutes"
    ACTION_REMINDER = "action_reminder"
    # device verification
    UNVERIFIED_DEVICE = "unverified_device"
    VERIFY_REPLY = "verify_reply"
    VERIFY_DONE = "verify_done"
    SHOW_SAS = "show_sas"


class Told(StrEnum):
    """What the referrer is told of in their referral's thread (purpose `tell_<value>`)."""

    CLAIMED = "claimed"
    NOTE = "note"
    DECIDED = "decided"
    RECLASSIFIED = "reclassified"
    STRATEGY = "strategy"
    MEETING_OUTCOME = "meeting_outcome"


class Kind(StrEnum):
    """What a running-record entry records (`record.kind`). Besides these, the store
    writes `<purpose>_sent` / `<purpose>_refused` for messages about a referral, and
    meetings `meeting_<attendance>`."""

    RECEIVED = "received"
    PATTERN_SHOWN = "pattern_shown"
    CLAIMED = "claimed"
    RELEASED = "released"
    ASSIGNED = "assigned"
    NOTE = "note"
    RAG_SET = "rag_set"
    DECIDED = "decided"
    RECLASSIFICATION_REQUESTED = "reclassification_requested"
    RECLASSIFIED = "reclassified"
    WRITTEN_FOLLOWUP_RECEIVED = "written_followup_received"
    WRITTEN_FOLLOWUP_OVERDUE = "written_followup_overdue"
    LINKED = "linked"
    UNLINKED = "unlinked"
    AMENDED = "amended"
    VIEWED = "viewed"
    CHRONOLOGY_EXPORTED = "chronology_exported"
    EDIT_NOT_APPLIED = "edit_not_applied"
    MESSAGE_DELETED_IN_CHAT = "message_deleted_in_chat"
    DEADLINE_REMINDER = "deadline_reminder"
    STRATEGY_MEETING_CALLED = "strategy_meeting_called"
    STRATEGY_MEETING_ROOM_CREATED = "strategy_meeting_room_created"
    STRATEGY_MEETING_MINUTES = "strategy_meeting_minutes"
    MEETING_ACTION_DONE = "meeting_action_done"
    MEETING_CHAIR_CHANGED = "meeting_chair_changed"
