"""What the use cases need from the configuration, as plain data.

Roles are looked up here on every command. Every component that decides who may do
what (the pipeline, device trust, verification) reads `CurrentSettings.current` from the
one holder they share, so a reload that swaps it changes who may do what everywhere from
the next command on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.config import (
    AgencyConfig,
    AttachmentsConfig,
    Config,
    DeadlinesConfig,
    DisagreementConfig,
    MeetingsConfig,
    PatternConfig,
    ReportsConfig,
    on_allowed_server,
)


@dataclass(frozen=True)
class Settings:
    bot_user_id: str
    advice_team_room: str
    decision_working_days: int = 1
    immediate_danger_minutes: int = 60
    max_message_bytes: int = 40_000
    team_summary_batch_seconds: float = 0.0
    late_key_wait_seconds: float = 30.0
    draft_hours: float = 24.0
    team: frozenset[str] = frozenset()
    managers: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()
    agencies: dict[str, AgencyConfig] = field(default_factory=dict)
    deadlines: DeadlinesConfig = field(default_factory=DeadlinesConfig)
    pattern: PatternConfig = field(default_factory=PatternConfig)
    disagreement: DisagreementConfig = field(default_factory=DisagreementConfig)
    meetings: MeetingsConfig = field(
        default_factory=lambda: MeetingsConfig(required_agencies=[], must_account_for=[])
    )
    allowed_homeservers: frozenset[str] = frozenset({"example.org"})
    attachments: AttachmentsConfig = field(default_factory=AttachmentsConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)

    @classmethod
    def from_config(cls, config: Config, advice_team_room: str) -> Settings:
        return cls(
            bot_user_id=config.bot.user_id,
            advice_team_room=advice_team_room,
            decision_working_days=config.intake.decision_working_days,
            immediate_danger_minutes=config.intake.immediate_danger_minutes,
            max_message_bytes=config.intake.max_message_bytes,
            team_summary_batch_seconds=config.intake.team_summary_batch_seconds,
            late_key_wait_seconds=config.intake.late_key_wait_seconds,
            draft_hours=config.intake.draft_hours,
            team=frozenset(config.team.advice_team),
            managers=frozenset(config.team.managers),
            admins=frozenset(config.team.admins),
            agencies=dict(config.agencies),
            deadlines=config.deadlines,
            pattern=config.pattern,
            disagreement=config.disagreement,
            meetings=config.meetings,
            allowed_homeservers=frozenset(config.access.allowed_homeservers),
            attachments=config.attachments,
            reports=config.reports,
        )

    def is_allowed(self, user_id: str) -> bool:
        """Users of allowed homeservers only: the same rule as the configuration's."""
        return on_allowed_server(user_id, self.allowed_homeservers)

    def agency_of(self, user_id: str) -> str | None:
        for key, agency in self.agencies.items():
            if user_id in agency.members or user_id == agency.safeguarding_lead:
                return key
        return None

    def is_manager(self, user_id: str) -> bool:
        return user_id in self.managers

    def is_admin(self, user_id: str) -> bool:
        """May reload the configuration (`team.admins`)."""
        return user_id in self.admins

    def is_team(self, user_id: str) -> bool:
        """Advice-team members and managers may see and act on referrals."""
        return user_id in self.team or user_id in self.managers


class CurrentSettings:
    """The one holder of the settings in force. A reload replaces `current`; every component
    was given this holder (never a Settings of its own), so none keeps a stale copy."""

    def __init__(self, settings: Settings) -> None:
        self.current = settings

    @classmethod
    def of(cls, settings: Settings | CurrentSettings) -> CurrentSettings:
        """The holder itself, or a new one for a fixed Settings (tests, one-off tools)."""
        return settings if isinstance(settings, CurrentSettings) else cls(settings)
