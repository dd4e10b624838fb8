"""The labelled lines of a typed referral (`handlers/referral_form.py`): which field a line
starts ("Child name: Sam", matched without regard to case, spaces, apostrophes or the kind
of colon), and the cutting of a message into fields, where a line without a known label
carries on the field before it. Also the few labelled lines of one guided answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from handlers.form_fields import (
    COMMAND,
    FIELD_BY_KEY,
    FIELDS,
    MESSAGE_FIELD,
    FieldProblem,
    FieldSpec,
)
from schemas.referral import clean_text

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


def quote(value: str, limit: int = 40) -> str:
    first = value.split("\n", 1)[0].strip()
    if len(first) > limit or "\n" in value:
        first = first[:limit].rstrip() + "…"
    return f"'{first}'"


# ---------------------------------------------------------------------------- splitting


@dataclass
class _Occurrence:
    line_number: int
    lines: list[str]

    def value(self) -> str:
        return clean_text("\n".join(line.rstrip() for line in self.lines))


def split_fields(body: str) -> tuple[dict[str, str], list[FieldProblem]]:
    """Cut a message into fields: each labelled line starts one, and every line after it
    until the next label continues it. The cleaned text of each field ("" for a field
    given twice, which is a problem), and the problems found."""
    problems: list[FieldProblem] = []
    lines = _LINE_BREAKS_RE.sub("\n", body).split("\n")
    occurrences = _collect(_body_lines(lines, problems), problems)
    return _settle_repeats(occurrences, problems), problems


def _body_lines(lines: list[str], problems: list[FieldProblem]) -> list[tuple[int, str]]:
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
    problems.append(
        FieldProblem(
            MESSAGE_FIELD,
            f"must start with {COMMAND} on its own first line, followed by the fields",
        )
    )
    return numbered[index:]


def _collect(
    body_lines: list[tuple[int, str]], problems: list[FieldProblem]
) -> dict[str, list[_Occurrence]]:
    occurrences: dict[str, list[_Occurrence]] = {}
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
            occurrences.setdefault(spec.key, []).append(current)
        elif current is not None:
            current.lines.append(line)
        elif line.strip():
            stray.append((number, line))
    if stray:
        number, line = stray[0]
        more = f" (and {len(stray) - 1} more lines)" if len(stray) > 1 else ""
        problems.append(
            FieldProblem(
                MESSAGE_FIELD,
                f"line {number}, {quote(line)}{more}, is not a field: every line before the "
                "first field must start with a field name and a colon, such as 'Child name:'",
            )
        )
    return occurrences


def _settle_repeats(
    occurrences: dict[str, list[_Occurrence]], problems: list[FieldProblem]
) -> dict[str, str]:
    """A field given twice (with values) is a problem, not a silent choice."""
    values: dict[str, str] = {}
    for key, found_here in occurrences.items():
        given = [occurrence for occurrence in found_here if occurrence.value()]
        if len(given) > 1:
            numbers = ", ".join(str(occurrence.line_number) for occurrence in given[:5])
            if len(given) > 5:
                numbers += ", …"
            times = "twice" if len(given) == 2 else f"{len(given):,} times"
            problems.append(
                FieldProblem(
                    FIELD_BY_KEY[key].label,
                    f"given {times} (lines {numbers}); give it only once. If a line of free "
                    "text starts with this word and a colon, reword it so it does not look "
                    "like a field",
                )
            )
            values[key] = ""
        elif given:
            values[key] = given[0].value()
    return values


def clean_line_breaks(value: str) -> str:
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
            return {}, f"{quote(line)} does not start with one of {names}"
    return {k: clean_text("\n".join(v)) for k, v in found.items()}, None
