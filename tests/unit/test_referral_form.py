from __future__ import annotations

import re
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from handlers.form_fields import (
    FIELD_BY_KEY,
    FIELD_LABELS,
    FIELDS,
    MESSAGE_FIELD,
    FieldProblem,
    referral_template,
)
from handlers.form_lines import _normalise_label
from handlers.referral_form import ParsedReferral, _translate, parse_referral
from schemas.referral import (
    ChildDetails,
    ConcernCategory,
    IdentityAndNeeds,
    ReferralForm,
    ReferralType,
    ReferrerDetails,
    clean_text,
)

TODAY = date(2026, 11, 27)

VALID: dict[str, str] = {
    "Child name": "Sam Smith",
    "Date of birth": "03/04/2015",
    "Address": "1 High Street, London E1 6AN",
    "School": "St Mary's Primary",
    "Referral type": "child protection referral",
    "Concerns": "neglect, emotional abuse",
    "Description": "Sam has arrived hungry every day this week.",
    "Immediate danger": "no",
    "Action taken": "Told the designated safeguarding lead.",
    "Parents informed": "yes",
    "Child's views": "Sam said he is hungry because there is no food at home.",
    "Referrer name": "Jo Bloggs",
    "Referrer role": "Class teacher",
    "Agency": "St Mary's Primary School",
    "Phone": "020 7946 0000",
}

# Text that must never reach the user: pydantic's own wording.
PYDANTIC_WORDING = re.compile(
    r"Input should|Value error|validation error|pydantic|Field required|type=", re.IGNORECASE
)


def message(changes: dict[str, str | None] | None = None) -> str:
    """A `!refer` message: VALID with `changes` applied (None removes a field)."""
    fields: dict[str, str | None] = {**VALID, **(changes or {})}
    lines = ["!refer"]
    lines += [f"{label}: {value}" for label, value in fields.items() if value is not None]
    return "\n".join(lines)


def parse(changes: dict[str, str | None] | None = None) -> ParsedReferral:
    return parse_referral(message(changes), TODAY)


def problems_by_field(parsed: ParsedReferral) -> dict[str, str]:
    assert parsed.form is None
    assert parsed.problems
    found: dict[str, str] = {}
    for problem in parsed.problems:
        assert not PYDANTIC_WORDING.search(problem.problem), problem
        found.setdefault(problem.field, problem.problem)
    return found


def only_problem(parsed: ParsedReferral) -> FieldProblem:
    assert parsed.form is None
    assert len(parsed.problems) == 1, parsed.problems
    assert not PYDANTIC_WORDING.search(parsed.problems[0].problem)
    return parsed.problems[0]


def valid_form(parsed: ParsedReferral) -> ReferralForm:
    assert parsed.problems == (), parsed.problems
    assert parsed.form is not None
    return parsed.form


# ------------------------------------------------------------------ good forms


def test_valid_form() -> None:
    form = valid_form(parse())
    assert form.child.full_name == "Sam Smith"
    assert form.child.date_of_birth == date(2015, 4, 3)
    assert form.child.approximate_age is None
    assert form.child.unborn_due_date is None
    assert form.child.address == "1 High Street, London E1 6AN"
    assert form.child.school == "St Mary's Primary"
    assert form.referral_type is ReferralType.CHILD_PROTECTION
    assert form.concerns == (ConcernCategory.NEGLECT, ConcernCategory.EMOTIONAL_ABUSE)
    assert form.concern_other is None
    assert form.immediate_danger is False
    assert form.actions_taken == "Told the designated safeguarding lead."
    assert form.parents_informed is True
    assert form.parents_not_informed_reason is None
    assert form.child_views.startswith("Sam said")
    assert form.identity == IdentityAndNeeds()
    assert form.referrer == ReferrerDetails(
        name="Jo Bloggs",
        role="Class teacher",
        agency="St Mary's Primary School",
        phone="020 7946 0000",
    )


