"""The advice team's commands: claim, assign, note, RAG, decide, reclassify, link.

Every command that acts on a referral appends to its running record, in the same
transaction as the change, so there is no way to act without the record growing. Every
change the referrer must know of is sent to them, in the thread of their referral.
"""

from __future__ import annotations

from handlers.context import MIN_REASON, USER_RE, Call, Refusal, split_args
from handlers.deadlines import RAG_RATINGS, deadline_for
from handlers.meetings import start_meeting
from handlers.notify import LABEL, team_message, tell_referrer
from handlers.ports import txn_id_for
from handlers.render import Doc
from handlers.working_days import describe_deadline
from schemas.domain import OUTCOME_BY_KEY, Channel, Kind, Outcome, Purpose, Told
from schemas.records import Referral
from schemas.referral import ReferralType

OUTCOME_ALIASES = {
    "cfa": "assessment",
    "s47": "strategy",
    "section-47": "strategy",
    "earlyhelp": "early-help",
    "eh": "early-help",
    "no-further-action": "nfa",
}
TYPES = {
    "contact": ReferralType.CONTACT,
    "child-protection": ReferralType.CHILD_PROTECTION,
    "cp": ReferralType.CHILD_PROTECTION,
}


async def claim(c: Call) -> None:
    r = await c.open_referral(split_args(c.args, 1)[0])
    if r.claimed_by == c.msg.sender:
        raise Refusal(f"You have already claimed {r.ref}.")
    if not await c.tx.claim(r.id, c.msg.sender):
        now = await c.tx.referral_by_ref(r.ref)
        holder = now.claimed_by if now else "someone else"
        raise Refusal(f"{r.ref} is already claimed by {holder}. A manager can !assign it.")
    await c.record(r, Kind.CLAIMED, {})
    await c.say(
        Doc().para(
            f"You have claimed {r.ref} ({LABEL[r.current_type]}). Decision due "
            f"{describe_deadline(r.decision_due)}. Set a RAG rating with !rag {r.ref} "
            "red|amber|green."
        ),
        referral_id=r.id,
    )
    await tell_referrer(
        c.tx,
        r,
        c.msg.event_id,
        Told.CLAIMED,
        Doc().para(
            "An advice-team social worker has picked up your referral and is working on it."
        ),
    )


async def release(c: Call) -> None:
    r = await c.open_referral(split_args(c.args, 1)[0])
    if r.claimed_by is None:
        raise Refusal(f"{r.ref} is not claimed.")
    if r.claimed_by != c.msg.sender and not c.settings.is_manager(c.msg.sender):
        raise Refusal(
            f"{r.ref} is claimed by {r.claimed_by}; only they or a manager can release it."
        )
    await c.tx.release(r.id)
    await c.record(r, Kind.RELEASED, {"was_claimed_by": r.claimed_by})
    await c.say(Doc().para(f"{r.ref} is back in the queue, unclaimed."), referral_id=r.id)


async def assign(c: Call) -> None:
    ref, worker = split_args(c.args, 2)
    worker = worker.strip()
    r = await c.open_referral(ref)
    if not USER_RE.match(worker) or not c.settings.is_team(worker):
        raise Refusal(f"Assign to a member of the advice team, e.g. !assign {r.ref} @name:server.")
    await c.tx.assign(r.id, worker)
    await c.record(r, Kind.ASSIGNED, {"to": worker, "was_claimed_by": r.claimed_by})
    await c.say(Doc().para(f"{r.ref} is now assigned to {worker}."), referral_id=r.id)
    if r.claimed_by is None:
        await tell_referrer(
            c.tx,
            r,
            c.msg.event_id,
            Told.CLAIMED,
            Doc().para("An advice-team social worker has been assigned your referral."),
        )


async def note(c: Call) -> None:
    ref, text = split_args(c.args, 2)
    r = await c.referral(ref)
    if len(text.strip()) < MIN_REASON:
        raise Refusal(
            f"Write the note after the reference: !note {r.ref} what was done or advised."
        )
    await c.record(r, Kind.NOTE, {"text": text.strip()})
    await c.say(Doc().para(f"Note added to the running record of {r.ref}."), referral_id=r.id)


