"""The referral form a safeguarding practitioner sends to children's social care.

Every model is frozen and refuses unknown keys. Strings are cleaned (control characters and
lone surrogates removed, surrounding white space stripped) and an empty string counts as
missing, so a required field left blank is reported as missing, never stored as "".

There is deliberately no default for `ReferralForm.referral_type`: the practitioner must say
whether this is a child protection referral or a contact, and nothing is stored until they do.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError

# Longest value accepted for each text field, in characters.
CHILD_NAME_MAX = 200
ADDRESS_MAX = 500
SCHOOL_MAX = 200
CONCERN_OTHER_MAX = 1_000
DESCRIPTION_MAX = 20_000
ACTIONS_TAKEN_MAX = 10_000
PARENTS_NOT_INFORMED_REASON_MAX = 5_000
CHILD_VIEWS_MAX = 10_000
IDENTITY_TEXT_MAX = 200
DISABILITY_MAX = 2_000
REFERRER_TEXT_MAX = 200
PHONE_MAX = 40
PHONE_MIN_DIGITS = 6
PHONE_MAX_DIGITS = 20
MAX_APPROXIMATE_AGE = 17

_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_PHONE_RE = re.compile(r"^[0-9 +()\-]+$")


def clean_text(value: str) -> str:
    """Normalise free text typed in a chat client.

    Line breaks become "\\n"; control characters other than newline and tab are removed;
    lone surrogates (which cannot be stored as UTF-8) become U+FFFD; the text is put in
    Unicode NFC form and stripped. Letters, emoji and direction marks are kept.
    """
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    value = _CONTROL_RE.sub("", value)
    value = _SURROGATE_RE.sub("\ufffd", value)
    return unicodedata.normalize("NFC", value).strip()


def phone_problem(value: str) -> str | None:
    """Say what is wrong with a phone number, or None when it is acceptable."""
    digits = sum(ch in "0123456789" for ch in value)
    if (
        not _PHONE_RE.match(value)
        or not PHONE_MIN_DIGITS <= digits <= PHONE_MAX_DIGITS
        or len(value) > PHONE_MAX
    ):
        return (
            f"use {PHONE_MIN_DIGITS} to {PHONE_MAX_DIGITS} digits; spaces, +, brackets and - "
            "are allowed, e.g. 020 7946 0000"
        )
    return None


def _rule_error(field: str, message: str) -> PydanticCustomError:
    """A cross-field rule broken; `field` names the field that has to change."""
    return PydanticCustomError("referral_rule", message, {"field": field})


class ReferralType(StrEnum):
    """What the practitioner asks children's social care to treat this as. No default."""

    CHILD_PROTECTION = "child protection referral"
    CONTACT = "contact"

    @property
    def label(self) -> str:
        """The heading shown to social care, e.g. "CHILD PROTECTION REFERRAL"."""
        return self.value.upper()


class ConcernCategory(StrEnum):
    PHYSICAL_ABUSE = "physical abuse"
    EMOTIONAL_ABUSE = "emotional abuse"
    SEXUAL_ABUSE = "sexual abuse"
    NEGLECT = "neglect"
    CHILD_SEXUAL_EXPLOITATION = "child sexual exploitation"
    CHILD_CRIMINAL_EXPLOITATION = "child criminal exploitation"
    MISSING_FROM_HOME = "missing from home"
    SELF_HARM = "self-harm"
    DOMESTIC_ABUSE = "domestic abuse"
    OTHER = "other"


