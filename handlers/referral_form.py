"""Read the referral a practitioner types in chat into a `ReferralForm`.

The message looks like this::

    !refer
    Child name: Sam Smith
    Date of birth: 03/04/2015
    Description: Mum said: "not again"
    and this line carries on the description.

Rules:

* The first line is `!refer`. After it, each field starts on a new line with its label and a
  colon. Labels are matched without regard to case, extra spaces, apostrophes or the kind
  of colon (":" or "："); a few obvious alternatives are accepted (see `FieldSpec.aliases`).
* A line that does not start with a known label carries on the previous field, so free text
  may run over several lines and contain colons.
* Lines whose first character (after spaces) is "#" followed by a space are comments and
  are ignored; the blank template uses them to explain each field.
* Every problem is reported at once, in the user's own labels and in plain English. The
  parser never raises: on any input the worst case is a list of problems.

There is no default referral type: a message without a clear "child protection referral"
or "contact" is refused, so nothing can be stored without that choice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pydantic import ValidationError

from schemas.referral import (
    ACTIONS_TAKEN_MAX,
    ADDRESS_MAX,
    CHILD_NAME_MAX,
    CHILD_VIEWS_MAX,
    CONCERN_OTHER_MAX,
    DESCRIPTION_MAX,
    DISABILITY_MAX,
    IDENTITY_TEXT_MAX,
    MAX_APPROXIMATE_AGE,
    PARENTS_NOT_INFORMED_REASON_MAX,
    PHONE_MAX,
    REFERRER_TEXT_MAX,
    SCHOOL_MAX,
    ConcernCategory,
    ReferralForm,
    ReferralType,
    clean_text,
    phone_problem,
)

COMMAND = "!refer"
# The `field` of a problem that is about the message as a whole, not one field.
MESSAGE_FIELD = "Message"
# Longer messages are refused without being read; the longest valid form is far shorter.
MAX_MESSAGE_CHARS = 100_000
# How long ago an unborn baby's due date may be (the baby may just have been born).
DUE_DATE_PAST_DAYS = 30
# A due date further ahead than this is a typing mistake (a pregnancy lasts ~9 months).
DUE_DATE_FUTURE_DAYS = 310


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


_EXACTLY_ONE_AGE = "give exactly one of Date of birth, Approximate age or Unborn due date"

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

_SECTIONS: dict[str, str] = {
    "child.full_name": "The child",
    "referral_type": "The referral",
    "identity.ethnicity": "Identity and needs (optional, but helps social care respond well)",
    "referrer.name": "You, the referrer",
}


@dataclass(frozen=True)
class FieldProblem:
    field: str  # the label as the user types it, e.g. "Date of birth"
    problem: str  # what is wrong and what is expected


@dataclass(frozen=True)
class ParsedReferral:
    form: ReferralForm | None
    problems: tuple[FieldProblem, ...]  # empty iff form is not None


# ---------------------------------------------------------------------------- labels

_COLONS = ":\uff1a\ufe55"  # ":" and the full-width and small colons
_LABEL_LINE_RE = re.compile(rf"^\s*([^{_COLONS}\n]{{1,80}})[{_COLONS}](.*)$", re.DOTALL)
_COMMENT_RE = re.compile(r"^\s*#(?:\s|#|$)")
_PARENTHESES_RE = re.compile(r"\([^()]*\)")
_APOSTROPHES_RE = re.compile(r"['\u2018\u2019\u02bc`\u00b4]")
_LINE_BREAKS_RE = re.compile(r"\r\n|[\r\u2028\u2029\x85]")
_LINE_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


def _normalise_label(text: str) -> str:
    text = _PARENTHESES_RE.sub(" ", text)
    text = _APOSTROPHES_RE.sub("", text)
    text = text.strip().strip("*_").strip()
    if text[:2] in ("- ", "\u2022 ", "* "):
        text = text[2:]
    text = text.replace("_", " ").replace("-", " ").replace("/", " ")
    return " ".join(text.casefold().split())


_LABEL_LOOKUP: dict[str, FieldSpec] = {}
for _spec in FIELDS:
    for _name in (_spec.label, *_spec.aliases):
        _LABEL_LOOKUP[_normalise_label(_name)] = _spec
        _LABEL_LOOKUP[_normalise_label(_name.rstrip("."))] = _spec


def _match_label(line: str) -> tuple[FieldSpec, str] | None:
    """The field a line starts, with the rest of the line, or None for a continuation."""
    match = _LABEL_LINE_RE.match(line)
    if match is None:
        return None
    raw_label, rest = match.group(1), match.group(2)
    spec = _LABEL_LOOKUP.get(_normalise_label(raw_label))
    if spec is None:
        return None
    if raw_label.lstrip()[:1] in ("*", "_"):  # "**Child name:** Sam" in markdown
        rest = rest.lstrip("*_")
    return spec, rest


def form_fields_in(body: str) -> int:
    """How many lines of `body` start a referral form field ("Child name: ..."): a message
    with several is someone's referral, whatever its first line says."""
    return sum(1 for line in body.splitlines()[:200] if _match_label(line) is not None)