async def tell(c: Call) -> None:
    ref, text = split_args(c.args, 2)
    r = await c.referral(ref)
    if len(text.strip()) < MIN_REASON:
        raise Refusal(
            f"Write the message after the reference: !tell {r.ref} text for the referrer."
        )
    await c.record(r, Kind.NOTE, {"text": text.strip(), "shared_with_referrer": True})
    await c.say(Doc().para(f"Note added to {r.ref} and sent to the referrer."), referral_id=r.id)
    await tell_referrer(
        c.tx,
        r,
        c.msg.event_id,
        Told.NOTE,
        Doc().para("A note from the advice team:").para(text.strip()),
    )


async def rag(c: Call) -> None:
    ref, rating = split_args(c.args, 2)
    r = await c.open_referral(ref)
    rating = rating.strip().lower()
    if rating not in RAG_RATINGS:
        raise Refusal(f"RAG rating must be one of red, amber, green: !rag {r.ref} amber")
    due = deadline_for(rating, r.current_type, r.received_at, c.settings.deadlines)
    await c.tx.set_rag(r.id, rating, due)
    await c.record(
        r, Kind.RAG_SET, {"rag": rating, "previous": r.rag, "decision_due": due.isoformat()}
    )
    await c.say(
        Doc().para(f"{r.ref} is rated {rating.upper()}: decision due {describe_deadline(due)}."),
        referral_id=r.id,
    )


async def decide(c: Call) -> None:
    ref, word, reason = split_args(c.args, 3)
    r = await c.open_referral(ref)
    outcome = OUTCOME_BY_KEY.get(OUTCOME_ALIASES.get(word.lower(), word.lower()))
    if outcome is None:
        choices = ", ".join(f"{o.key} ({o})" for o in Outcome)
        raise Refusal(f"Choose an outcome: {choices}. Example: !decide {r.ref} early-help reason")
    if len(reason.strip()) < MIN_REASON:
        raise Refusal(
            f"A reason is required: !decide {r.ref} {outcome.key} why this decision was made."
        )
    if r.claimed_by != c.msg.sender and not c.settings.is_manager(c.msg.sender):
        holder = f"claimed by {r.claimed_by}" if r.claimed_by else "not claimed"
        raise Refusal(f"{r.ref} is {holder}. Claim it first (!claim {r.ref}) or ask a manager.")
    if r.pending_reclassification:
        raise Refusal(f"{r.ref} has a reclassification waiting for a manager (!confirm {r.ref}).")
    await c.tx.decide(r.id, outcome, c.msg.sender)
    await c.record(r, Kind.DECIDED, {"outcome": outcome, "reason": reason.strip()})
    await c.say(Doc().para(f"{r.ref} decided: {outcome}."), referral_id=r.id)
    doc = Doc().para(f"Decision: {outcome}.", strong=True).fields(("Reason", reason.strip()))
    if outcome is Outcome.NFA:
        dis = c.settings.disagreement
        doc.para(dis.text).fields(("Contact", dis.contact))
    if outcome is Outcome.STRATEGY:
        await _meeting_for_decision(c, r)
        doc.para("A strategy meeting is being set up; you are invited to its encrypted room.")
    await tell_referrer(c.tx, r, c.msg.event_id, Told.DECIDED, doc)


async def _meeting_for_decision(c: Call, r: Referral) -> None:
    """A `strategy` decision sets up the meeting at once; the caller chairs it."""
    _, problems = await start_meeting(
        c.tx,
        r,
        called_by=c.msg.sender,
        event_id=c.msg.event_id,
        scheduled=None,
        settings=c.settings,
    )
    if problems:
        await c.say(
            Doc()
            .para("Strategy meeting: not invited — act on these:", strong=True)
            .bullets(*problems),
            Purpose.MEETING_PROBLEMS,
            referral_id=r.id,
        )


