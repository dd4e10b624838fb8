"""The report as a picture: a PNG drawn with Pillow, headless, in a few milliseconds.

Only figures from `ReportFigures` are drawn (counts, shares, fixed labels), so the picture
can carry nothing the text does not. Pillow rather than matplotlib: it imports in about
60 ms and 5 MB (matplotlib: most of a second and 30-40 MB), and these three plain bar
charts need none of matplotlib's machinery (README, "Reports").
"""

from __future__ import annotations

import io
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from schemas.reports import ReportFigures

WIDTH, HEIGHT = 1000, 760
BACKGROUND = (255, 255, 255)
INK = (33, 37, 41)
GRID = (222, 226, 230)
MUTED = (108, 117, 125)
CP_COLOUR = (176, 42, 55)
CONTACT_COLOUR = (31, 111, 178)
BAR_COLOUR = (64, 120, 96)
MAX_ROWS = 6  # outcomes or agencies shown; the rest are added up as "other"

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@cache
def _font(size: int) -> Font:
    # Pillow's own font (no system fonts needed, as in a slim container).
    return ImageFont.load_default(size=size)


def render_png(figures: ReportFigures, title: str) -> bytes:
    img = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((30, 18), title, font=_font(24), fill=INK)
    pct = figures.in_time_percent
    median = figures.median_hours_to_decision
    headline = (
        f"Received {figures.received}  ·  decided {figures.decided}, "
        f"{'-' if pct is None else f'{pct:.0f}%'} within deadline, median "
        f"{'-' if median is None else _hours(median)}  ·  open now {figures.open_now}, "
        f"overdue {figures.overdue_now}  ·  referred again within 12 months: "
        f"{figures.repeat_children} children"
    )
    draw.text((30, 54), headline, font=_font(14), fill=MUTED)
    _weeks(draw, figures, (30, 90, WIDTH - 30, 430))
    outcomes = _top(figures.outcomes)
    _hbars(draw, "Outcomes (decided in the period)", outcomes, (30, 470, WIDTH // 2 - 20, 730))
    agencies = _top(figures.agencies)
    _hbars(draw, "Referring agencies", agencies, (WIDTH // 2 + 20, 470, WIDTH - 30, 730))
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _hours(hours: float) -> str:
    return f"{hours:.1f} h" if hours < 48 else f"{hours / 24:.1f} days"


def _top(rows: tuple[tuple[str, int], ...]) -> list[tuple[str, int]]:
    if len(rows) <= MAX_ROWS:
        return list(rows)
    head = list(rows[: MAX_ROWS - 1])
    return [*head, ("others", sum(n for _, n in rows[MAX_ROWS - 1 :]))]


def _nice_max(value: int) -> int:
    """A round axis top at or above `value`, with five whole-number steps."""
    step = 1
    while True:
        for mult in (1, 2, 5):
            if 5 * step * mult >= value:
                return 5 * step * mult
        step *= 10


def _weeks(draw: ImageDraw.ImageDraw, f: ReportFigures, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    small = _font(12)
    draw.text((x0, y0), "Received per week (Monday to Sunday)", font=_font(16), fill=INK)
    # Legend.
    lx = x1 - 360
    for colour, label in ((CP_COLOUR, "child protection referrals"), (CONTACT_COLOUR, "contacts")):
        draw.rectangle((lx, y0 + 3, lx + 12, y0 + 15), fill=colour)
        draw.text((lx + 18, y0 + 1), label, font=small, fill=INK)
        lx += 200
    top, bottom, left = y0 + 34, y1 - 30, x0 + 40
    peak = max([max(w.child_protection, w.contacts) for w in f.weeks] + [1])
    axis = _nice_max(peak)
    for i in range(6):
        value = axis * i // 5
        y = bottom - (bottom - top) * i / 5
        draw.line((left, y, x1, y), fill=GRID)
        draw.text((left - 6, y), str(value), font=small, fill=MUTED, anchor="rm")
    n = max(len(f.weeks), 1)
    slot = (x1 - left) / n
    bar = max(2.0, min(40.0, slot * 0.35))
    for i, w in enumerate(f.weeks):
        cx = left + slot * (i + 0.5)
        for offset, value, colour in (
            (-bar, w.child_protection, CP_COLOUR),
            (0.0, w.contacts, CONTACT_COLOUR),
        ):
            h = (bottom - top) * value / axis
            if value:
                left_x = cx + offset
                draw.rectangle((left_x, bottom - h, left_x + bar - 1, bottom), fill=colour)
        if n <= 16 or i % ((n + 15) // 16) == 0:
            label = f"{w.week_start:%d %b}"
            draw.text((cx, bottom + 6), label, font=small, fill=MUTED, anchor="ma")
    draw.line((left, bottom, x1, bottom), fill=INK)


def _hbars(
    draw: ImageDraw.ImageDraw,
    heading: str,
    rows: list[tuple[str, int]],
    box: tuple[int, int, int, int],
) -> None:
    x0, y0, x1, y1 = box
    small = _font(12)
    draw.text((x0, y0), heading, font=_font(16), fill=INK)
    if not rows:
        draw.text((x0, y0 + 34), "none", font=small, fill=MUTED)
        return
    label_w = 170
    top = y0 + 30
    row_h = min(34, (y1 - top) // len(rows))
    peak = max(n for _, n in rows) or 1
    span = x1 - x0 - label_w - 50
    for i, (label, count) in enumerate(rows):
        y = top + i * row_h
        text = label if len(label) <= 26 else label[:23] + "..."
        draw.text((x0, y + row_h / 2), text, font=small, fill=INK, anchor="lm")
        w = span * count / peak
        bx = x0 + label_w
        draw.rectangle((bx, y + 4, bx + max(w, 1), y + row_h - 4), fill=BAR_COLOUR)
        draw.text((bx + w + 6, y + row_h / 2), str(count), font=small, fill=INK, anchor="lm")