def test_full_form_with_every_field() -> None:
    form = valid_form(
        parse(
            {
                "Date of birth": None,
                "Approximate age": "about 7 years",
                "Referral type": "Contact",
                "Concerns": "CSE; CCE & missing and DA, other, Self Harm",
                "Other concern": "online grooming",
                "Immediate danger": "Yes.",
                "Parents informed": "N",
                "Reason parents not informed": "telling them could put Sam at risk",
                "Ethnicity": "White British",
                "Religion": "None",
                "First language": "English",
                "Disability": "Autism; has an EHCP",
            }
        )
    )
    assert form.child.approximate_age == 7
    assert form.referral_type is ReferralType.CONTACT
    assert form.concerns == (
        ConcernCategory.CHILD_SEXUAL_EXPLOITATION,
        ConcernCategory.CHILD_CRIMINAL_EXPLOITATION,
        ConcernCategory.MISSING_FROM_HOME,
        ConcernCategory.DOMESTIC_ABUSE,
        ConcernCategory.OTHER,
        ConcernCategory.SELF_HARM,
    )
    assert form.concern_other == "online grooming"
    assert form.immediate_danger is True
    assert form.parents_informed is False
    assert form.parents_not_informed_reason == "telling them could put Sam at risk"
    assert form.identity == IdentityAndNeeds(
        ethnicity="White British",
        religion="None",
        first_language="English",
        disability="Autism; has an EHCP",
    )


def test_unborn_baby() -> None:
    form = valid_form(parse({"Date of birth": None, "Unborn due date": "14-02-2027"}))
    assert form.child.unborn_due_date == date(2027, 2, 14)
    # A baby may have arrived: up to 30 days in the past is accepted.
    form = valid_form(parse({"Date of birth": None, "Unborn due date": "28/10/2026"}))
    assert form.child.unborn_due_date == date(2026, 10, 28)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("3/4/2015", date(2015, 4, 3)),
        ("03/04/2015", date(2015, 4, 3)),
        ("03-04-2015", date(2015, 4, 3)),
        ("3-4-2015", date(2015, 4, 3)),
        ("29/02/2016", date(2016, 2, 29)),
        ("27/11/2026", TODAY),  # born today
        ("28/11/2008", date(2008, 11, 28)),  # 17, eighteen tomorrow
    ],
)
def test_date_of_birth_formats(typed: str, expected: date) -> None:
    assert valid_form(parse({"Date of birth": typed})).child.date_of_birth == expected


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("child protection referral", ReferralType.CHILD_PROTECTION),
        ("Child Protection Referral", ReferralType.CHILD_PROTECTION),
        ("CHILD PROTECTION", ReferralType.CHILD_PROTECTION),
        ("cp referral", ReferralType.CHILD_PROTECTION),
        ("  child   protection  referral. ", ReferralType.CHILD_PROTECTION),
        ("contact", ReferralType.CONTACT),
        ("CONTACT", ReferralType.CONTACT),
    ],
)
def test_referral_types_accepted(typed: str, expected: ReferralType) -> None:
    assert valid_form(parse({"Referral type": typed})).referral_type is expected


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("0", 0), ("7", 7), ("17", 17), ("about 12", 12), ("5 yrs", 5), ("9 months", 0), ("~3", 3)],
)
def test_approximate_age_accepted(typed: str, expected: int) -> None:
    form = valid_form(parse({"Date of birth": None, "Approximate age": typed}))
    assert form.child.approximate_age == expected


@pytest.mark.parametrize(
    "typed",
    ["yes", "Yes", "YES", "y", "true", "True", "yes."],
)
def test_yes_answers(typed: str) -> None:
    assert valid_form(parse({"Immediate danger": typed})).immediate_danger is True


@pytest.mark.parametrize("typed", ["no", "No", "n", "FALSE", "no!"])
def test_no_answers(typed: str) -> None:
    form = valid_form(parse({"Parents informed": typed, "Reason parents not informed": "risk"}))
    assert form.parents_informed is False