async def reclassify(c: Call) -> None:
    ref, word, reason = split_args(c.args, 3)
    r = await c.open_referral(ref)
    target = TYPES.get(word.lower())
    if target is None:
        raise Refusal(
            f"Reclassify to contact or child-protection: !reclassify {r.ref} contact reason"
        )
    if len(reason.strip()) < MIN_REASON:
        raise Refusal(f"A reason is required: !reclassify {r.ref} {word.lower()} why.")
    if target == r.current_type:
        raise Refusal(f"{r.ref} is already recorded as a {LABEL[target]}.")
    downgrade = target == ReferralType.CONTACT
    if downgrade and not c.settings.is_manager(c.msg.sender):
        pending = {"to": target, "by": c.msg.sender, "reason": reason.strip()}
        await c.tx.set_pending_reclassification(r.id, pending)
        await c.record(r, Kind.RECLASSIFICATION_REQUESTED, pending)
        await c.say(
            Doc().para(
                f"Downgrading {r.ref} from {LABEL[r.current_type]} to CONTACT needs a team "
                f"manager. It stays a {LABEL[r.current_type]} until a manager confirms with "
                f"!confirm {r.ref}."
            ),
            referral_id=r.id,
        )
        managers = tuple(sorted(c.settings.managers))
        await team_message(
            c.tx,
            c.settings,
            Doc()
            .para(
                f"Manager needed: {c.msg.sender} asks to downgrade {r.ref} from "
                f"{LABEL[r.current_type]} to CONTACT. Confirm with !confirm {r.ref}."
            )
            .fields(("Reason", reason.strip())),
            txn_id=txn_id_for(c.msg.event_id, Purpose.CONFIRM_NEEDED),
            purpose=Purpose.CONFIRM_NEEDED,
            referral_id=r.id,
            mentions=managers,
        )
        return
    await _apply_reclassification(c, r, target, reason.strip(), requested_by=c.msg.sender)


async def confirm(c: Call) -> None:
    r = await c.open_referral(split_args(c.args, 1)[0])
    pending = r.pending_reclassification
    if not pending:
        raise Refusal(f"{r.ref} has no reclassification waiting for confirmation.")
    await _apply_reclassification(
        c, r, str(pending["to"]), str(pending["reason"]), requested_by=str(pending["by"])
    )


async def _apply_reclassification(
    c: Call, r: Referral, target: str, reason: str, *, requested_by: str
) -> None:
    await c.tx.set_current_type(r.id, target)
    await c.record(
        r,
        Kind.RECLASSIFIED,
        {
            "from": r.current_type,
            "to": target,
            "declared_type": r.declared_type,
            "requested_by": requested_by,
            "confirmed_by": c.msg.sender,
            "reason": reason,
        },
    )
    await c.say(
        Doc().para(
            f"{r.ref} is now recorded as a {LABEL[target]} (declared by the referrer as a "
            f"{LABEL[r.declared_type]}; both are kept)."
        ),
        referral_id=r.id,
    )
    updated = await c.tx.referral_by_ref(r.ref)
    assert updated is not None
    dis = c.settings.disagreement
    await tell_referrer(
        c.tx,
        updated,
        c.msg.event_id,
        Told.RECLASSIFIED,
        Doc()
        .para(
            f"Your referral has been reclassified from {LABEL[r.current_type]} to {LABEL[target]}.",
            strong=True,
        )
        .fields(("Reason", reason), ("You declared it as", LABEL[r.declared_type]))
        .para(dis.text)
        .fields(("Contact", dis.contact)),
    )


async def written(c: Call) -> None:
    ref, text = split_args(c.args, 2)
    r = await c.referral(ref)
    if r.channel != Channel.PHONE:
        raise Refusal(f"{r.ref} was not a telephone referral.")
    if r.written_followup_at is not None:
        raise Refusal(f"The written follow-up of {r.ref} is already recorded.")
    await c.tx.written_followup_received(r.id)
    await c.record(r, Kind.WRITTEN_FOLLOWUP_RECEIVED, {"note": text.strip()})
    await c.say(Doc().para(f"Written follow-up of {r.ref} recorded."), referral_id=r.id)


async def link(c: Call) -> None:
    await _link(c, linked=True)


async def unlink(c: Call) -> None:
    await _link(c, linked=False)


async def _link(c: Call, *, linked: bool) -> None:
    a_ref, b_ref, _ = split_args(c.args, 3)
    a = await c.referral(a_ref)
    b = await c.referral(b_ref)
    if a.id == b.id:
        raise Refusal("Give two different references.")
    await c.tx.set_link(a.id, b.id, linked=linked, by=c.msg.sender)
    kind = Kind.LINKED if linked else Kind.UNLINKED
    await c.record(a, kind, {"other": b.ref})
    await c.record(b, kind, {"other": a.ref})
    verb = "now counted as the same child" if linked else "no longer counted as the same child"
    await c.say(Doc().para(f"{a.ref} and {b.ref} are {verb}."), referral_id=a.id)
