"""The questions of a guided referral, in the order a safeguarding professional thinks.

Each question fills one or more fields of the typed form (`handlers/referral_form.py`,
by `FieldSpec.key`) with text in the typed form's own words, so the answers are checked
by exactly the rules the typed form is checked by (`parse_values`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from schemas.referral import ConcernCategory


@dataclass(frozen=True)
class Choice:
    id: str  # the poll answer's ID: stable, so a tap can be matched after a restart
    text: str  # what the poll and the numbered fallback show
    value: str  # the answer in the typed form's words
    words: tuple[str, ...] = ()  # other words accepted when typed


@dataclass(frozen=True)
class Context:
    """What decides whether a question is asked."""

    answers: dict[str, str]
    phone: bool  # an advice worker taking a telephone referral: the caller's details
    saved: bool  # the referrer has details kept from a previous referral


@dataclass(frozen=True)
class Question:
    key: str  # the step's name (for one-field questions, the field's key)
    title: str  # short name in the review and in "change"
    ask: str  # the question
    expect: str  # what is expected, with an example
    fields: tuple[str, ...]
    optional: bool = False
    choices: tuple[Choice, ...] = ()
    multi: bool = False  # several choices allowed (a poll with a "that's all" answer)
    when: Callable[[Context], bool] | None = None
    ask_caller: str | None = None  # the wording for a worker taking a call

    def applies(self, ctx: Context) -> bool:
        return self.when is None or self.when(ctx)


YES = Choice("yes", "Yes", "yes", ("y", "yes it is", "yes they are"))
NO = Choice("no", "No", "no", ("n", "not"))
DONE_ID = "done"
IDENTITY_KEYS = (
    "identity.ethnicity",
    "identity.religion",
    "identity.first_language",
    "identity.disability",
)
REFERRER_KEYS = ("referrer.name", "referrer.role", "referrer.agency", "referrer.phone")
AGE_KEYS = ("child.date_of_birth", "child.approximate_age", "child.unborn_due_date")


_CONCERN_SPLIT = re.compile(r"[,;\n+&]|\band\b", re.IGNORECASE)  # as the typed form splits


def _has_other(ctx: Context) -> bool:
    concerns = ctx.answers.get("concerns", "").casefold()
    return "other" in {part.strip(" .") for part in _CONCERN_SPLIT.split(concerns)}


def _parents_not_informed(ctx: Context) -> bool:
    return ctx.answers.get("parents_informed", "").strip().casefold() in ("no", "n", "false")


QUESTIONS: tuple[Question, ...] = (
    Question(
        "immediate_danger",
        "Immediate danger",
        "First: is the child in immediate danger right now?",
        "Answer yes or no. If yes, phone 999 now, then carry on here.",
        ("immediate_danger",),
        choices=(
            Choice("yes", "Yes: in danger right now", "yes", YES.words),
            Choice("no", "No", "no", NO.words),
        ),
    ),
    Question(
        "child.full_name",
        "Child's name",
        "What is the child's full name?",
        "Write it as you know it, e.g. Sam Taylor.",
        ("child.full_name",),
    ),
    Question(
        "child.age",
        "Date of birth or age",
        "What is the child's date of birth?",
        "Write it as dd/mm/yyyy, e.g. 14/03/2015. If you do not know it, write an "
        "approximate age, e.g. about 7. For an unborn baby write the due date, e.g. "
        "due 20/06/2027.",
        AGE_KEYS,
    ),
    Question(
        "child.address",
        "Address",
        "Where does the child live?",
        "The full address, or at least the postcode, e.g. 1 Sample Street, AB1 2CD.",
        ("child.address",),
    ),
    Question(
        "child.school",
        "School",
        "Which school, college or nursery does the child attend?",
        "The name, e.g. Example Academy.",
        ("child.school",),
        optional=True,
    ),
    Question(
        "child.gp",
        "GP",
        "Who is the child's GP?",
        "The GP practice, e.g. Riverside Surgery.",
        ("child.gp",),
        optional=True,
    ),
    Question(
        "concerns",
        "Concerns",
        "What are you worried about? Choose all that apply.",
        "Tap every one that applies and then 'That's all', or send the numbers or words "
        "separated by commas, e.g. 2, 4 or neglect, emotional abuse.",
        ("concerns",),
        choices=tuple(
            Choice(c.name.lower(), c.value[:1].upper() + c.value[1:], c.value)
            for c in ConcernCategory
        ),
        multi=True,
    ),
    Question(
        "concern_other",
        "Other concern",
        "You chose 'other': what is the concern?",
        "Describe it in a sentence, e.g. Frequently left alone overnight.",
        ("concern_other",),
        when=_has_other,
    ),
    Question(
        "description",
        "What happened",
        "What happened?",
        "What you saw or were told, when, who was involved and what was said, in your own "
        "words; one message, as long as you need, e.g. Arrived with a bruise on her cheek; "
        'said "mum hit me".',
        ("description",),
    ),
    Question(
        "child_views",
        "Child's views",
        "What does the child say, or want?",
        "The child's own words where you can, e.g. \"I don't want to go home.\" If you could "
        "not ask, say why.",
        ("child_views",),
    ),
    Question(
        "actions_taken",
        "Action taken",
        "What have you done already?",
        "E.g. Told the designated safeguarding lead; the child is with the school nurse.",
        ("actions_taken",),
        ask_caller=None,
    ),
    Question(
        "parents_informed",
        "Parents informed",
        "Have the parents or carers been told about this referral?",
        "Answer yes or no.",
        ("parents_informed",),
        choices=(YES, NO),
    ),
    Question(
        "parents_not_informed_reason",
        "Why parents not told",
        "Why have the parents or carers not been told?",
        "E.g. Telling them could put the child at greater risk.",
        ("parents_not_informed_reason",),
        when=_parents_not_informed,
    ),
    Question(
        "identity",
        "Identity and needs",
        "Identity and needs (optional): ethnicity, religion, first language, disability.",
        "Any you know, one per line, e.g.\nEthnicity: White British\nFirst language: "
        "English\nReligion: none\nDisability: autism (EHCP)\nor skip.",
        IDENTITY_KEYS,
        optional=True,
    ),
    Question(
        "referral_type",
        "Referral type",
        "Is this a CHILD PROTECTION REFERRAL or a CONTACT? There is no default: you choose.",
        "1 = child protection referral, 2 = contact.",
        ("referral_type",),
        choices=(
            Choice(
                "child_protection",
                "Child protection referral: you believe the child is suffering, or is likely "
                "to suffer, significant harm",
                "child protection referral",
                ("cp", "child protection", "cp referral", "child protection referral"),
            ),
            Choice(
                "contact",
                "Contact: information, advice or a concern below that",
                "contact",
                ("contact",),
            ),
        ),
    ),
    Question(
        "use_saved",
        "Your details",
        "Use your details from last time?",
        "Answer yes to use them, or change to type them again.",
        (),
        choices=(
            Choice("yes", "Yes, use these", "yes", ("y", "use", "use these", "ok")),
            Choice("change", "Change them", "change", ("no", "n", "new")),
        ),
        when=lambda ctx: ctx.saved and not ctx.phone,
    ),
    Question(
        "referrer.name",
        "Your name",
        "Your full name?",
        "E.g. Pat Nurse.",
        ("referrer.name",),
        ask_caller="The caller's full name?",
    ),
    Question(
        "referrer.role",
        "Your role",
        "Your job title?",
        "E.g. School nurse.",
        ("referrer.role",),
        ask_caller="The caller's job title?",
    ),
    Question(
        "referrer.agency",
        "Your agency",
        "Which organisation do you work for?",
        "Tap one or send its number, or write the name, e.g. Example Academy.",
        ("referrer.agency",),
        ask_caller="Which organisation does the caller work for?",
    ),
    Question(
        "referrer.phone",
        "Your phone",
        "A phone number social care can call you on?",
        "6 to 20 digits, e.g. 01632 960 001.",
        ("referrer.phone",),
        ask_caller="A phone number social care can call the caller on?",
    ),
)

BY_KEY: dict[str, Question] = {q.key: q for q in QUESTIONS}

REVIEW_CHOICES = (
    Choice("send", "Send it", "send", ("yes", "y", "send it", "ok")),
    Choice("change", "Change an answer", "change", ("edit", "change a field")),
    Choice("cancel", "Cancel: delete it", "cancel", ("delete",)),
)
MENU_CHOICES = (
    Choice("refer", "Make a referral", "refer", ("referral", "make a referral", "refer")),
    Choice("status", "Check on a referral", "status", ("check", "status", "check on a referral")),
    Choice("help", "Help", "help", ("help", "?")),
)