def _clean_line(line: str) -> str:
    line = _LINE_CONTROL_RE.sub("", line)
    return _SURROGATE_RE.sub("\ufffd", line)


def _quote(value: str, limit: int = 40) -> str:
    first = value.split("\n", 1)[0].strip()
    if len(first) > limit or "\n" in value:
        first = first[:limit].rstrip() + "…"
    return f"'{first}'"


# ---------------------------------------------------------------------------- values

_DATE_RE = re.compile(r"^([0-9]{1,2})([/.\-])([0-9]{1,2})\2([0-9]{4})$")
_AGE_RE = re.compile(
    r"^(?:about|around|approx\.?|approximately|roughly|circa|c\.|~)?\s*"
    r"([0-9]{1,3})\s*(years?|yrs?|y|months?|mths?|mos?)?(?:\s+old)?\.?$"
)
_YES = frozenset({"yes", "y", "true"})
_NO = frozenset({"no", "n", "false"})
_REFERRAL_TYPES: dict[str, ReferralType] = {
    "child protection referral": ReferralType.CHILD_PROTECTION,
    "child protection": ReferralType.CHILD_PROTECTION,
    "cp referral": ReferralType.CHILD_PROTECTION,
    "contact": ReferralType.CONTACT,
}
_REFERRAL_TYPE_CHOICE = (
    "choose exactly one of `child protection referral` or `contact`; "
    "there is no default and nothing is saved until you choose"
)


def _normalise_word(text: str) -> str:
    text = text.replace("_", " ").replace("-", " ")
    return " ".join(text.casefold().split()).rstrip(".!").strip()


