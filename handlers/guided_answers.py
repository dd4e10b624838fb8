"""Reading the answers of a guided referral (`handlers/guided.py`).

An answer, typed or tapped, becomes field values in the typed form's words, checked by the
typed form's own rules (`referral_form.parse_values`) against the answers so far: one rule
set for both ways of referring. Also which question a reply such as "change 5" names.
"""

from __future__ import annotations

import re
from datetime import date

from handlers.form_fields import FIELD_BY_KEY
from handlers.form_lines import read_labelled
from handlers.guided_questions import IDENTITY_KEYS, QUESTIONS, Choice, Question
from handlers.guided_state import State, applicable_answers, reviewable
from handlers.referral_form import parse_values
from handlers.settings import Settings

_NUMBERS = re.compile(r"^\s*\d{1,2}(\s*[,;]\s*\d{1,2}|\s+and\s+\d{1,2}|\s+\d{1,2})*\s*$")
_DATE_LIKE = re.compile(r"^\d{1,2}\s*[/.\-]\s*\d{1,2}\s*[/.\-]\s*\d{1,4}$")


def choices_for(question: Question, settings: Settings) -> tuple[Choice, ...]:
    if question.key == "referrer.agency":
        return tuple(
            Choice(key, agency.name or key, key, (agency.name.casefold(),) if agency.name else ())
            for key, agency in list(settings.agencies.items())[:19]
        )
    return question.choices


def pick(
    choices: tuple[Choice, ...], word: str, from_poll: tuple[str, ...] | None
) -> Choice | None:
    if from_poll is not None:
        return next((c for c in choices if c.id in from_poll), None)
    if word.isdigit() and 1 <= int(word) <= len(choices):
        return choices[int(word) - 1]
    for c in choices:
        if word in (c.id, c.value.casefold(), c.text.casefold(), *c.words):
            return c
    return None


def interpret(
    question: Question, text: str, state: State, settings: Settings, today: date
) -> tuple[dict[str, str], str | None]:
    """The field values an answer gives, or a one-line reason it cannot be taken.

    Checked with the typed form's rules against the other answers so far; only problems
    with this question's own fields count (the rest are simply not answered yet)."""
    text = text.strip()
    if not text:
        return {}, "please answer the question" + (" (or skip)" if question.optional else "")
    if question.key == "use_saved":
        choice = pick(question.choices, " ".join(text.casefold().split()), None)
        if choice is None:
            return {}, "answer yes to use these details, or change"
        return {"use": choice.id}, None
    choices = choices_for(question, settings)
    values: dict[str, str]
    if question.key == "child.age":
        lowered = text.casefold()
        if lowered.startswith(("due", "edd", "unborn")):
            values = {"child.unborn_due_date": re.sub(r"^\W*(due|edd|unborn)\W*", "", lowered)}
        elif _DATE_LIKE.match(text.replace(" ", "")):
            values = {"child.date_of_birth": text.replace(" ", "")}
        else:
            values = {"child.approximate_age": text}
    elif question.key == "identity":
        found, problem = read_labelled(text, IDENTITY_KEYS)
        if problem is not None:
            return {}, problem + "; or send skip"
        values = found
    elif choices:
        word = " ".join(text.casefold().split()).strip(".!")
        if _NUMBERS.match(word):
            numbers = [int(n) for n in re.findall(r"\d+", word)]
            if question.multi and numbers and numbers[-1] == len(choices) + 1:
                numbers = numbers[:-1]  # "that's all" typed as its number
            if not numbers or any(not 1 <= n <= len(choices) for n in numbers):
                return {}, f"choose a number from 1 to {len(choices)}"
            if len(numbers) > 1 and not question.multi:
                return {}, "choose only one"
            values = {question.fields[0]: ", ".join(choices[n - 1].value for n in numbers)}
        else:
            picked = pick(choices, word, None)
            values = {question.fields[0]: picked.value if picked else text}
    else:
        values = {question.fields[0]: text}
    trial = {k: v for k, v in applicable_answers(state).items() if k not in question.fields}
    trial.update(values)
    parsed = parse_values(trial, today)
    labels = {FIELD_BY_KEY[k].label for k in question.fields}
    if question.key == "child.age":
        labels |= {"Date of birth", "Approximate age", "Unborn due date"}
    mine = [p for p in parsed.problems if p.field in labels]
    if mine:
        return {}, mine[0].problem[:1].upper() + mine[0].problem[1:]
    return values, None


def find_question(state: State, word: str) -> Question | None:
    word = word.strip().casefold()
    listed = reviewable(state)
    if word.isdigit() and 1 <= int(word) <= len(listed):
        return listed[int(word) - 1]
    for q in listed:
        if word in (q.title.casefold(), q.key.casefold()):
            return q
    for q in listed:
        if word and word in q.title.casefold():
            return q
    return None


def question_of_label(label: str) -> Question | None:
    for q in QUESTIONS:
        if any(FIELD_BY_KEY[k].label == label for k in q.fields):
            return q
    return None
