"""Read-only views: the queue, a referral with its running record, the chronology."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from handlers.context import Call, Refusal
from handlers.deadlines import age_of, time_left
from handlers.filetypes import attachment_lines
from handlers.meeting_record import meetings_section
from handlers.notify import LABEL, format_time
from handlers.pattern import find_pattern
from handlers.render import Doc
from handlers.settings import Settings
from handlers.working_days import describe_deadline
from schemas.domain import Channel, Kind
from schemas.records import RecordEntry, Referral
from storage.tx import Tx


def _yes_no(value: object) -> str:
    return "yes" if value else "no"


def form_rows(form: dict[str, Any]) -> list[tuple[str, str]]:
    child = form.get("child", {})
    referrer = form.get("referrer", {})
    identity = form.get("identity", {}) or {}
    age = (
        f"born {child['date_of_birth']}"
        if child.get("date_of_birth")
        else f"about {child['approximate_age']}"
        if child.get("approximate_age") is not None
        else f"unborn, due {child.get('unborn_due_date')}"
    )
    rows = [
        ("Child", f"{child.get('full_name', '')} ({age})"),
        ("Address", str(child.get("address", ""))),
        ("School", str(child.get("school") or "not given")),
        ("GP", str(child.get("gp") or "not given")),
        ("Concerns", ", ".join(form.get("concerns", []))),
    ]
    if form.get("concern_other"):
        rows.append(("Other concern", str(form["concern_other"])))
    rows += [
        ("Description", str(form.get("description", ""))),
        ("Immediate danger", "YES" if form.get("immediate_danger") else "no"),
        ("Action taken", str(form.get("actions_taken", ""))),
        ("Parents informed", _yes_no(form.get("parents_informed"))),
    ]
    if form.get("parents_not_informed_reason"):
        rows.append(("Why parents not informed", str(form["parents_not_informed_reason"])))
    rows.append(("Child's views", str(form.get("child_views", ""))))
    for key, label in (
        ("ethnicity", "Ethnicity"),
        ("religion", "Religion"),
        ("first_language", "First language"),
        ("disability", "Disability"),
    ):
        if identity.get(key):
            rows.append((label, str(identity[key])))
    rows.append(
        (
            "Referrer",
            f"{referrer.get('name', '')}, {referrer.get('role', '')}, "
            f"{referrer.get('agency', '')}, {referrer.get('phone', '')}",
        )
    )
    return rows


def status_rows(r: Referral, now: datetime) -> list[tuple[str, str]]:
    rows = [
        ("Reference", r.ref),
        ("Recorded as", LABEL[r.current_type]),
        ("Declared by the referrer as", f"{LABEL[r.declared_type]} ({r.declared_by})"),
        (
            "Received",
            format_time(r.received_at) + (" by telephone" if r.channel == Channel.PHONE else ""),
        ),
        ("Status", r.state if not r.claimed_by else f"{r.state} by {r.claimed_by}"),
        ("RAG", (r.rag or "not set").upper()),
    ]
    if r.is_open:
        rows.append(
            (
                "Decision due",
                f"{describe_deadline(r.decision_due)} ({time_left(r.decision_due, now)})",
            )
        )
    else:
        rows.append(("Outcome", f"{r.outcome} (by {r.decided_by})"))
    if r.pending_reclassification:
        p = r.pending_reclassification
        rows.append(
            ("Waiting for a manager", f"downgrade to {LABEL[str(p['to'])]} asked by {p['by']}")
        )
    if r.channel == Channel.PHONE:
        rows.append(
            (
                "Written follow-up",
                format_time(r.written_followup_at)
                if r.written_followup_at
                else f"NOT YET (due {format_time(r.written_followup_due or r.received_at)})",
            )
        )
    return rows


def entry_text(e: RecordEntry) -> str:
    d = e.detail
    parts = [f"{format_time(e.at)}", e.actor, e.kind.replace("_", " ")]
    for key in ("outcome", "to", "rag", "text", "reason", "headline", "other", "note", "file"):
        if d.get(key):
            parts.append(f"{key}: {d[key]}")
    if e.kind == Kind.DEADLINE_REMINDER:
        parts.append("OVERDUE" if d.get("overdue") else "near deadline")
    return " · ".join(str(p) for p in parts)


async def show(c: Call) -> None:
    r = await c.referral(c.args.split()[0] if c.args.split() else None)
    doc = await referral_doc(c.tx, r, c.settings)
    await c.tx.append_record(r.id, c.msg.sender, Kind.VIEWED, {})
    await c.say(doc, referral_id=r.id)


async def referral_doc(tx: Tx, r: Referral, settings: Settings) -> Doc:
    now = tx.now
    group = await tx.referrals_of_child(r)
    pattern = find_pattern(group, now, settings.pattern)
    doc = Doc().heading(f"{r.ref}: {LABEL[r.current_type]}")
    if r.form.get("immediate_danger"):
        doc.para("IMMEDIATE DANGER was reported.", strong=True)
    if pattern is not None and pattern.triggered:
        doc.para(f"PATTERN: {pattern.headline()}", strong=True).para(pattern.cumulative())
    doc.fields(*status_rows(r, now))
    doc.heading("Referral").fields(*form_rows(r.form))
    others = [g for g in group if g.id != r.id]
    if others:
        doc.heading("Other records about this child").bullets(
            *(
                f"{g.ref} · {LABEL[g.current_type]} · {format_time(g.received_at)} · "
                f"{g.agency or ''} · {g.outcome or g.state}"
                for g in others
            )
        )
    meetings_section(doc, [(m, await tx.items(m.id)) for m in await tx.meetings_of(r.id)])
    files = await tx.attachments_of(r.id)
    if files:
        doc.heading(f"Files ({len(files)}; !attachments {r.ref} to receive them)").bullets(
            *attachment_lines(files)
        )
    entries = await tx.record_of(r.id)
    doc.heading("Running record").bullets(*(entry_text(e) for e in entries))
    if pattern is not None and pattern.triggered:
        await tx.append_record(
            r.id, settings.bot_user_id, Kind.PATTERN_SHOWN, {"headline": pattern.headline()}
        )
    return doc


async def queue(c: Call) -> None:
    now = c.tx.now
    items = await c.tx.open_referrals()
    if not items:
        await c.say(Doc().para("The queue is empty: no open referrals."))
        return
    lines = []
    for r in items:
        who = r.claimed_by or "UNCLAIMED"
        danger = "IMMEDIATE DANGER · " if r.immediate_danger else ""
        rag = f"{r.rag.upper()} · " if r.rag else ""
        lines.append(
            f"{r.ref} · {danger}{rag}{LABEL[r.current_type]} · age {age_of(r, now)} · {who} · "
            f"{time_left(r.decision_due, now)}"
        )
    await c.say(Doc().heading(f"Open referrals, oldest first ({len(items)})").bullets(*lines))


async def status(c: Call) -> None:
    """A referrer's view of their own referral; the team may look at any."""
    r = await c.referral(c.args.split()[0] if c.args.split() else None)
    if r.sender != c.msg.sender and not c.settings.is_team(c.msg.sender):
        raise Refusal(f"You can only see referrals you made. {r.ref} is not one of them.")
    await c.say(
        Doc().heading(f"{r.ref}: {LABEL[r.current_type]}").fields(*status_rows(r, c.tx.now))
    )