@pytest.mark.parametrize("typed", ["+44 20 7946 0000", "(020) 7946-0000", "07700900123", "123456"])
def test_phone_numbers_accepted(typed: str) -> None:
    assert valid_form(parse({"Phone": typed})).referrer.phone == typed


def test_labels_are_matched_loosely() -> None:
    body = "\n".join(
        [
            "!REFER",
            "CHILD   NAME : Sam Smith",
            "date OF birth:03/04/2015",
            "  address： 1 High Street",  # full-width colon, indented
            "Referral Type (required): contact",
            "concerns : neglect",
            "**Description:** Sam is hungry",
            "Immediate danger:no",
            "Actions taken: told the DSL",
            "Parents informed: yes",
            "Child’s views: hungry",  # curly apostrophe
            "Your name: Jo",
            "referrer ROLE: teacher",
            "Organisation: School",
            "Telephone: 020 7946 0000",
        ]
    )
    form = valid_form(parse_referral(body, TODAY))
    assert form.child.address == "1 High Street"
    assert form.description == "Sam is hungry"
    assert form.child_views == "hungry"
    assert form.referrer.agency == "School"


# ------------------------------------------------------------------ free text


def test_unicode_emoji_rtl_marks_and_colons_in_values() -> None:
    form = valid_form(
        parse(
            {
                "Child name": "Zoë O’Brien-Łukasiewicz 👧🏽",
                "Address": "Flat 2: 10 Rue de l'Église, 東京",
                "Description": 'Mum said: "not again" 😢 at 10:30; dad said: \u200fلا\u200f',
                "First language": "العربية \u200f(Arabic)",
                "Child's views": "She said: “I want to stay with nan” ❤️",
            }
        )
    )
    assert form.child.full_name == "Zoë O’Brien-Łukasiewicz 👧🏽"
    assert form.child.address == "Flat 2: 10 Rue de l'Église, 東京"
    assert form.description == 'Mum said: "not again" 😢 at 10:30; dad said: \u200fلا\u200f'
    assert form.identity.first_language == "العربية \u200f(Arabic)"
    assert form.child_views == "She said: “I want to stay with nan” ❤️"


def test_multi_line_description_with_colons_and_unknown_labels() -> None:
    body = message({"Description": None}) + (
        "\nDescription: Sam came in at 08:45.\n"
        'Mum said: "not again"\n'
        "\n"
        "Time: 10:00 — Sam said: it hurts\n"
        "   indented line kept\n"
    )
    form = valid_form(parse_referral(body, TODAY))
    assert form.description == (
        'Sam came in at 08:45.\nMum said: "not again"\n\nTime: 10:00 — Sam said: it hurts\n'
        "   indented line kept"
    )


def test_value_may_start_on_the_next_line() -> None:
    body = message({"Address": None, "Child's views": None}) + (
        "\nAddress:\n1 High Street\nLondon\nE1 6AN\nChild's views:\n\nSam wants to stay at home."
    )
    form = valid_form(parse_referral(body, TODAY))
    assert form.child.address == "1 High Street\nLondon\nE1 6AN"
    assert form.child_views == "Sam wants to stay at home."


def test_comment_lines_are_ignored() -> None:
    body = message({"Description": None}) + (
        "\n# a comment\nDescription: first\n# explanation in the middle\nsecond\n  #\n"
    )
    assert valid_form(parse_referral(body, TODAY)).description == "first\nsecond"


def test_control_characters_are_removed_and_surrogates_replaced() -> None:
    form = valid_form(
        parse(
            {
                "Child name": "Sam\x00 Smith\x07",
                "Description": "tab\there\x1b[31m red\x7f\r\nnext\rline \ud800 end",
            }
        )
    )
    assert form.child.full_name == "Sam Smith"
    assert form.description == "tab\there[31m red\nnext\nline \ufffd end"
    form.description.encode("utf-8")  # storable


def test_crlf_line_endings() -> None:
    assert valid_form(parse_referral(message().replace("\n", "\r\n"), TODAY)) == valid_form(parse())


