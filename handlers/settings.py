"""The few configuration values the use cases need, as plain data."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.config import Config


@dataclass(frozen=True)
class Settings:
    bot_user_id: str
    advice_team_room: str
    decision_working_days: int = 1
    immediate_danger_minutes: int = 60
    max_message_bytes: int = 40_000

    @classmethod
    def from_config(cls, config: Config, advice_team_room: str) -> Settings:
        return cls(
            bot_user_id=config.bot.user_id,
            advice_team_room=advice_team_room,
            decision_working_days=config.intake.decision_working_days,
            immediate_danger_minutes=config.intake.immediate_danger_minutes,
            max_message_bytes=config.intake.max_message_bytes,
        )