async def chronology(c: Call) -> None:
    r = await c.referral(c.args.split()[0] if c.args.split() else None)
    await c.tx.append_record(r.id, c.msg.sender, Kind.CHRONOLOGY_EXPORTED, {"to": "chat"})
    await c.say(Doc().pre(await chronology_markdown(c.tx, r, c.settings)), referral_id=r.id)


async def chronology_markdown(tx: Tx, r: Referral, settings: Settings) -> str:
    group = await tx.referrals_of_child(r)
    pattern = find_pattern(group, tx.now, settings.pattern)
    lines = [f"# {r.ref}: {LABEL[r.current_type]}", ""]
    lines += [f"- **{k}**: {v}" for k, v in status_rows(r, tx.now)]
    if pattern is not None and pattern.triggered:
        lines += ["", f"**Pattern:** {pattern.headline()}; {pattern.cumulative()}"]
    lines += ["", "## Referral", ""]
    lines += [f"- **{k}**: {v}" for k, v in form_rows(r.form)]
    others = [g for g in group if g.id != r.id]
    if others:
        lines += ["", "## Other records about this child", ""]
        lines += [
            f"- {g.ref}, {LABEL[g.current_type]}, {format_time(g.received_at)}, "
            f"{g.agency or ''}, {g.outcome or g.state}"
            for g in others
        ]
    files = await tx.attachments_of(r.id)
    if files:
        lines += ["", f"## Files ({len(files)})", ""]
        lines += [f"- {line}" for line in attachment_lines(files)]
    lines += ["", "## Chronology", ""]
    lines += [f"- {entry_text(e)}" for e in await tx.record_of(r.id)]
    return "\n".join(lines) + "\n"


async def chronology_json(tx: Tx, r: Referral) -> str:
    data = {
        "ref": r.ref,
        "declared_type": r.declared_type,
        "declared_by": r.declared_by,
        "current_type": r.current_type,
        "received_at": r.received_at.isoformat(),
        "channel": r.channel,
        "state": r.state,
        "rag": r.rag,
        "decision_due": r.decision_due.isoformat(),
        "outcome": r.outcome,
        "decided_by": r.decided_by,
        "form": r.form,
        "linked": [g.ref for g in await tx.referrals_of_child(r) if g.id != r.id],
        "attachments": [
            {
                "id": f.id,
                "name": f.name,
                "caption": f.caption,
                "type": f.kind,
                "mimetype": f.mimetype,
                "size": f.size,
                "sha256": f.sha256,
                "added_at": f.added_at.isoformat(),
                "added_by": f.sender,
            }
            for f in await tx.attachments_of(r.id)
        ],
        "record": [
            {"at": e.at.isoformat(), "actor": e.actor, "kind": e.kind, "detail": e.detail}
            for e in await tx.record_of(r.id)
        ],
    }
    return json.dumps(data, indent=2, ensure_ascii=False)
