"""The bot's configuration file (TOML), validated before anything starts.

Unknown keys are errors: a misspelt key that silently falls back to a default is how a
safeguarding rule gets switched off without anyone noticing.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

USER_ID_RE = re.compile(r"^@[a-z0-9._=\-/+]+:[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")
SERVER_NAME_RE = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretSource(_Strict):
    """Where a secret comes from: an environment variable or a file, never the TOML itself."""

    env: str | None = Field(default=None, description="name of an environment variable")
    file: Path | None = Field(default=None, description="path of a file holding the secret")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretSource:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of 'env' (a variable name) or 'file' (a path)")
        return self

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def read(self) -> str:
        """Return the secret, or raise ConfigError saying where it was looked for."""
        if self.env is not None:
            value = os.environ.get(self.env, "")
        else:
            assert self.file is not None
            try:
                value = self.file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(
                    [f"cannot read secret from {self.describe()}: {exc.strerror}"]
                ) from exc
        value = value.strip()
        if not value:
            raise ConfigError([f"the secret in {self.describe()} is empty or not set"])
        return value


class HomeserverConfig(_Strict):
    url: str = Field(description="client-server API base URL, e.g. https://matrix.example.org")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must start with http:// or https:// followed by a host")
        return v.rstrip("/")


class BotConfig(_Strict):
    user_id: str = Field(description="the bot's full Matrix ID, e.g. @referral-bot:example.org")
    password: SecretSource = Field(description="used only on the first start to log in")
    device_name: str = "referral-bot"

    @field_validator("user_id")
    @classmethod
    def _user_id(cls, v: str) -> str:
        if not USER_ID_RE.match(v):
            raise ValueError("must be a full Matrix user ID like @referral-bot:example.org")
        return v


class StorageConfig(_Strict):
    data_dir: Path = Field(description="holds credentials, the E2EE store and the database")
    store_key: SecretSource = Field(description="encrypts the E2EE store at rest")
    database_key: SecretSource = Field(
        description="encrypts personal fields in the database and keys the child-matching hash"
    )
    database: str | None = Field(
        default=None,
        description="a PostgreSQL URL (postgresql://user@host:port/dbname) for the bot's "
        "tables; left out, SQLite in data_dir",
    )
    database_password: SecretSource | None = Field(
        default=None, description="the PostgreSQL user's password (never in the URL)"
    )
    failover_seconds: float = Field(
        default=10.0,
        ge=2.0,
        le=300.0,
        description="PostgreSQL active/standby: how soon a standby takes over from a "
        "leader that died or lost its database session",
    )

    @field_validator("database")
    @classmethod
    def _postgres_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme, sep, rest = v.partition("://")
        if not sep or scheme not in ("postgresql", "postgres"):
            raise ValueError("must be a PostgreSQL URL like postgresql://referral-bot@db/referrals")
        if ":" in rest.split("/", 1)[0].split("@", 1)[0] and "@" in rest.split("/", 1)[0]:
            raise ValueError(
                "put the password in storage.database_password ({ env = ... } or "
                "{ file = ... }), not in the URL"
            )
        if "password=" in rest:
            raise ValueError("put the password in storage.database_password, not in the URL")
        return v

    @model_validator(mode="after")
    def _password_needs_database(self) -> StorageConfig:
        if self.database_password is not None and self.database is None:
            raise ValueError("database_password is set but database (a PostgreSQL URL) is not")
        return self


class AccessConfig(_Strict):
    allowed_homeservers: Annotated[list[str], Field(min_length=1)]

    @field_validator("allowed_homeservers")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not SERVER_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a server name like example.org")
        return v


class RoomsConfig(_Strict):
    advice_team: str = Field(
        description="room ID (or #alias) of the advice-team room; summaries go there",
    )

    @field_validator("advice_team")
    @classmethod
    def _room(cls, v: str) -> str:
        if not re.match(r"^[!#][^\s]+$", v):
            raise ValueError("must be a room ID starting with ! or an alias starting with #")
        return v


class IntakeConfig(_Strict):
    decision_working_days: Annotated[int, Field(ge=1, le=10)] = 1
    immediate_danger_minutes: Annotated[int, Field(ge=5, le=480)] = 60
    max_message_bytes: Annotated[int, Field(ge=1024, le=60_000)] = 40_000
    team_summary_batch_seconds: Annotated[float, Field(ge=0, le=30)] = Field(
        default=2.0,
        description=(
            "under load, new-referral summaries to the advice-team room go out together: "
            "at most one such message per this many seconds (immediate danger never "
            "waits); 0 sends each on its own"
        ),
    )
    late_key_wait_seconds: Annotated[float, Field(ge=0, le=600)] = Field(
        default=30.0,
        description=(
            "a message the bot cannot decrypt yet holds back the later messages of its "
            "room for at most this many seconds, so that it is handled in its place if its "
            "room key arrives; 0: later messages never wait"
        ),
    )

    draft_hours: Annotated[float, Field(gt=0, le=720)] = Field(
        default=24.0,
        description=(
            "a guided referral not answered for this many hours is deleted (one reminder "
            "goes 2 hours before, or half-way for drafts kept under 4 hours)"
        ),
    )


class AttachmentsConfig(_Strict):
    """Files attached to referrals (end-to-end encrypted media only)."""

    max_bytes: Annotated[int, Field(ge=1024, le=100 * 1024 * 1024)] = Field(
        default=20 * 1024 * 1024, description="largest file taken, in bytes"
    )
    max_per_referral: Annotated[int, Field(ge=1, le=200)] = Field(
        default=20, description="most files one referral can have"
    )
    attach_window_minutes: Annotated[int, Field(ge=1, le=60)] = Field(
        default=5,
        description="after !attach REF-…, the sender's files in that room go to it for this long",
    )


def _check_user_ids(ids: list[str]) -> list[str]:
    for uid in ids:
        if not USER_ID_RE.match(uid):
            raise ValueError(f"{uid!r} is not a full Matrix user ID like @name:example.org")
    return ids


class TeamConfig(_Strict):
    """Who may act on referrals. Checked on every command, never cached."""

    advice_team: list[str] = Field(default_factory=list, description="advice-team workers")
    managers: list[str] = Field(default_factory=list, description="team managers")
    admins: list[str] = Field(
        default_factory=list, description="may reload the configuration with !reload"
    )

    _ids = field_validator("advice_team", "managers", "admins")(_check_user_ids)


class AgencyConfig(_Strict):
    name: str = Field(min_length=1, description="display name, e.g. 'Community health'")
    members: list[str] = Field(default_factory=list)
    safeguarding_lead: str | None = None

    _ids = field_validator("members")(_check_user_ids)

    @field_validator("safeguarding_lead")
    @classmethod
    def _lead(cls, v: str | None) -> str | None:
        if v is not None:
            _check_user_ids([v])
        return v


class DeadlinesConfig(_Strict):
    """RAG deadlines, counted from receipt in working time (England and Wales)."""

    red_working_hours: Annotated[int, Field(ge=1, le=40)] = 4
    amber_working_days: Annotated[int, Field(ge=1, le=10)] = 1
    green_child_protection_working_days: Annotated[int, Field(ge=1, le=10)] = 1
    green_contact_working_days: Annotated[int, Field(ge=1, le=10)] = 3
    warn_before_minutes: Annotated[int, Field(ge=0, le=1440)] = 120
    reminder_interval_minutes: Annotated[int, Field(ge=1, le=1440)] = 60
    check_interval_seconds: Annotated[int, Field(ge=1, le=3600)] = 60
    written_followup_hours: Annotated[int, Field(ge=1, le=240)] = 48


class PatternConfig(_Strict):
    """When repeated contacts about one child are shown as a pattern."""

    contacts: Annotated[int, Field(ge=2, le=50)] = 3
    window_months: Annotated[int, Field(ge=1, le=120)] = 12
    agencies: Annotated[int, Field(ge=2, le=20)] = 2


class DisagreementConfig(_Strict):
    """How a referrer challenges a decision (resolution of professional disagreements)."""

    text: str = (
        "If you disagree, you can challenge this through the local resolution of professional "
        "disagreements (escalation) procedure: first speak to the advice team manager."
    )
    contact: str = "the advice team manager"


class MeetingsConfig(_Strict):
    """Strategy meetings."""

    required_agencies: list[str] = Field(
        default_factory=lambda: ["police", "health", "education"],
        description="agency keys whose safeguarding lead is always invited",
    )
    must_account_for: list[str] = Field(
        default_factory=lambda: ["health", "education"],
        description="agencies that must attend or provide information before closing",
    )
    action_reminder_days: Annotated[int, Field(ge=0, le=30)] = 1


class RetentionConfig(_Strict):
    """How long each class of record is kept. `referral-bot purge` applies it, never the bot.

    A referral's age is counted from when it was received, by what it is recorded as now.
    Left out, a referral class is kept for ever.
    """

    contact_years: Annotated[int, Field(ge=1, le=100)] | None = None
    child_protection_years: Annotated[int, Field(ge=1, le=100)] | None = None
    # Handled inbox rows keep only event IDs (no text): they let a re-delivered event be
    # recognised. Sent messages keep their (encrypted) text until then.
    handled_inbox_days: Annotated[int, Field(ge=1, le=3650)] = 30
    sent_outbox_days: Annotated[int, Field(ge=1, le=3650)] = 30
    # A practitioner's kept details (guided referrals) go this long after their last use.
    saved_referrer_days: Annotated[int, Field(ge=1, le=3650)] = 365


class PinnedDevice(_Strict):
    """A device the operator checked in person: its owner, ID and Ed25519 fingerprint."""

    user_id: str
    device_id: str = Field(min_length=1, max_length=255)
    ed25519: str = Field(description="the session key as the user's client shows it")

    @field_validator("user_id")
    @classmethod
    def _user(cls, v: str) -> str:
        return _check_user_ids([v])[0]

    @field_validator("ed25519")
    @classmethod
    def _key(cls, v: str) -> str:
        key = "".join(v.split())  # clients show the key in groups of four
        if not re.fullmatch(r"[A-Za-z0-9+/]{43}", key):
            raise ValueError("must be the 43-character Ed25519 session key (spaces allowed)")
        return key


class TrustConfig(_Strict):
    """Which devices get room keys: trust on first use, or interactive verification only."""

    mode: Literal["tofu", "strict"] = "tofu"
    pinned_devices: list[PinnedDevice] = Field(default_factory=list)


class IntegrityConfig(_Strict):
    """Checkpoints: the running records' chain heads anchored outside the database, so
    that deleted newest entries, a deleted referral or a database restored from an older
    copy show in `referral-bot verify` (README, "Checkpoints")."""

    checkpoint_file: Path | None = Field(
        default=None,
        description=(
            "append-only file the bot adds a checkpoint line to; must be outside "
            "storage.data_dir (a copy of data_dir must not carry it along). Left out: "
            "no checkpoints, and the bot warns at every start"
        ),
    )
    checkpoint_seconds: Annotated[float, Field(ge=1, le=3600)] = Field(
        default=5.0,
        description="new running-record entries are checkpointed at most this often",
    )
    audit_room: str | None = Field(
        default=None,
        description="encrypted room ID the checkpoints are also posted to (counts and digests)",
    )
    audit_interval_seconds: Annotated[int, Field(ge=10, le=86_400)] = Field(
        default=300,
        description="at most one post to the audit room per this many seconds (the latest)",
    )

    @field_validator("audit_room")
    @classmethod
    def _room(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^![^\s]+$", v):
            raise ValueError("must be a room ID starting with !")
        return v


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEKLY_AT_RE = re.compile(r"^([a-z]+)\s+([01]?[0-9]|2[0-3]):([0-5][0-9])$")


class ReportsConfig(_Strict):
    """The weekly report to the advice-team room (issue 14): off unless `weekly_at` is set."""

    weekly_at: str | None = Field(
        default=None,
        description="day and time, Europe/London, e.g. 'monday 09:00'; the report covers "
        "the last complete week (Monday to Sunday)",
    )

    @field_validator("weekly_at")
    @classmethod
    def _weekly_at(cls, v: str | None) -> str | None:
        if v is None:
            return None
        match = WEEKLY_AT_RE.match(v.strip().lower())
        if match is None or match.group(1) not in WEEKDAYS:
            raise ValueError(
                "give a day of the week and a 24-hour time, e.g. 'monday 09:00' (Europe/London)"
            )
        return f"{match.group(1)} {int(match.group(2)):02d}:{match.group(3)}"

    @property
    def weekly(self) -> tuple[int, int, int] | None:
        """(weekday, hour, minute) with Monday 0, or None when off."""
        if self.weekly_at is None:
            return None
        day, clock = self.weekly_at.split()
        hour, minute = clock.split(":")
        return WEEKDAYS.index(day), int(hour), int(minute)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # "json": one JSON object per line (ts, level, logger, message, and the IDs it names).
    format: Literal["text", "json"] = "text"


class HttpConfig(_Strict):
    """The operations endpoint (/healthz, /metrics). Loopback only: it is for the machine's
    own monitoring agent or a reverse proxy, never the open network."""

    listen: str = Field(description="loopback host:port, e.g. 127.0.0.1:9108 or [::1]:9108")

    @field_validator("listen")
    @classmethod
    def _loopback(cls, v: str) -> str:
        host, port = split_host_port(v)
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            # Not even "localhost": a name can resolve to anything.
            raise ValueError(
                f"{host!r} is not an IP address; give a loopback address like 127.0.0.1"
            ) from None
        if not loopback:
            raise ValueError(f"{host} is not a loopback address (127.0.0.1 or ::1)")
        if not 1 <= port <= 65535:
            raise ValueError("the port must be between 1 and 65535")
        return v

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]


def split_host_port(value: str) -> tuple[str, int]:
    """`127.0.0.1:9108` or `[::1]:9108` into host and port; ValueError if malformed."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})|([^\s:\[\]]+):([0-9]{1,5})", value)
    if match is None:
        raise ValueError("must be host:port, e.g. 127.0.0.1:9108 (IPv6: [::1]:9108)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    return host, port


class Config(_Strict):
    homeserver: HomeserverConfig
    bot: BotConfig
    storage: StorageConfig
    access: AccessConfig
    rooms: RoomsConfig
    intake: IntakeConfig = IntakeConfig()
    attachments: AttachmentsConfig = AttachmentsConfig()
    team: TeamConfig = TeamConfig()
    agencies: dict[str, AgencyConfig] = Field(default_factory=dict)
    deadlines: DeadlinesConfig = DeadlinesConfig()
    pattern: PatternConfig = PatternConfig()
    disagreement: DisagreementConfig = DisagreementConfig()
    meetings: MeetingsConfig = MeetingsConfig()
    retention: RetentionConfig = RetentionConfig()
    trust: TrustConfig = TrustConfig()
    reports: ReportsConfig = ReportsConfig()
    logging: LoggingConfig = LoggingConfig()
    http: HttpConfig | None = None
    integrity: IntegrityConfig = IntegrityConfig()

    @field_validator("agencies")
    @classmethod
    def _agency_keys(cls, v: dict[str, AgencyConfig]) -> dict[str, AgencyConfig]:
        for key in v:
            if not re.match(r"^[a-z][a-z0-9_-]{0,30}$", key):
                raise ValueError(f"agency key {key!r}: use lower-case letters, digits, - or _")
        return v

    def is_allowed_user(self, user_id: str) -> bool:
        """Whether a user may use the bot (see `on_allowed_server`)."""
        return on_allowed_server(user_id, self.access.allowed_homeservers)


def on_allowed_server(user_id: str, allowed_homeservers: Collection[str]) -> bool:
    """The one allow-list rule: a well-formed user ID whose server part is allowed.

    Decided from the user ID alone: room IDs are not used (room version 12 IDs carry no
    server name).
    """
    if not USER_ID_RE.match(user_id):
        return False
    return user_id.split(":", 1)[1] in allowed_homeservers


class ConfigError(Exception):
    """A configuration problem, with one human-readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _format_validation_error(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against config.example.toml)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}")
    return lines


def load_config(path: Path, *, base_dir: Path | None = None) -> Config:
    """Read and validate a TOML config; relative paths are taken from the file's folder."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path} is not valid TOML: {exc}"]) from exc
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from exc
    root = base_dir or path.parent
    return _resolve_paths(config, root)


def _resolve_paths(config: Config, root: Path) -> Config:
    def fix(p: Path) -> Path:
        return p if p.is_absolute() else (root / p)

    storage = config.storage.model_copy(update={"data_dir": fix(config.storage.data_dir)})
    for name in ("store_key", "database_key", "database_password"):
        source: SecretSource | None = getattr(storage, name)
        if source is not None and source.file is not None:
            storage = storage.model_copy(update={name: SecretSource(file=fix(source.file))})
    bot = config.bot
    if bot.password.file is not None:
        bot = bot.model_copy(update={"password": SecretSource(file=fix(bot.password.file))})
    integrity = config.integrity
    if integrity.checkpoint_file is not None:
        integrity = integrity.model_copy(update={"checkpoint_file": fix(integrity.checkpoint_file)})
    resolved = config.model_copy(update={"storage": storage, "bot": bot, "integrity": integrity})
    problem = checkpoint_file_problem(resolved)
    if problem is not None:
        raise ConfigError([problem])
    return resolved


def checkpoint_file_problem(config: Config) -> str | None:
    """The checkpoint file must live outside data_dir: whoever copies, restores or rolls
    back data_dir must not carry the anchor along with it."""
    path = config.integrity.checkpoint_file
    if path is None:
        return None
    data_dir = config.storage.data_dir.resolve()
    where = path.resolve()
    if where == data_dir or data_dir in where.parents:
        return (
            f"integrity.checkpoint_file: {path} is inside storage.data_dir ({data_dir}); "
            "put it outside, e.g. /var/lib/referral-bot-checkpoints/checkpoints.jsonl"
        )
    return None
