"""Referral messages for tests, built from the same field labels a practitioner types."""

from __future__ import annotations

BASE_FIELDS: dict[str, str] = {
    "Child name": "Alex Testchild",
    "Date of birth": "02/05/2014",
    "Address": "2 Example Road, ZZ1 1ZZ",
    "School": "Example Primary",
    "Referral type": "child protection referral",
    "Concerns": "neglect, physical abuse",
    "Description": 'Bruises on both arms; said: "dad was angry".',
    "Immediate danger": "no",
    "Action taken": "Informed the designated safeguarding lead.",
    "Parents informed": "yes",
    "Child's views": "Wants to stay with gran.",
    "Referrer name": "Sam Referrer",
    "Referrer role": "Health visitor",
    "Agency": "health",
    "Phone": "01632 960 123",
}


def referral(**changes: str | None) -> str:
    """A `!refer` message; keyword names use underscores for spaces (Child_name=...).

    A value of None leaves the field out.
    """
    fields = dict(BASE_FIELDS)
    for key, value in changes.items():
        label = key.replace("_", " ").replace("Childs", "Child's")
        if value is None:
            fields.pop(label, None)
        else:
            fields[label] = value
    return "!refer\n" + "\n".join(f"{k}: {v}" for k, v in fields.items())


# The same child as a guided referral (handlers/guided.py), question by question: (what
# the question says, the answer typed).
ANSWERS: list[tuple[str, str]] = [
    ("immediate danger", "no"),
    ("full name", "Alex Testchild"),
    ("date of birth", "02/05/2014"),
    ("Where does the child live", "2 Example Road, ZZ1 1ZZ"),
    ("school", "Example Primary"),
    ("GP", "skip"),
    ("worried about", "neglect, physical abuse"),
    ("What happened", 'Bruises on both arms; said: "dad was angry".'),
    ("child say", "Wants to stay with gran."),
    ("done already", "Informed the designated safeguarding lead."),
    ("parents or carers been told", "yes"),
    ("Identity and needs", "skip"),
    ("CHILD PROTECTION REFERRAL or a CONTACT", "child protection referral"),
    ("Your full name", "Sam Referrer"),
    ("job title", "Health visitor"),
    ("organisation", "health"),
    ("phone number", "01632 960 123"),
]
