"""The README's quick start: `referral-bot demo` runs a referral end to end."""

from __future__ import annotations

import pytest

from bot.demo import run_demo

pytestmark = pytest.mark.integration


async def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_demo(keep=False) == 0
    out = capsys.readouterr().out
    assert "decrypted=True" in out
    assert "recorded as a CHILD PROTECTION REFERRAL" in out
    assert "picked up your referral" in out
    assert "Question 17 of 17" in out and "recorded as a CONTACT" in out  # the guided one