def test_refer_may_share_its_line_with_the_first_field() -> None:
    body = message().replace("!refer\n", "!refer Child name: Sam Smith\n", 1)
    body = body.replace("\nChild name: Sam Smith", "", 1)
    assert valid_form(parse_referral(body, TODAY)).child.full_name == "Sam Smith"


# ------------------------------------------------------------------ referral type


def test_missing_referral_type_names_both_choices() -> None:
    problem = only_problem(parse({"Referral type": None}))
    assert problem.field == "Referral type"
    assert "child protection referral" in problem.problem
    assert "contact" in problem.problem
    assert "exactly one" in problem.problem


def test_empty_referral_type_is_missing() -> None:
    problem = only_problem(parse({"Referral type": "   "}))
    assert problem.field == "Referral type"
    assert "child protection referral" in problem.problem


@pytest.mark.parametrize(
    "typed",
    [
        "CP",
        "section 47",
        "s47",
        "referral",
        "child protection referral or contact",
        "contact / child protection",
        "both",
        "urgent",
        "contact?",
        "no",
    ],
)
def test_unclear_referral_type(typed: str) -> None:
    problem = only_problem(parse({"Referral type": typed}))
    assert problem.field == "Referral type"
    assert f"'{typed}'" in problem.problem
    assert "child protection referral" in problem.problem
    assert "`contact`" in problem.problem


def test_referral_type_has_no_default_in_the_schema() -> None:
    assert ReferralForm.model_fields["referral_type"].is_required()
    assert ReferralType.CHILD_PROTECTION.label == "CHILD PROTECTION REFERRAL"
    assert ReferralType.CONTACT.label == "CONTACT"


# ------------------------------------------------------------------ bad fields


@pytest.mark.parametrize(
    "label",
    [
        "Child name",
        "Address",
        "Concerns",
        "Description",
        "Immediate danger",
        "Action taken",
        "Parents informed",
        "Child's views",
        "Referrer name",
        "Referrer role",
        "Agency",
        "Phone",
    ],
)
def test_each_required_field_missing(label: str) -> None:
    problem = only_problem(parse({label: None}))
    assert problem.field == label
    assert problem.problem.startswith("missing")
    # Blank counts as missing, too.
    assert only_problem(parse({label: "  \t "})) == problem


@pytest.mark.parametrize("label", ["School", "Ethnicity", "Religion", "First language"])
def test_optional_fields_may_be_blank(label: str) -> None:
    valid_form(parse({label: ""}))


def test_all_problems_are_reported_at_once() -> None:
    found = problems_by_field(
        parse(
            {
                "Child name": None,
                "Date of birth": "31/02/2020",
                "Referral type": None,
                "Concerns": "neglect, wobbly",
                "Immediate danger": "maybe",
                "Parents informed": "no",
                "Phone": "call me",
                "Description": "x" * 20_001,
            }
        )
    )
    assert set(found) == {
        "Child name",
        "Date of birth",
        "Referral type",
        "Concerns",
        "Description",
        "Immediate danger",
        "Reason parents not informed",
        "Phone",
    }
    assert found["Date of birth"] == "'31/02/2020' is not a date; use dd/mm/yyyy"


def test_problems_are_in_form_order() -> None:
    parsed = parse({"Phone": None, "Child name": None, "Referral type": None})
    assert [p.field for p in parsed.problems] == ["Child name", "Referral type", "Phone"]


@pytest.mark.parametrize(
    "typed",
    ["31/02/2020", "2015-04-03", "3/4/15", "03/13/2015", "00/01/2015", "yesterday", "3 April 2015"],
)
def test_bad_date_of_birth(typed: str) -> None:
    problem = only_problem(parse({"Date of birth": typed}))
    assert problem == FieldProblem("Date of birth", f"'{typed}' is not a date; use dd/mm/yyyy")


def test_future_date_of_birth() -> None:
    problem = only_problem(parse({"Date of birth": "28/11/2026"}))
    assert problem.field == "Date of birth"
    assert "28/11/2026 is in the future" in problem.problem


