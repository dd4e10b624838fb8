"""The `referral-bot` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schemas.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from bot.maintenance import Outcome


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
            if name == "bot.password" and (
                config.storage.database is not None  # the credentials may be in it
                or (config.storage.data_dir / "credentials.json").exists()
            ):
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
    anchor = config.integrity.checkpoint_file
    if anchor is None:
        print(
            "  checkpoints:         OFF (warning: set integrity.checkpoint_file, outside the "
            "data directory, or deleted newest entries, a deleted referral and a database "
            "restored from an older copy go unseen)"
        )
    else:
        print(f"  checkpoints:         {anchor}")
    return 0


def private_files() -> None:
    """Everything this process creates (database, WAL, E2EE store, lock) is owner-only."""
    os.umask(0o077)


def cmd_run(args: argparse.Namespace) -> int:
    from bot.app import BotApp
    from bot.device_files import DeviceFileError
    from bot.session import LoginFailed
    from storage.engine import DatabaseInUse, WrongDatabaseKey

    private_files()
    config = _load(args.config)
    setup_logging(config.logging.level, config.logging.format)
    try:
        asyncio.run(BotApp(config, args.config).run_forever())
    except (ConfigError, LoginFailed, DeviceFileError, DatabaseInUse, WrongDatabaseKey) as exc:
        print(f"referral-bot: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bot.export import export_referral

    config = _load(args.config)
    try:
        paths = asyncio.run(export_referral(config, args.ref, args.out))
    except (LookupError, ConfigError) as exc:
        print(f"referral-bot export: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def _maintenance(
    args: argparse.Namespace, job: Callable[[Config], Coroutine[Any, Any, Outcome]]
) -> int:
    from storage.engine import DatabaseInUse, WrongDatabaseKey

    private_files()
    config = _load(args.config)
    try:
        outcome = asyncio.run(job(config))
    except (ConfigError, DatabaseInUse, WrongDatabaseKey) as exc:
        print(f"referral-bot {args.command}: {exc}", file=sys.stderr)
        return 2
    stream = sys.stdout if outcome.code == 0 else sys.stderr
    for line in outcome.lines:
        print(line, file=stream)
    return outcome.code


def cmd_verify(args: argparse.Namespace) -> int:
    from bot.maintenance import verify

    return _maintenance(args, verify)


def _new_key(args: argparse.Namespace) -> str:
    from schemas.config import SecretSource

    if (args.new_key_file is None) == (args.new_key_env is None):
        raise ConfigError(["give exactly one of --new-key-file PATH or --new-key-env VAR"])
    source = SecretSource(file=args.new_key_file, env=args.new_key_env)
    return source.read()


def cmd_rotate_key(args: argparse.Namespace) -> int:
    from bot.maintenance import rotate_key

    try:
        new_secret = _new_key(args)
    except ConfigError as exc:
        print(f"referral-bot rotate-key: {exc}", file=sys.stderr)
        return 2
    return _maintenance(args, lambda config: rotate_key(config, new_secret))


def cmd_purge(args: argparse.Namespace) -> int:
    from bot.maintenance import purge

    return _maintenance(args, lambda config: purge(config, confirmed=args.yes))


def cmd_backup(args: argparse.Namespace) -> int:
    from bot.backup import backup

    return _maintenance(args, lambda config: backup(config, args.out))


def cmd_restore(args: argparse.Namespace) -> int:
    from bot.backup import restore

    return _maintenance(args, lambda config: restore(config, args.input, force=args.force))


def cmd_outbox(args: argparse.Namespace) -> int:
    from bot.maintenance import outbox_failed, outbox_retry

    if args.retry is not None:
        outbox_id: int = args.retry
        return _maintenance(args, lambda config: outbox_retry(config, outbox_id))
    return _maintenance(args, outbox_failed)


def cmd_demo(args: argparse.Namespace) -> int:
    from bot.demo import run_demo

    setup_logging("WARNING")
    return asyncio.run(run_demo(keep=args.keep))


def cmd_report(args: argparse.Namespace) -> int:
    from bot.maintenance import report

    return _maintenance(args, lambda config: report(config, args.start, args.end, args.out))


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
    p = sub.add_parser("export", help="write a referral and its chronology as Markdown and JSON")
    p.add_argument("ref", help="reference, e.g. REF-2026-000123")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("-o", "--out", type=Path, default=Path("."), help="folder (default: here)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser(
        "verify", help="check every running record's hash chain; exit code 1 if one is broken"
    )
    p.add_argument("-c", "--config", type=Path, required=True)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser(
        "rotate-key",
        help="re-encrypt the database with a new database key (stop the bot first)",
    )
    p.add_argument("-c", "--config", type=Path, required=True)
    new_key = p.add_mutually_exclusive_group(required=True)
    new_key.add_argument("--new-key-file", type=Path, metavar="PATH", help="file with the new key")
    new_key.add_argument("--new-key-env", metavar="VAR", help="environment variable with it")
    p.set_defaults(func=cmd_rotate_key)
    p = sub.add_parser(
        "purge",
        help="list (--dry-run) or remove (--yes) records past their retention period",
    )
    p.add_argument("-c", "--config", type=Path, required=True)
    how = p.add_mutually_exclusive_group()
    how.add_argument("--dry-run", action="store_true", help="only list what would go (default)")
    how.add_argument("--yes", action="store_true", help="really purge")
    p.set_defaults(func=cmd_purge)
    p = sub.add_parser(
        "backup",
        help="copy the database(s), E2EE store and credentials to a new folder (bot may run)",
    )
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("-o", "--out", type=Path, required=True, help="a new, empty folder")
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser(
        "restore",
        help="put a backup back (bot stopped); refuses to overwrite newer records without --force",
    )
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("-i", "--input", type=Path, required=True, help="the backup folder")
    p.add_argument("--force", action="store_true", help="restore over newer records")
    p.set_defaults(func=cmd_restore)
    p = sub.add_parser(
        "outbox",
        help="list messages the homeserver refused for good (--failed) or resend one (--retry)",
    )
    p.add_argument("-c", "--config", type=Path, required=True)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--failed", action="store_true", help="list them (no message text)")
    what.add_argument("--retry", type=int, metavar="ID", help="put message ID back in its queue")
    p.set_defaults(func=cmd_outbox)
    p = sub.add_parser(
        "report", help="write the front door's figures for a period as a PNG chart and a CSV"
    )
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD")
    p.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD")
    p.add_argument("-o", "--out", type=Path, default=Path("."), help="folder (default: here)")
    p.set_defaults(func=cmd_report)
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
