"""A complete local set-up on a throwaway homeserver: bot account, config, advice team.

Used by `referral-bot demo`, the integration tests and the benchmark, so all three run
the bot exactly as an operator would: from a TOML file, with secrets in files.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bot.chat_user import ChatUser
from bot.devserver import DevSynapse
from schemas.config import Config, load_config


def _secret_file(path: Path, value: str) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value)
    return path


CONFIG_TEMPLATE = """\
[homeserver]
url = "{url}"

[bot]
user_id = "{bot_user}"
password = {{ file = "secrets/bot-password" }}

[storage]
data_dir = "data"
store_key = {{ file = "secrets/store-key" }}
database_key = {{ file = "secrets/database-key" }}

[access]
allowed_homeservers = ["{server_name}"]

[rooms]
advice_team = "{team_room}"

[team]
advice_team = ["{worker}"]
managers = ["{manager}"]

[logging]
level = "{log_level}"
"""


async def start_user(hs: DevSynapse, base: Path, name: str) -> ChatUser:
    """Register a person and start their client (own device, own E2EE store)."""
    password = secrets.token_urlsafe(12)
    user_id = await hs.register(name, password)
    user = ChatUser(hs.url, user_id, password, base / "clients" / name)
    await user.start()
    return user


@dataclass
class World:
    hs: DevSynapse
    base: Path
    config_path: Path
    bot_user: str
    team_room: str
    worker: ChatUser
    users: list[ChatUser] = field(default_factory=list)
    manager: ChatUser | None = None

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def configure(
        self,
        *,
        http_listen: str | None = None,
        log_format: str | None = None,
        advice_team: list[str] | None = None,
        database: str | None = None,
    ) -> None:
        """Turn on the operations endpoint and/or JSON logs, replace the advice-team
        members, or put the bot's tables in a PostgreSQL `database`, in the config file."""
        text = self.config_path.read_text(encoding="utf-8")
        if database is not None:
            text = text.replace("[storage]\n", f'[storage]\ndatabase = "{database}"\n', 1)
        if advice_team is not None:
            members = ", ".join(f'"{m}"' for m in advice_team)
            text = re.sub(
                r"^(\[team\]\nadvice_team = )\[[^\]]*\]",
                lambda m: f"{m.group(1)}[{members}]",
                text,
                count=1,
                flags=re.MULTILINE,
            )
        if log_format is not None:
            text = text.replace("[logging]\n", f'[logging]\nformat = "{log_format}"\n', 1)
        if http_listen is not None:
            text += f'\n[http]\nlisten = "{http_listen}"\n'
        self.config_path.write_text(text, encoding="utf-8")

    def second_machine(self, name: str, http_port: int | None = None) -> Path:
        """The bot's config as another machine would have it (active/standby): a folder
        of its own with the same secrets and database, an empty data_dir and (with
        `http_port`) its own operations port. Returns its config file."""
        other = self.base / name
        other.mkdir()
        shutil.copytree(self.base / "secrets", other / "secrets")
        text = self.config_path.read_text(encoding="utf-8")
        if http_port is not None:
            text = re.sub(
                r'^listen = "127\.0\.0\.1:\d+"$',
                f'listen = "127.0.0.1:{http_port}"',
                text,
                flags=re.MULTILINE,
            )
        path = other / "config.toml"
        path.write_text(text, encoding="utf-8")
        return path

    async def add_user(self, name: str) -> ChatUser:
        user = await start_user(self.hs, self.base, name)
        self.users.append(user)
        return user

    async def close(self) -> None:
        for user in self.users:
            await user.stop()


async def make_world(
    hs: DevSynapse,
    base: Path,
    *,
    bot_name: str = "referral-bot",
    worker_name: str = "advice-worker",
    log_level: str = "INFO",
) -> World:
    """Register the bot and an advice-team worker, create the team room, write the config."""
    base.mkdir(parents=True, exist_ok=True)
    bot_password = secrets.token_urlsafe(16)
    bot_user = await hs.register(bot_name, bot_password)
    _secret_file(base / "secrets" / "bot-password", bot_password)
    _secret_file(base / "secrets" / "store-key", secrets.token_urlsafe(32))
    _secret_file(base / "secrets" / "database-key", secrets.token_urlsafe(32))

    worker = await start_user(hs, base, worker_name)
    manager = await start_user(hs, base, f"{worker_name}-manager")
    team_room = await worker.create_room(
        invite=[bot_user, manager.user_id], encrypted=True, direct=False, name="Advice team"
    )
    await manager.join(team_room)
    world = World(
        hs, base, base / "config.toml", bot_user, team_room, worker, [worker, manager], manager
    )
    world.config_path.write_text(
        CONFIG_TEMPLATE.format(
            url=hs.url,
            bot_user=bot_user,
            server_name=hs.server_name,
            team_room=world.team_room,
            worker=worker.user_id,
            manager=manager.user_id,
            log_level=log_level,
        ),
        encoding="utf-8",
    )
    return world