def test_date_of_birth_of_an_adult() -> None:
    problem = only_problem(parse({"Date of birth": "27/11/2008"}))
    assert problem.field == "Date of birth"
    assert "under 18" in problem.problem


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("27/10/2026", "more than 30 days ago"),
        ("01/01/2020", "more than 30 days ago"),
        ("01/01/2028", "more than 10 months away"),
        ("30/02/2027", "is not a date"),
    ],
)
def test_bad_unborn_due_date(typed: str, expected: str) -> None:
    problem = only_problem(parse({"Date of birth": None, "Unborn due date": typed}))
    assert problem.field == "Unborn due date"
    assert expected in problem.problem


@pytest.mark.parametrize("typed", ["18", "seven", "-1", "5-6", "100"])
def test_bad_approximate_age(typed: str) -> None:
    problem = only_problem(parse({"Date of birth": None, "Approximate age": typed}))
    assert problem.field == "Approximate age"
    assert "0 to 17" in problem.problem


def test_no_date_of_birth_age_or_due_date() -> None:
    problem = only_problem(parse({"Date of birth": None}))
    assert problem.field == "Date of birth"
    assert "exactly one of Date of birth, Approximate age or Unborn due date" in problem.problem


def test_more_than_one_of_date_of_birth_age_and_due_date() -> None:
    problem = only_problem(parse({"Approximate age": "11"}))
    assert problem.field == "Date of birth"
    assert "Date of birth and Approximate age" in problem.problem


@pytest.mark.parametrize("typed", ["maybe", "not sure", "yes and no", "1"])
def test_bad_yes_no(typed: str) -> None:
    problem = only_problem(parse({"Immediate danger": typed}))
    assert problem.field == "Immediate danger"
    assert "yes or no" in problem.problem


def test_unknown_concern() -> None:
    problem = only_problem(parse({"Concerns": "neglect, bullying, FGM"}))
    assert problem.field == "Concerns"
    assert "'bullying', 'FGM' are not in the list" in problem.problem
    assert "child criminal exploitation" in problem.problem


def test_concerns_of_only_separators() -> None:
    problem = only_problem(parse({"Concerns": ", ,;"}))
    assert problem.field == "Concerns"
    assert problem.problem.startswith("missing")


def test_repeated_concern_is_listed_once() -> None:
    form = valid_form(parse({"Concerns": "CSE, child sexual exploitation, neglect, Neglect"}))
    assert form.concerns == (ConcernCategory.CHILD_SEXUAL_EXPLOITATION, ConcernCategory.NEGLECT)


def test_other_concern_without_description() -> None:
    problem = only_problem(parse({"Concerns": "neglect, other"}))
    assert problem.field == "Other concern"
    assert "'other'" in problem.problem


def test_other_concern_description_without_other() -> None:
    problem = only_problem(parse({"Other concern": "online grooming"}))
    assert problem.field == "Other concern"
    assert "only fill this in" in problem.problem


def test_parents_not_informed_without_reason() -> None:
    problem = only_problem(parse({"Parents informed": "no"}))
    assert problem.field == "Reason parents not informed"
    assert "not informed" in problem.problem


def test_reason_given_although_parents_informed() -> None:
    problem = only_problem(parse({"Reason parents not informed": "risk"}))
    assert problem.field == "Reason parents not informed"


@pytest.mark.parametrize(
    "typed", ["call me", "12345", "1" * 21, "020 7946 0000 ext 12", "+44 ٢٠ 7946 0000"]
)
def test_bad_phone(typed: str) -> None:
    problem = only_problem(parse({"Phone": typed}))
    assert problem.field == "Phone"
    assert "6 to 20 digits" in problem.problem


@pytest.mark.parametrize(
    ("label", "limit"),
    [
        ("Child name", 200),
        ("Address", 500),
        ("Description", 20_000),
        ("Child's views", 10_000),
        ("Referrer name", 200),
        ("Ethnicity", 200),
    ],
)
def test_too_long(label: str, limit: int) -> None:
    assert valid_form(parse({label: "a" * limit}))
    problem = only_problem(parse({label: "a" * (limit + 1)}))
    assert problem.field == label
    assert f"the most allowed is {limit:,}" in problem.problem


