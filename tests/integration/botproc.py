"""The bot in a process of its own, for the tests that `kill -9` it or send it SIGHUP: the
one implementation is `bot/devprocess.py` (the benchmarks use it too); these names stay
here for the tests that import them from this module."""

from __future__ import annotations

from bot.devprocess import BotProcess, poll_until

__all__ = ["BotProcess", "poll_until"]
