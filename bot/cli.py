"""The `referral-bot` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from schemas.config import Config, ConfigError, load_config


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: the configuration has {len(exc.problems)} problem(s):", file=sys.stderr)
        for line in exc.problems:
            print(f"  - {line}", file=sys.stderr)
        raise SystemExit(2) from None


# The identifiers our log lines carry as `key=value`; JSON lines repeat them as fields.
# Only IDs are ever logged this way, never names or message text.
_ID_FIELDS = re.compile(r"\b(ref|event|room|outbox|referral|purpose|device|user_device)=([^\s,;]+)")


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, and the IDs the message names."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in _ID_FIELDS.findall(message):
            line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True)


def setup_logging(level: str, fmt: str = "text") -> None:
    """The one place logging is configured (level and format come from the config)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level), handlers=[handler], force=True)
    # nio logs event contents at DEBUG and some of its warnings quote event fields.
    logging.getLogger("nio").setLevel(logging.ERROR)
    logging.getLogger("peewee").setLevel(logging.WARNING)


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    problems: list[str] = []
    for name, source in (
        ("bot.password", config.bot.password),
        ("storage.store_key", config.storage.store_key),
        ("storage.database_key", config.storage.database_key),
    ):
        try:
            value = source.read()
        except ConfigError as exc:
            if name == "bot.password" and (config.storage.data_dir / "credentials.json").exists():
                continue  # only needed before the first login
            problems.extend(f"{name}: {p}" for p in exc.problems)
            continue
        if name != "bot.password" and len(value) < 32:
            problems.append(f"{name}: use a long random secret (at least 32 characters)")
    if problems:
        print(f"{args.config}: {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        return 2
    print(f"{args.config}: OK")
    print(f"  homeserver:          {config.homeserver.url}")
    print(f"  bot user:            {config.bot.user_id}")
    print(f"  data directory:      {config.storage.data_dir}")
    print(f"  advice-team room:    {config.rooms.advice_team}")
    print(f"  allowed homeservers: {', '.join(config.access.allowed_homeservers)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bot.app import BotApp
    from bot.session import LoginFailed

    config = _load(args.config)
    setup_logging(config.logging.level, config.logging.format)
    try:
        asyncio.run(BotApp(config).run_forever())
    except (ConfigError, LoginFailed) as exc:
        print(f"referral-bot: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bot.demo import run_demo

    setup_logging("WARNING")
    return asyncio.run(run_demo(keep=args.keep))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="referral-bot",
        description="Encrypted Matrix bot for safeguarding referrals to children's social care.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the bot")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check-config", help="validate a configuration file and its secrets")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser(
        "demo", help="throwaway local homeserver, bot and demo users; one referral end to end"
    )
    p.add_argument("--keep", action="store_true", help="stay up so you can log in from a client")
    p.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
