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

This module checks the fields against the rules of the form and builds the `ReferralForm`.
The fields table, the reading of each field's words and the template are in
`form_fields.py`; recognising labelled lines and cutting a message into fields in
`form_lines.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from pydantic import ValidationError

from handlers.form_fields import (
    CONCERN_SPLIT_RE,
    CONCERN_SYNONYMS,
    EXACTLY_ONE_AGE,
    FIELD_BY_KEY,
    FIELD_LABELS,
    MESSAGE_FIELD,
    REFERRAL_TYPE_CHOICE,
    REFERRAL_TYPES,
    FieldProblem,
    age_on,
    format_date,
    normalise_word,
    parse_age,
    parse_bool,
    parse_date,
)
from handlers.form_lines import clean_line_breaks, quote, split_fields
from schemas.referral import (
    MAX_APPROXIMATE_AGE,
    ConcernCategory,
    ReferralForm,
    clean_text,
    phone_problem,
)

# Longer messages are refused without being read; the longest valid form is far shorter.
MAX_MESSAGE_CHARS = 100_000
# How long ago an unborn baby's due date may be (the baby may just have been born).
DUE_DATE_PAST_DAYS = 30
# A due date further ahead than this is a typing mistake (a pregnancy lasts ~9 months).
DUE_DATE_FUTURE_DAYS = 310


@dataclass(frozen=True)
class ParsedReferral:
    form: ReferralForm | None
    problems: tuple[FieldProblem, ...]  # empty iff form is not None


# ---------------------------------------------------------------------------- checking


class _Reader:
    """Collects field values and problems for one message."""

    def __init__(self, today: date) -> None:
        self.today = today
        self.problems: list[FieldProblem] = []
        self.values: dict[str, str] = {}  # key -> cleaned text of fields given once
        self.data: dict[str, Any] = {}  # key -> converted value, ready for ReferralForm

    def problem(self, field: str, problem: str) -> None:
        self.problems.append(FieldProblem(field, problem))

    # -- splitting the message into fields

    def split(self, body: str) -> None:
        """Cut the message into fields (`form_lines.split_fields`)."""
        self.values, problems = split_fields(body)
        self.problems.extend(problems)

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
                f"must be on one line, but the next line {quote(second)} was read as part "
                f"of it (after {quote(first)}). If that line is a field of its own, check "
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
        answer = parse_bool(value)
        if answer is None:
            self.problem(
                FIELD_BY_KEY[key].label, f"{quote(value)} is not an answer; write yes or no"
            )
            return None
        self.data[key] = answer
        return answer

    def store_date(self, key: str) -> date | None:
        value = self.text(key)
        if value is None:
            return None
        parsed = parse_date(value)
        if parsed is None:
            self.problem(FIELD_BY_KEY[key].label, f"{quote(value)} is not a date; use dd/mm/yyyy")
        return parsed

    def child_age(self) -> None:
        keys = ("child.date_of_birth", "child.approximate_age", "child.unborn_due_date")
        given = [key for key in keys if self.values.get(key)]
        if not given and not any(key in self.values for key in keys):
            self.problem("Date of birth", f"missing: {EXACTLY_ONE_AGE}")
            return
        if len(given) > 1:
            names = " and ".join(FIELD_BY_KEY[key].label for key in given)
            self.problem(
                FIELD_BY_KEY[given[0]].label,
                f"{EXACTLY_ONE_AGE}, not more than one (you gave {names})",
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
                    f"{format_date(born)} is in the future; a date of birth must be today "
                    "or earlier (for an unborn baby, give Unborn due date instead)",
                )
            elif age_on(born, self.today) > MAX_APPROXIMATE_AGE:
                self.problem(
                    "Date of birth",
                    f"{format_date(born)} means the person is "
                    f"{age_on(born, self.today)}; referrals are for children under 18",
                )
            else:
                found["child.date_of_birth"] = born

    def _approximate_age(self, found: dict[str, date | int]) -> None:
        """Whole years, 0 to 17."""
        age_text = self.text("child.approximate_age")
        if age_text is not None:
            age = parse_age(age_text)
            if age is None or age > MAX_APPROXIMATE_AGE:
                self.problem(
                    "Approximate age",
                    f"{quote(age_text)} is not an age from 0 to {MAX_APPROXIMATE_AGE}; "
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
                    f"{format_date(due)} is more than {DUE_DATE_PAST_DAYS} days ago; a due "
                    f"date must be in the future or within the last {DUE_DATE_PAST_DAYS} days "
                    "(if the baby has been born, give Date of birth instead)",
                )
            elif due > self.today + timedelta(days=DUE_DATE_FUTURE_DAYS):
                self.problem(
                    "Unborn due date",
                    f"{format_date(due)} is more than 10 months away; check the date (dd/mm/yyyy)",
                )
            else:
                found["child.unborn_due_date"] = due

    def referral_type(self) -> None:
        key = "referral_type"
        if not self.values.get(key):
            if key not in self.values:
                self.problem("Referral type", f"missing: {REFERRAL_TYPE_CHOICE}")
            return
        value = self.text(key)
        if value is None:
            return
        chosen = REFERRAL_TYPES.get(normalise_word(value))
        if chosen is None:
            self.problem(
                "Referral type",
                f"{quote(value)} is not clear: {REFERRAL_TYPE_CHOICE}",
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
        for item in CONCERN_SPLIT_RE.split(value):
            word = normalise_word(item)
            if not word:
                continue
            category = CONCERN_SYNONYMS.get(word)
            if category is None:
                unknown.append(item.strip())
            elif category not in found:
                found.append(category)
        choices = ", ".join(c.value for c in ConcernCategory)
        if unknown:
            names = ", ".join(quote(item, 30) for item in unknown[:5])
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
                self.problem("Phone", f"{quote(phone)} is not a phone number; {problem}")

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


def parse_values(values: dict[str, str], today: date) -> ParsedReferral:
    """The same checks as `parse_referral`, for answers already split by field key
    (`FieldSpec.key`), as the guided conversation collects them. Never raises.

    One rule set: a guided referral is validated by exactly the code that validates the
    typed form, so the two can never disagree.
    """
    try:
        reader = _Reader(today)
        reader.values = {
            key: clean_text(clean_line_breaks(value))
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
