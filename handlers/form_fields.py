"""The fields of the typed referral form (`handlers/referral_form.py`): what each is called,
whether it is needed, how long it may be, the help shown for it, and how the words in a
field are read (dates, ages, yes/no, the referral type, the concern categories). The blank
template is printed from the same table, so it always lists what the parser accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from schemas.referral import (
    ACTIONS_TAKEN_MAX,
    ADDRESS_MAX,
    CHILD_NAME_MAX,
    CHILD_VIEWS_MAX,
    CONCERN_OTHER_MAX,
    DESCRIPTION_MAX,
    DISABILITY_MAX,
    IDENTITY_TEXT_MAX,
    PARENTS_NOT_INFORMED_REASON_MAX,
    PHONE_MAX,
    REFERRER_TEXT_MAX,
    SCHOOL_MAX,
    ConcernCategory,
    ReferralType,
)

COMMAND = "!refer"
# The `field` of a problem that is about the message as a whole, not one field.
MESSAGE_FIELD = "Message"


@dataclass(frozen=True)
class FieldSpec:
    """One field of the chat form."""

    key: str  # where it goes in ReferralForm, dotted: "child.full_name"
    label: str  # what the user types before the colon: "Child name"
    required: bool  # always required (conditionally required fields say so in `need`)
    need: str  # for the template: "required", "optional", "required if ..."
    help: str  # what to write, in plain English
    max_length: int
    multiline: bool = False
    aliases: tuple[str, ...] = ()


EXACTLY_ONE_AGE = "give exactly one of Date of birth, Approximate age or Unborn due date"

FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "child.full_name",
        "Child name",
        True,
        "required",
        "the child's full name",
        CHILD_NAME_MAX,
        aliases=("Child's name", "Name of child", "Child full name", "Child's full name"),
    ),
    FieldSpec(
        "child.date_of_birth",
        "Date of birth",
        False,
        "one of three",
        "dd/mm/yyyy, e.g. 31/01/2015",
        100,
        aliases=("DOB", "D.O.B", "D.O.B.", "Child's date of birth"),
    ),
    FieldSpec(
        "child.approximate_age",
        "Approximate age",
        False,
        "one of three",
        "age in whole years, 0 to 17, when the date of birth is not known",
        100,
        aliases=("Age", "Approx age", "Approx. age", "Child's age"),
    ),
    FieldSpec(
        "child.unborn_due_date",
        "Unborn due date",
        False,
        "one of three",
        "the due date of an unborn baby, dd/mm/yyyy",
        100,
        aliases=("Due date", "Expected due date", "EDD"),
    ),
    FieldSpec(
        "child.address",
        "Address",
        True,
        "required",
        "where the child lives: full address, or at least the postcode",
        ADDRESS_MAX,
        multiline=True,
        aliases=("Postcode", "Address or postcode", "Child's address"),
    ),
    FieldSpec(
        "child.school",
        "School",
        False,
        "optional",
        "school, college or nursery",
        SCHOOL_MAX,
        aliases=("School or nursery", "Nursery"),
    ),
    FieldSpec(
        "child.gp",
        "GP",
        False,
        "optional",
        "the child's GP practice, if known",
        SCHOOL_MAX,
        aliases=("GP practice", "Child's GP", "Doctor"),
    ),
    FieldSpec(
        "referral_type",
        "Referral type",
        True,
        "required",
        "exactly one of: child protection referral, contact",
        100,
        aliases=("Type of referral",),
    ),
    FieldSpec(
        "concerns",
        "Concerns",
        True,
        "required",
        "one or more, separated by commas: " + ", ".join(c.value for c in ConcernCategory),
        1_000,
        multiline=True,
        aliases=("Concern", "Categories of concern", "Category of concern", "Concern type"),
    ),
    FieldSpec(
        "concern_other",
        "Other concern",
        False,
        "required if Concerns includes 'other'",
        "describe the concern that is not in the list",
        CONCERN_OTHER_MAX,
        multiline=True,
        aliases=("Other concerns", "Concern other", "If other"),
    ),
    FieldSpec(
        "description",
        "Description",
        True,
        "required",
        "what happened, when, who was involved and what was said; may run over several lines",
        DESCRIPTION_MAX,
        multiline=True,
        aliases=("Description of concern", "Details of concern"),
    ),
    FieldSpec(
        "immediate_danger",
        "Immediate danger",
        True,
        "required",
        "is the child in immediate danger: yes or no (if yes, call 999 first)",
        100,
        aliases=("In immediate danger", "Child in immediate danger"),
    ),
    FieldSpec(
        "actions_taken",
        "Action taken",
        True,
        "required",
        "what you have done already, e.g. told your safeguarding lead",
        ACTIONS_TAKEN_MAX,
        multiline=True,
        aliases=("Actions taken", "Action taken so far", "Actions taken so far"),
    ),
    FieldSpec(
        "parents_informed",
        "Parents informed",
        True,
        "required",
        "have the parents or carers been told about this referral: yes or no",
        100,
        aliases=("Parents aware", "Parents/carers informed", "Parents or carers informed"),
    ),
    FieldSpec(
        "parents_not_informed_reason",
        "Reason parents not informed",
        False,
        "required if Parents informed is no",
        "why the parents or carers have not been told",
        PARENTS_NOT_INFORMED_REASON_MAX,
        multiline=True,
        aliases=("Why parents not informed", "Reason not informed", "Parents not informed reason"),
    ),
    FieldSpec(
        "child_views",
        "Child's views",
        True,
        "required",
        "the child's own views and words, or why they could not be obtained",
        CHILD_VIEWS_MAX,
        multiline=True,
        aliases=("Child views", "Views of the child", "Child's voice", "Voice of the child"),
    ),
    FieldSpec(
        "identity.ethnicity",
        "Ethnicity",
        False,
        "optional",
        "the child's ethnicity, as the child or family describe it",
        IDENTITY_TEXT_MAX,
    ),
    FieldSpec(
        "identity.religion",
        "Religion",
        False,
        "optional",
        "the child's religion",
        IDENTITY_TEXT_MAX,
    ),
    FieldSpec(
        "identity.first_language",
        "First language",
        False,
        "optional",
        "the child's first language, and whether an interpreter is needed",
        IDENTITY_TEXT_MAX,
        aliases=("Language", "Main language"),
    ),
    FieldSpec(
        "identity.disability",
        "Disability",
        False,
        "optional",
        "any disability or special educational needs",
        DISABILITY_MAX,
        multiline=True,
        aliases=("Disabilities", "Disability or SEN", "SEND"),
    ),
    FieldSpec(
        "referrer.name",
        "Referrer name",
        True,
        "required",
        "your full name",
        REFERRER_TEXT_MAX,
        aliases=("Your name", "Referrer's name"),
    ),
    FieldSpec(
        "referrer.role",
        "Referrer role",
        True,
        "required",
        "your job title",
        REFERRER_TEXT_MAX,
        aliases=("Your role", "Referrer's role", "Job title"),
    ),
    FieldSpec(
        "referrer.agency",
        "Agency",
        True,
        "required",
        "the organisation you work for",
        REFERRER_TEXT_MAX,
        aliases=("Your agency", "Organisation", "Organization", "Referrer agency"),
    ),
    FieldSpec(
        "referrer.phone",
        "Phone",
        True,
        "required",
        "a number social care can call you on",
        PHONE_MAX,
        aliases=("Phone number", "Telephone", "Tel", "Your phone", "Referrer phone"),
    ),
)

FIELD_LABELS: tuple[str, ...] = tuple(spec.label for spec in FIELDS)
FIELD_BY_KEY: dict[str, FieldSpec] = {spec.key: spec for spec in FIELDS}


@dataclass(frozen=True)
class FieldProblem:
    field: str  # the label as the user types it, e.g. "Date of birth"
    problem: str  # what is wrong and what is expected


# ---------------------------------------------------------------------------- values

_DATE_RE = re.compile(r"^([0-9]{1,2})([/.\-])([0-9]{1,2})\2([0-9]{4})$")
_AGE_RE = re.compile(
    r"^(?:about|around|approx\.?|approximately|roughly|circa|c\.|~)?\s*"
    r"([0-9]{1,3})\s*(years?|yrs?|y|months?|mths?|mos?)?(?:\s+old)?\.?$"
)
_YES = frozenset({"yes", "y", "true"})
_NO = frozenset({"no", "n", "false"})
REFERRAL_TYPES: dict[str, ReferralType] = {
    "child protection referral": ReferralType.CHILD_PROTECTION,
    "child protection": ReferralType.CHILD_PROTECTION,
    "cp referral": ReferralType.CHILD_PROTECTION,
    "contact": ReferralType.CONTACT,
}
REFERRAL_TYPE_CHOICE = (
    "choose exactly one of `child protection referral` or `contact`; "
    "there is no default and nothing is saved until you choose"
)


def normalise_word(text: str) -> str:
    text = text.replace("_", " ").replace("-", " ")
    return " ".join(text.casefold().split()).rstrip(".!").strip()


CONCERN_SYNONYMS: dict[str, ConcernCategory] = {
    normalise_word(name): category
    for category, names in {
        ConcernCategory.PHYSICAL_ABUSE: ["physical abuse", "physical"],
        ConcernCategory.EMOTIONAL_ABUSE: ["emotional abuse", "emotional"],
        ConcernCategory.SEXUAL_ABUSE: ["sexual abuse", "sexual", "csa", "child sexual abuse"],
        ConcernCategory.NEGLECT: ["neglect"],
        ConcernCategory.CHILD_SEXUAL_EXPLOITATION: ["child sexual exploitation", "cse"],
        ConcernCategory.CHILD_CRIMINAL_EXPLOITATION: [
            "child criminal exploitation",
            "cce",
            "criminal exploitation",
        ],
        ConcernCategory.MISSING_FROM_HOME: [
            "missing from home",
            "missing",
            "missing child",
            "mfh",
            "missing from care",
        ],
        ConcernCategory.SELF_HARM: ["self-harm", "self harm", "selfharm"],
        ConcernCategory.DOMESTIC_ABUSE: [
            "domestic abuse",
            "da",
            "dv",
            "domestic violence",
            "domestic",
        ],
        ConcernCategory.OTHER: ["other"],
    }.items()
    for name in names
}
CONCERN_SPLIT_RE = re.compile(r"[,;\n+&]|\band\b", re.IGNORECASE)


def parse_date(value: str) -> date | None:
    match = _DATE_RE.match(value.strip())
    if match is None:
        return None
    try:
        return date(int(match.group(4)), int(match.group(3)), int(match.group(1)))
    except ValueError:
        return None


def parse_bool(value: str) -> bool | None:
    word = normalise_word(value)
    if word in _YES:
        return True
    if word in _NO:
        return False
    return None


def parse_age(value: str) -> int | None:
    match = _AGE_RE.match(" ".join(value.casefold().split()))
    if match is None:
        return None
    number = int(match.group(1))
    unit = match.group(2) or ""
    return number // 12 if unit.startswith("m") else number


def age_on(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def format_date(d: date) -> str:
    return d.strftime("%d/%m/%Y") if d.year >= 1000 else f"{d.day:02}/{d.month:02}/{d.year}"


# ---------------------------------------------------------------------------- template

_SECTIONS: dict[str, str] = {
    "child.full_name": "The child",
    "referral_type": "The referral",
    "identity.ethnicity": "Identity and needs (optional, but helps social care respond well)",
    "referrer.name": "You, the referrer",
}


def referral_template() -> str:
    """The blank form to copy, fill in after each colon and send back.

    Lines starting with "# " explain the fields and are ignored by `parse_referral`.
    """
    lines = [
        COMMAND,
        "# Write each answer after the colon and send the whole message back.",
        "# Lines starting with # are ignored. Fields marked (optional) may be left empty.",
        "# If the child is in immediate danger, call 999 now, before anything else.",
    ]
    for spec in FIELDS:
        section = _SECTIONS.get(spec.key)
        if section is not None:
            lines += ["#", f"# == {section} =="]
        if spec.key == "child.date_of_birth":
            lines.append(f"# {EXACTLY_ONE_AGE[0].upper()}{EXACTLY_ONE_AGE[1:]}:")
        lines.append(f"# {spec.label} ({spec.need}): {spec.help}")
        lines.append(f"{spec.label}:")
    return "\n".join(lines) + "\n"
