"""The one place that turns what the bot says into a plain body and HTML.

Messages are built as a small document of typed blocks. Every piece of text is escaped
when rendered, so text a user typed can never inject markup, and `@room` in user text is
broken up so it cannot ping a whole room.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

_ROOM_PING = re.compile(r"@room\b", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Make user text safe to send: valid UTF-8, no control characters, no room pings."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = _CONTROL.sub("", text)
    return _ROOM_PING.sub("@\u2060room", text)


@dataclass(frozen=True)
class Heading:
    text: str


@dataclass(frozen=True)
class Para:
    text: str
    strong: bool = False


@dataclass(frozen=True)
class Fields:
    rows: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Pre:
    text: str


Block = Heading | Para | Fields | Bullets | Pre


@dataclass
class Doc:
    blocks: list[Block] = field(default_factory=list)

    def heading(self, text: str) -> Doc:
        self.blocks.append(Heading(text))
        return self

    def para(self, text: str, *, strong: bool = False) -> Doc:
        self.blocks.append(Para(text, strong))
        return self

    def fields(self, *rows: tuple[str, str]) -> Doc:
        self.blocks.append(Fields(tuple(rows)))
        return self

    def bullets(self, *items: str) -> Doc:
        self.blocks.append(Bullets(tuple(items)))
        return self

    def pre(self, text: str) -> Doc:
        self.blocks.append(Pre(text))
        return self

    def render(self) -> tuple[str, str]:
        """Return (plain body, HTML)."""
        plain: list[str] = []
        out: list[str] = []
        for block in self.blocks:
            match block:
                case Heading(text):
                    t = clean_text(text)
                    plain.append(t)
                    out.append(f"<h4>{_e(t)}</h4>")
                case Para(text, strong):
                    t = clean_text(text)
                    plain.append(t)
                    out.append(f"<p><strong>{_e(t)}</strong></p>" if strong else f"<p>{_e(t)}</p>")
                case Fields(rows):
                    cells = [(clean_text(k), clean_text(v)) for k, v in rows]
                    plain.extend(f"{k}: {v}" for k, v in cells)
                    out.append(
                        "<ul>"
                        + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in cells)
                        + "</ul>"
                    )
                case Bullets(items):
                    cleaned = [clean_text(i) for i in items]
                    plain.extend(f"- {i}" for i in cleaned)
                    out.append("<ul>" + "".join(f"<li>{_e(i)}</li>" for i in cleaned) + "</ul>")
                case Pre(text):
                    t = clean_text(text)
                    plain.append(t)
                    out.append(f"<pre><code>{_e(t)}</code></pre>")
        return "\n".join(plain), "".join(out)


def _e(text: str) -> str:
    return html.escape(text, quote=True).replace("\n", "<br/>")