_CONCERN_SYNONYMS: dict[str, ConcernCategory] = {
    _normalise_word(name): category
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
_CONCERN_SPLIT_RE = re.compile(r"[,;\n+&]|\band\b", re.IGNORECASE)


def _parse_date(value: str) -> date | None:
    match = _DATE_RE.match(value.strip())
    if match is None:
        return None
    try:
        return date(int(match.group(4)), int(match.group(3)), int(match.group(1)))
    except ValueError:
        return None


def _parse_bool(value: str) -> bool | None:
    word = _normalise_word(value)
    if word in _YES:
        return True
    if word in _NO:
        return False
    return None


def _parse_age(value: str) -> int | None:
    match = _AGE_RE.match(" ".join(value.casefold().split()))
    if match is None:
        return None
    number = int(match.group(1))
    unit = match.group(2) or ""
    return number // 12 if unit.startswith("m") else number


def _age_on(born: date, today: date) -> int:
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _format_date(d: date) -> str:
    return d.strftime("%d/%m/%Y") if d.year >= 1000 else f"{d.day:02}/{d.month:02}/{d.year}"


# ---------------------------------------------------------------------------- parsing


@dataclass
class _Occurrence:
    line_number: int
    lines: list[str]

    def value(self) -> str:
        return clean_text("\n".join(line.rstrip() for line in self.lines))


class _Reader:
    """Collects field values and problems for one message."""

    def __init__(self, today: date) -> None:
        self.today = today
        self.problems: list[FieldProblem] = []
        self.occurrences: dict[str, list[_Occurrence]] = {}
        self.values: dict[str, str] = {}  # key -> cleaned text of fields given once
        self.data: dict[str, Any] = {}  # key -> converted value, ready for ReferralForm

    def problem(self, field: str, problem: str) -> None:
        self.problems.append(FieldProblem(field, problem))

    # -- splitting the message into fields

    def split(self, body: str) -> None:
        """Cut the message into fields: each labelled line starts one, and every line
        after it until the next label continues it."""
        lines = _LINE_BREAKS_RE.sub("\n", body).split("\n")
        self._collect(self._body_lines(lines))
        self._settle_repeats()

    def _body_lines(self, lines: list[str]) -> list[tuple[int, str]]:
        """The numbered lines after `!refer` (a problem if it is not the first line)."""
        index = 0
        while index < len(lines) and (
            not _clean_line(lines[index]).strip() or _COMMENT_RE.match(lines[index])
        ):
            index += 1
        first = _clean_line(lines[index]).strip() if index < len(lines) else ""
        numbered = [(n + 1, line) for n, line in enumerate(lines)]
        if first[: len(COMMAND)].casefold() == COMMAND and (
            len(first) == len(COMMAND) or first[len(COMMAND)].isspace()
        ):
            return [(index + 1, first[len(COMMAND) :]), *numbered[index + 1 :]]
        self.problem(
            MESSAGE_FIELD,
            f"must start with {COMMAND} on its own first line, followed by the fields",
        )
        return numbered[index:]

    def _collect(self, body_lines: list[tuple[int, str]]) -> None:
        current: _Occurrence | None = None
        stray: list[tuple[int, str]] = []
        for number, raw in body_lines:
            if _COMMENT_RE.match(raw):
                continue
            line = _clean_line(raw)
            found = _match_label(line)
            if found is not None:
                spec, rest = found
                current = _Occurrence(number, [rest])
                self.occurrences.setdefault(spec.key, []).append(current)
            elif current is not None:
                current.lines.append(line)
            elif line.strip():
                stray.append((number, line))
        if stray:
            number, line = stray[0]
            more = f" (and {len(stray) - 1} more lines)" if len(stray) > 1 else ""
            self.problem(
                MESSAGE_FIELD,
                f"line {number}, {_quote(line)}{more}, is not a field: every line before the "
                "first field must start with a field name and a colon, such as 'Child name:'",
            )

    def _settle_repeats(self) -> None:
        """A field given twice (with values) is a problem, not a silent choice."""
        for key, found_here in self.occurrences.items():
            given = [occurrence for occurrence in found_here if occurrence.value()]
            if len(given) > 1:
                numbers = ", ".join(str(occurrence.line_number) for occurrence in given[:5])
                if len(given) > 5:
                    numbers += ", …"
                times = "twice" if len(given) == 2 else f"{len(given):,} times"
                self.problem(
                    FIELD_BY_KEY[key].label,
                    f"given {times} (lines {numbers}); give it only once. If a line of free "
                    "text starts with this word and a colon, reword it so it does not look "
                    "like a field",
                )
                self.values[key] = ""
            elif given:
                self.values[key] = given[0].value()

    # -- checking each field

    def text(self, key: str) -> str | None:
        """The field's text, if given and acceptable; reports missing, too long, extra lines."""
        spec = FIELD_BY_KEY[key]
        if key not in self.values:
            if spec.required:
                self.problem(spec.label, f"missing: {spec.help}")
            return None
        value = self.values[key]
        if not value:  # given twice, already reported
            return None
        if len(value) > spec.max_length:
            self.problem(
                spec.label,
                f"too long ({len(value):,} characters); the most allowed is {spec.max_length:,}",
            )
            return None
        if not spec.multiline and "\n" in value:
            first, second = value.split("\n", 2)[:2]
            self.problem(
                spec.label,
                f"must be on one line, but the next line {_quote(second)} was read as part "
                f"of it (after {_quote(first)}). If that line is a field of its own, check "
                "the spelling of its name",
            )
            return None
        return value

    def store_text(self, key: str) -> None:
        value = self.text(key)
        if value is not None:
            self.data[key] = value

    def store_bool(self, key: str) -> bool | None:
        value = self.text(key)
        if value is None:
            return None
        answer = _parse_bool(value)
        if answer is None:
            self.problem(
                FIELD_BY_KEY[key].label, f"{_quote(value)} is not an answer; write yes or no"
            )
            return None
        self.data[key] = answer
        return answer

    def store_date(self, key: str) -> date | None:
        value = self.text(key)
        if value is None:
            return None
        parsed = _parse_date(value)
        if parsed is None:
            self.problem(FIELD_BY_KEY[key].label, f"{_quote(value)} is not a date; use dd/mm/yyyy")
        return parsed

    def child_age(self) -> None:
        keys = ("child.date_of_birth", "child.approximate_age", "child.unborn_due_date")
        given = [key for key in keys if self.values.get(key)]
        if not given and not any(key in self.values for key in keys):
            self.problem("Date of birth", f"missing: {_EXACTLY_ONE_AGE}")
            return
        if len(given) > 1:
            names = " and ".join(FIELD_BY_KEY[key].label for key in given)
            self.problem(
                FIELD_BY_KEY[given[0]].label,
                f"{_EXACTLY_ONE_AGE}, not more than one (you gave {names})",
            )

        found: dict[str, date | int] = {}
        self._date_of_birth(found)
        self._approximate_age(found)
        self._unborn_due_date(found)
        if len(given) == 1:
            self.data.update(found)

    def _date_of_birth(self, found: dict[str, date | int]) -> None:
        """Today or earlier, and under 18."""
        born = self.store_date("child.date_of_birth")
        if born is not None:
            if born > self.today:
                self.problem(
                    "Date of birth",
                    f"{_format_date(born)} is in the future; a date of birth must be today "
                    "or earlier (for an unborn baby, give Unborn due date instead)",
                )
            elif _age_on(born, self.today) > MAX_APPROXIMATE_AGE:
                self.problem(
                    "Date of birth",
                    f"{_format_date(born)} means the person is "
                    f"{_age_on(born, self.today)}; referrals are for children under 18",
                )
            else:
                found["child.date_of_birth"] = born

    def _approximate_age(self, found: dict[str, date | int]) -> None:
        """Whole years, 0 to 17."""
        age_text = self.text("child.approximate_age")
        if age_text is not None:
            age = _parse_age(age_text)
            if age is None or age > MAX_APPROXIMATE_AGE:
                self.problem(
                    "Approximate age",
                    f"{_quote(age_text)} is not an age from 0 to {MAX_APPROXIMATE_AGE}; "
                    "write the age in whole years, e.g. 7",
                )
            else:
                found["child.approximate_age"] = age

    def _unborn_due_date(self, found: dict[str, date | int]) -> None:
        """Within the last few days or the next ten months."""
        due = self.store_date("child.unborn_due_date")
        if due is not None:
            if due < self.today - timedelta(days=DUE_DATE_PAST_DAYS):
                self.problem(
                    "Unborn due date",
                    f"{_format_date(due)} is more than {DUE_DATE_PAST_DAYS} days ago; a due "
                    f"date must be in the future or within the last {DUE_DATE_PAST_DAYS} days "
                    "(if the baby has been born, give Date of birth instead)",
                )
            elif due > self.today + timedelta(days=DUE_DATE_FUTURE_DAYS):
                self.problem(
                    "Unborn due date",
                    f"{_format_date(due)} is more than 10 months away; check the date (dd/mm/yyyy)",
                )
            else:
                found["child.unborn_due_date"] = due

    def referral_type(self) -> None:
        key = "referral_type"
        if not self.values.get(key):
            if key not in self.values:
                self.problem("Referral type", f"missing: {_REFERRAL_TYPE_CHOICE}")
            return
        value = self.text(key)
        if value is None:
            return
        chosen = _REFERRAL_TYPES.get(_normalise_word(value))
        if chosen is None:
            self.problem(
                "Referral type",
                f"{_quote(value)} is not clear: {_REFERRAL_TYPE_CHOICE}",
            )
        else:
            self.data[key] = chosen

    def concerns(self) -> set[ConcernCategory] | None:
        """Store the concerns; return the recognised ones (None if the field is unusable)."""
        value = self.text("concerns")
        if value is None:
            return None
        found: list[ConcernCategory] = []
        unknown: list[str] = []
        for item in _CONCERN_SPLIT_RE.split(value):
            word = _normalise_word(item)
            if not word:
                continue
            category = _CONCERN_SYNONYMS.get(word)
            if category is None:
                unknown.append(item.strip())
            elif category not in found:
                found.append(category)
        choices = ", ".join(c.value for c in ConcernCategory)
        if unknown:
            names = ", ".join(_quote(item, 30) for item in unknown[:5])
            self.problem(
                "Concerns",
                f"{names} {'is' if len(unknown) == 1 else 'are'} not in the list; choose one "
                f"or more, separated by commas, from: {choices}",
            )
        elif not found:
            self.problem("Concerns", f"missing: choose one or more from: {choices}")
        else:
            self.data["concerns"] = found
        return set(found)

    # -- the whole form

    def check(self) -> None:
        self.store_text("child.full_name")
        self.child_age()
        self.store_text("child.address")
        self.store_text("child.school")
        self.store_text("child.gp")
        self.referral_type()

        self._concerns_and_other()

        self.store_text("description")
        self.store_bool("immediate_danger")
        self.store_text("actions_taken")

        self._parents_informed()

        self.store_text("child_views")
        for key in ("ethnicity", "religion", "first_language", "disability"):
            self.store_text(f"identity.{key}")
        for key in ("name", "role", "agency"):
            self.store_text(f"referrer.{key}")
        self._referrer_phone()

    def _concerns_and_other(self) -> None:
        """'Other concern' is needed with 'other', and only then."""
        concerns = self.concerns()
        other = self.text("concern_other")
        if other is not None:
            self.data["concern_other"] = other
        if concerns is not None and ConcernCategory.OTHER in concerns:
            if other is None and "concern_other" not in self.values:
                self.problem(
                    "Other concern",
                    "missing: you chose 'other' in Concerns, so describe that concern here",
                )
        elif other is not None and "concerns" in self.data:
            self.problem(
                "Other concern",
                "only fill this in when 'other' is one of the Concerns; add 'other' to "
                "Concerns or leave this empty",
            )

    def _parents_informed(self) -> None:
        """A reason is needed when the parents were not informed, and only then."""
        informed = self.store_bool("parents_informed")
        reason = self.text("parents_not_informed_reason")
        if reason is not None:
            self.data["parents_not_informed_reason"] = reason
        if informed is False and "parents_not_informed_reason" not in self.values:
            self.problem(
                "Reason parents not informed",
                "missing: you said the parents were not informed, so say why not",
            )
        elif informed is True and reason is not None:
            self.problem(
                "Reason parents not informed",
                "only fill this in when Parents informed is no; change one of them",
            )

    def _referrer_phone(self) -> None:
        phone = self.text("referrer.phone")
        if phone is not None:
            problem = phone_problem(phone)
            if problem is None:
                self.data["referrer.phone"] = phone
            else:
                self.problem("Phone", f"{_quote(phone)} is not a phone number; {problem}")

    def build(self) -> ReferralForm | None:
        """Validate with the schema once the checks above found nothing wrong.

        The checks above cover every rule of the schema, so the schema is a safety net: if it
        still refuses the form, its errors are translated into the user's labels.
        """
        if self.problems:
            return None
        nested: dict[str, Any] = {}
        for key, value in self.data.items():
            *parents, name = key.split(".")
            target = nested
            for parent in parents:
                target = target.setdefault(parent, {})
            target[name] = value
        try:
            form = ReferralForm.model_validate(nested)
        except ValidationError as error:
            for item in error.errors(include_url=False):
                translated = _translate(item)
                if translated not in self.problems:
                    self.problems.append(translated)
            return None
        return form


def _translate(error: Any) -> FieldProblem:
    """A pydantic error as a problem in the user's labels, without pydantic's own wording."""
    loc = [part for part in error.get("loc", ()) if isinstance(part, str)]
    ctx = error.get("ctx") or {}
    kind = error.get("type", "")
    if kind == "referral_rule" and isinstance(ctx.get("field"), str):
        loc.append(ctx["field"])
    spec = FIELD_BY_KEY.get(".".join(loc))
    if spec is None:
        return FieldProblem(MESSAGE_FIELD, "could not be read as a referral; please check it")
    if kind in ("missing", "string_too_short"):
        return FieldProblem(spec.label, f"missing: {spec.help}")
    if kind == "string_too_long":
        return FieldProblem(spec.label, f"too long; the most allowed is {spec.max_length:,}")
    if kind == "referral_rule":
        return FieldProblem(spec.label, str(error.get("msg", "is not valid")))
    return FieldProblem(spec.label, f"not valid; expected {spec.help}")


def parse_referral(body: str, today: date) -> ParsedReferral:
    """Read a `!refer` message. Never raises; on any problem `form` is None."""
    try:
        if not isinstance(body, str):
            return _refused("could not be read as text")
        if len(body) > MAX_MESSAGE_CHARS:
            return _refused(
                f"too long ({len(body):,} characters); a referral may be at most "
                f"{MAX_MESSAGE_CHARS:,} characters"
            )
        reader = _Reader(today)
        reader.split(body)
        reader.check()
        form = reader.build()
        order = {label: index for index, label in enumerate((MESSAGE_FIELD, *FIELD_LABELS))}
        problems = sorted(reader.problems, key=lambda p: order.get(p.field, len(order)))
        if form is None and not problems:
            return _refused("could not be read as a referral; please check it")
        return ParsedReferral(form=None if problems else form, problems=tuple(problems))
    except Exception:  # the parser must never raise, whatever it is sent
        return _refused("could not be read as a referral; please check it and send it again")


def _refused(problem: str) -> ParsedReferral:
    return ParsedReferral(form=None, problems=(FieldProblem(MESSAGE_FIELD, problem),))


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
            lines.append(f"# {_EXACTLY_ONE_AGE[0].upper()}{_EXACTLY_ONE_AGE[1:]}:")
        lines.append(f"# {spec.label} ({spec.need}): {spec.help}")
        lines.append(f"{spec.label}:")
    return "\n".join(lines) + "\n"


def parse_values(values: dict[str, str], today: date) -> ParsedReferral:
    """The same checks as `parse_referral`, for answers already split by field key
    (`FieldSpec.key`), as the guided conversation collects them. Never raises.

    One rule set: a guided referral is validated by exactly the code that validates the
    typed form, so the two can never disagree.
    """
    try:
        reader = _Reader(today)
        reader.values = {
            key: clean_text(_clean_line_breaks(value))
            for key, value in values.items()
            if key in FIELD_BY_KEY and clean_text(value)
        }
        reader.check()
        form = reader.build()
        order = {label: index for index, label in enumerate((MESSAGE_FIELD, *FIELD_LABELS))}
        problems = sorted(reader.problems, key=lambda p: order.get(p.field, len(order)))
        if form is None and not problems:
            return _refused("could not be read as a referral; please check it")
        return ParsedReferral(form=None if problems else form, problems=tuple(problems))
    except Exception:  # never raises, whatever it is sent
        return _refused("could not be read as a referral; please check it")


def _clean_line_breaks(value: str) -> str:
    lines = _LINE_BREAKS_RE.sub("\n", value).split("\n")
    return "\n".join(_clean_line(line) for line in lines)


def read_labelled(text: str, keys: tuple[str, ...]) -> tuple[dict[str, str], str | None]:
    """Lines of `Label: value` for the fields `keys` only (labels and aliases as in the
    typed form); the values, or a problem in one line."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in _LINE_BREAKS_RE.sub("\n", text).split("\n"):
        line = _clean_line(raw)
        match = _match_label(line)
        if match is not None and match[0].key in keys:
            if match[0].key in found:
                return {}, f"{match[0].label} is given twice; give it once"
            current = found[match[0].key] = [match[1]]
        elif match is not None:
            return {}, f"{match[0].label} is not asked here"
        elif current is not None:
            current.append(line)
        elif line.strip():
            names = ", ".join(f"'{FIELD_BY_KEY[k].label}:'" for k in keys)
            return {}, f"{_quote(line)} does not start with one of {names}"
    return {k: clean_text("\n".join(v)) for k, v in found.items()}, None