def test_same_field_twice() -> None:
    problem = only_problem(parse_referral(message() + "\nChild name: Sam Jones", TODAY))
    assert problem.field == "Child name"
    assert "given twice" in problem.problem


def test_same_field_twice_under_an_alias() -> None:
    problem = only_problem(parse_referral(message() + "\nDOB: 04/04/2015", TODAY))
    assert problem.field == "Date of birth"
    assert "given twice" in problem.problem


def test_a_blank_copy_of_a_field_is_not_a_duplicate() -> None:
    valid_form(parse_referral(message() + "\nChild name:\nSchool:  ", TODAY))


def test_misspelt_label_after_a_one_line_field() -> None:
    body = message({"Date of birth": None}).replace(
        "Child name: Sam Smith", "Child name: Sam Smith\nDate of brith: 03/04/2015"
    )
    found = problems_by_field(parse_referral(body, TODAY))
    assert "'Date of brith: 03/04/2015'" in found["Child name"]
    assert "Date of birth" in found


def test_text_before_the_first_field() -> None:
    body = message().replace("!refer\n", "!refer\nHello, please see below\n", 1)
    problem = only_problem(parse_referral(body, TODAY))
    assert problem.field == MESSAGE_FIELD
    assert "'Hello, please see below'" in problem.problem


def test_message_without_refer() -> None:
    problem = only_problem(parse_referral(message().replace("!refer\n", "", 1), TODAY))
    assert problem.field == MESSAGE_FIELD
    assert "!refer" in problem.problem


def test_refer_must_be_the_whole_command() -> None:
    parsed = parse_referral(message().replace("!refer", "!referral", 1), TODAY)
    assert parsed.form is None


@pytest.mark.parametrize("body", ["", "   ", "\n\n", "!refer", "!refer\n\n", "hello"])
def test_empty_messages(body: str) -> None:
    found = problems_by_field(parse_referral(body, TODAY))
    assert "Referral type" in found
    assert "Child name" in found


def test_huge_message_is_refused_without_reading() -> None:
    problem = only_problem(parse_referral(message({"Description": "x" * 200_000}), TODAY))
    assert problem.field == MESSAGE_FIELD
    assert "too long" in problem.problem


def test_64kb_values() -> None:
    # About 64 KB each: 16,384 four-byte emoji, and 65,536 NUL characters.
    parsed = parse({"Description": "😀" * 16_384 + "x" * 4_000, "Child name": "\x00" * 65_536})
    found = problems_by_field(parsed)
    assert "too long" in found["Description"]
    assert found["Child name"].startswith("missing")


def test_never_raises_on_non_text() -> None:
    parsed = parse_referral(None, TODAY)  # type: ignore[arg-type]
    assert parsed.form is None
    assert parsed.problems


# ------------------------------------------------------------------ template


def test_template_lists_every_field_once() -> None:
    template = referral_template()
    assert template.startswith("!refer\n")
    label_lines = [line for line in template.splitlines() if not line.startswith(("#", "!"))]
    assert label_lines == [f"{label}:" for label in FIELD_LABELS]
    for spec in FIELDS:
        explanation = f"# {spec.label} ({spec.need}): {spec.help}"
        assert explanation in template
    assert "(required)" in template
    assert "(optional)" in template


def test_blank_template_reports_missing_fields_only() -> None:
    found = problems_by_field(parse_referral(referral_template(), TODAY))
    assert MESSAGE_FIELD not in found
    assert set(found) == {spec.label for spec in FIELDS if spec.required} | {"Date of birth"}


def fill_template(values: dict[str, str]) -> str:
    lines = []
    for line in referral_template().splitlines():
        label = line[:-1] if line.endswith(":") and not line.startswith("#") else None
        lines.append(f"{line} {values[label]}" if label in values else line)
    return "\n".join(lines)