ChildName = Annotated[str, StringConstraints(min_length=1, max_length=CHILD_NAME_MAX)]
Address = Annotated[str, StringConstraints(min_length=1, max_length=ADDRESS_MAX)]
School = Annotated[str, StringConstraints(min_length=1, max_length=SCHOOL_MAX)]
ConcernOther = Annotated[str, StringConstraints(min_length=1, max_length=CONCERN_OTHER_MAX)]
Description = Annotated[str, StringConstraints(min_length=1, max_length=DESCRIPTION_MAX)]
ActionsTaken = Annotated[str, StringConstraints(min_length=1, max_length=ACTIONS_TAKEN_MAX)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=PARENTS_NOT_INFORMED_REASON_MAX)]
ChildViews = Annotated[str, StringConstraints(min_length=1, max_length=CHILD_VIEWS_MAX)]
IdentityText = Annotated[str, StringConstraints(min_length=1, max_length=IDENTITY_TEXT_MAX)]
Disability = Annotated[str, StringConstraints(min_length=1, max_length=DISABILITY_MAX)]
ReferrerText = Annotated[str, StringConstraints(min_length=1, max_length=REFERRER_TEXT_MAX)]
ApproximateAge = Annotated[int, Field(ge=0, le=MAX_APPROXIMATE_AGE)]


class _FormModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _clean_strings(cls, data: Any) -> Any:
        """Clean every string and drop empty ones, so that blank means missing."""
        if not isinstance(data, dict):
            return data
        cleaned: dict[Any, Any] = {}
        for key, value in data.items():
            if isinstance(value, str):
                value = clean_text(value)
                if not value:
                    continue
            cleaned[key] = value
        return cleaned


class ChildDetails(_FormModel):
    full_name: ChildName
    date_of_birth: date | None = None
    approximate_age: ApproximateAge | None = None
    unborn_due_date: date | None = None
    address: Address = Field(description="the child's address, or at least a postcode")
    school: School | None = None
    gp: School | None = Field(default=None, description="the child's GP practice")

    @model_validator(mode="after")
    def _exactly_one_age(self) -> ChildDetails:
        given = [
            self.date_of_birth is not None,
            self.approximate_age is not None,
            self.unborn_due_date is not None,
        ]
        if sum(given) != 1:
            raise _rule_error(
                "date_of_birth",
                "give exactly one of date of birth, approximate age or unborn due date",
            )
        return self


class ReferrerDetails(_FormModel):
    name: ReferrerText
    role: ReferrerText
    agency: ReferrerText
    phone: Annotated[str, StringConstraints(min_length=1, max_length=PHONE_MAX)]

    @model_validator(mode="after")
    def _phone(self) -> ReferrerDetails:
        problem = phone_problem(self.phone)
        if problem is not None:
            raise _rule_error("phone", problem)
        return self


class IdentityAndNeeds(_FormModel):
    ethnicity: IdentityText | None = None
    religion: IdentityText | None = None
    first_language: IdentityText | None = None
    disability: Disability | None = None


class ReferralForm(_FormModel):
    child: ChildDetails
    referral_type: ReferralType
    concerns: tuple[ConcernCategory, ...] = Field(min_length=1)
    concern_other: ConcernOther | None = None
    description: Description
    immediate_danger: bool
    actions_taken: ActionsTaken
    parents_informed: bool
    parents_not_informed_reason: Reason | None = None
    child_views: ChildViews = Field(
        description="the child's own views and words, or why they could not be obtained"
    )
    identity: IdentityAndNeeds = Field(default_factory=IdentityAndNeeds)
    referrer: ReferrerDetails

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ReferralForm:
        if len(set(self.concerns)) != len(self.concerns):
            raise _rule_error("concerns", "each concern may be listed only once")
        has_other = ConcernCategory.OTHER in self.concerns
        if has_other and self.concern_other is None:
            raise _rule_error("concern_other", "describe the concern when 'other' is chosen")
        if not has_other and self.concern_other is not None:
            raise _rule_error("concern_other", "only give this when 'other' is a concern")
        if not self.parents_informed and self.parents_not_informed_reason is None:
            raise _rule_error(
                "parents_not_informed_reason", "say why the parents have not been informed"
            )
        if self.parents_informed and self.parents_not_informed_reason is not None:
            raise _rule_error(
                "parents_not_informed_reason", "only give this when parents were not informed"
            )
        return self