def test_template_round_trip() -> None:
    values = {
        **VALID,
        "Concerns": "neglect, other",
        "Other concern": "no heating at home",
        "Description": "Several lines:\nline two\nline three: with a colon",
        "Parents informed": "no",
        "Reason parents not informed": "dad may harm mum if told",
        "Religion": "Muslim",
    }
    form = valid_form(parse_referral(fill_template(values), TODAY))
    assert form.child.full_name == "Sam Smith"
    assert form.concern_other == "no heating at home"
    assert form.description == "Several lines:\nline two\nline three: with a colon"
    assert form.parents_not_informed_reason == "dad may harm mum if told"
    assert form.identity.religion == "Muslim"
    assert form.identity.ethnicity is None


def test_every_label_and_alias_is_unambiguous() -> None:
    seen: dict[str, str] = {}
    for spec in FIELDS:
        for name in (spec.label, *spec.aliases):
            key = _normalise_label(name)
            assert seen.setdefault(key, spec.key) == spec.key, name
    assert len(set(FIELD_LABELS)) == len(FIELDS)
    assert set(FIELD_BY_KEY) == {spec.key for spec in FIELDS}


# ------------------------------------------------------------------ schema


def test_schema_models_are_frozen_and_strict() -> None:
    form = valid_form(parse())
    with pytest.raises(ValidationError):
        form.__setattr__("description", "changed")
    data = form.model_dump()
    assert ReferralForm.model_validate(data) == form
    with pytest.raises(ValidationError):
        ReferralForm.model_validate({**data, "priority": "high"})


def test_schema_treats_blank_as_missing_and_strips() -> None:
    child = ChildDetails(full_name="  Sam ", approximate_age=3, address=" E1 6AN ", school="  ")
    assert child.full_name == "Sam"
    assert child.school is None
    with pytest.raises(ValidationError):
        ChildDetails(full_name="   ", approximate_age=3, address="E1 6AN")


def test_schema_cross_field_rules() -> None:
    data = valid_form(parse()).model_dump()
    for broken in (
        {**data, "referral_type": None},
        {**data, "concerns": []},
        {**data, "concerns": ["neglect", "neglect"]},
        {**data, "concerns": ["other"]},
        {**data, "parents_informed": False},
        {**data, "child": {**data["child"], "approximate_age": 4}},
        {**data, "child": {**data["child"], "approximate_age": 18, "date_of_birth": None}},
        {**data, "referrer": {**data["referrer"], "phone": "12345"}},
    ):
        with pytest.raises(ValidationError) as caught:
            ReferralForm.model_validate(broken)
        for error in caught.value.errors():
            problem = _translate(error)
            assert problem.field in (MESSAGE_FIELD, *FIELD_LABELS)
            assert not PYDANTIC_WORDING.search(problem.problem), problem


def test_translate_names_the_users_field() -> None:
    data = valid_form(parse()).model_dump()
    with pytest.raises(ValidationError) as caught:
        ReferralForm.model_validate({**data, "concerns": ["other"]})
    [error] = caught.value.errors()
    assert _translate(error).field == "Other concern"
    with pytest.raises(ValidationError) as caught:
        ReferralForm.model_validate({**data, "child": {**data["child"], "full_name": ""}})
    [error] = caught.value.errors()
    assert _translate(error) == FieldProblem("Child name", "missing: the child's full name")


def test_clean_text() -> None:
    assert clean_text(" a\x00b\r\nc\u2028\ud800 ") == "ab\nc\u2028\ufffd"
    assert clean_text("e\u0301") == "é"


# ------------------------------------------------------------------ never raises

_any_char = st.characters(exclude_categories=())
_any_text = st.text(_any_char, max_size=200)
_labels = st.sampled_from(
    [name for spec in FIELDS for name in (spec.label, *spec.aliases)]
    + ["Mum said", "Time", "Notes", "", " ", "!refer", "#", "# Child name"]
)
_nasty = st.sampled_from(
    [
        "\x00",
        "\ud800",
        "\udfff",
        "\u200f",
        "\u202e",
        "\r",
        "\n",
        "\x1b",
        "\ufeff",
        "😀",
        ":",
        "：",
        "\t",
    ]
)
_huge = st.builds(lambda ch, n: ch * n, _any_char, st.integers(min_value=1_000, max_value=70_000))
_values = st.one_of(
    _any_text,
    st.sampled_from([*VALID.values(), "other", "no", "yes", "31/02/2020", "01/01/2030"]),
    _huge,
)
_field_lines = st.builds(
    lambda label, colon, value: f"{label}{colon}{value}",
    _labels,
    st.sampled_from([":", ": ", " : ", "：", ""]),
    _values,
)


@st.composite
def _mutated_messages(draw: st.DrawFn) -> str:
    lines = message().split("\n")
    head, fields = lines[:1], lines[1:]
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    for _ in range(draw(st.integers(0, 4))):
        action = draw(st.sampled_from(["drop", "duplicate", "insert", "replace", "nasty"]))
        if not fields:
            break
        index = draw(st.integers(0, len(fields) - 1))
        if action == "drop":
            del fields[index]
        elif action == "duplicate":
            fields.insert(index, fields[index])
        elif action == "insert":
            fields.insert(index, draw(st.one_of(_field_lines, _any_text)))
        elif action == "replace":
            label = fields[index].split(":", 1)[0]
            fields[index] = f"{label}: {draw(_values)}"
        else:
            line = fields[index]
            at = draw(st.integers(0, len(line)))
            fields[index] = line[:at] + draw(_nasty) + line[at:]
    if draw(st.booleans()):
        head = [draw(st.sampled_from(["!refer", "!REFER ", "!refer x", "", "refer", "\ud800"]))]
    return "\n".join(head + fields)


_messages = st.one_of(
    _any_text,
    st.lists(st.one_of(_field_lines, _any_text), max_size=30).map(
        lambda lines: "\n".join(["!refer", *lines])
    ),
    _mutated_messages(),
)


@pytest.mark.slow
@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=_messages, today=st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 1, 1)))
def test_parse_referral_never_raises(body: str, today: date) -> None:
    parsed = parse_referral(body, today)
    assert isinstance(parsed, ParsedReferral)
    assert (parsed.form is None) == bool(parsed.problems)
    for problem in parsed.problems:
        assert problem.field in (MESSAGE_FIELD, *FIELD_LABELS)
        assert problem.problem
        # Problems may quote the sender's own text: only wording the sender did not type
        # can have come from pydantic.
        if not PYDANTIC_WORDING.search(body):
            assert not PYDANTIC_WORDING.search(problem.problem), problem
        assert "Traceback" not in problem.problem
    if parsed.form is not None:
        assert parsed.form.referral_type in (ReferralType.CHILD_PROTECTION, ReferralType.CONTACT)
        parsed.form.model_dump_json()  # storable: no lone surrogates


_printable = st.characters(exclude_categories=("Cc", "Zl", "Zp"), include_characters="\t")


@given(lines=st.lists(st.text(_printable, max_size=60), min_size=1, max_size=8))
def test_free_text_is_kept_as_typed(lines: list[str]) -> None:
    # Quoted lines can never be taken for a field label or a comment.
    typed = "\n".join(f"> {line}" for line in lines)
    parsed = parse({"Description": typed})
    expected = clean_text("\n".join(f"> {line}".rstrip() for line in lines))
    assert valid_form(parsed).description == expected


@given(name=st.text(_printable, max_size=220))
def test_any_one_line_name_is_kept_or_explained(name: str) -> None:
    parsed = parse({"Child name": name})
    cleaned = clean_text(name)
    if not cleaned:
        assert only_problem(parsed).problem.startswith("missing")
    elif len(cleaned) > 200:
        assert "too long" in only_problem(parsed).problem
    else:
        assert valid_form(parsed).child.full_name == cleaned
