"""Configuration: the example is valid, and mistakes are named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli import main
from schemas.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_config_is_valid() -> None:
    config = load_config(ROOT / "config.example.toml")
    assert config.access.allowed_homeservers == ["example.org"]
    assert config.intake.decision_working_days == 1


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
[homeserver]
url = "http://127.0.0.1:8008"
[bot]
user_id = "@bot:example.org"
password = { env = "RB_TEST_PASSWORD" }
[storage]
data_dir = "data"
store_key = { file = "key" }
database_key = { file = "key" }
[access]
allowed_homeservers = ["example.org"]
[rooms]
advice_team = "!team:example.org"
"""


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.storage.data_dir == tmp_path / "data"
    assert config.storage.store_key.file == tmp_path / "key"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("allowed_homeservers", "allowed_homeserver"), "access.allowed_homeserver: unknown key"),
        (('"@bot:example.org"', '"bot"'), "bot.user_id: must be a full Matrix user ID"),
        (('{ env = "RB_TEST_PASSWORD" }', '"hunter2"'), "bot.password"),
        (('{ file = "key" }', '{ file = "key", env = "X" }'), "give exactly one of"),
        (('"http://127.0.0.1:8008"', '"ftp://x"'), "homeserver.url: must start with http"),
        (('"!team:example.org"', '"team"'), "rooms.advice_team: must be a room ID"),
        (("[rooms]\nadvice_team", "[rooms]\nxadvice_team"), "rooms.advice_team: required key"),
    ],
)
def test_errors_name_the_key_and_what_is_allowed(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace(*change)))
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_check_config_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD)
    monkeypatch.delenv("RB_TEST_PASSWORD", raising=False)
    assert main(["check-config", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bot.password" in err and "RB_TEST_PASSWORD" in err
    assert "storage.store_key" in err and "cannot read secret" in err

    monkeypatch.setenv("RB_TEST_PASSWORD", "pw")
    (tmp_path / "key").write_text("short")
    assert main(["check-config", "-c", str(path)]) == 2
    assert "long random secret" in capsys.readouterr().err

    (tmp_path / "key").write_text("k" * 40)
    assert main(["check-config", "-c", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_allowed_users_are_decided_from_the_user_id(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.is_allowed_user("@nurse:example.org")
    assert not config.is_allowed_user("@nurse:evil.example")
    assert not config.is_allowed_user("@nurse:example.org.evil")
    assert not config.is_allowed_user("!room")


@pytest.mark.parametrize("listen", ["127.0.0.1:9108", "127.0.0.53:1", "[::1]:9108"])
def test_the_operations_endpoint_accepts_loopback(tmp_path: Path, listen: str) -> None:
    config = load_config(write(tmp_path, GOOD + f'[http]\nlisten = "{listen}"\n'))
    assert config.http is not None and config.http.listen == listen


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("0.0.0.0:9108", "0.0.0.0 is not a loopback address"),
        ("192.168.1.10:9108", "192.168.1.10 is not a loopback address"),
        ("localhost:9108", "'localhost' is not an IP address"),
        ("127.0.0.1", "must be host:port"),
        ("127.0.0.1:0", "between 1 and 65535"),
    ],
)
def test_the_operations_endpoint_refuses_anything_but_loopback(
    tmp_path: Path, listen: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD + f'[http]\nlisten = "{listen}"\n'))
    [line] = err.value.problems
    assert line.startswith("http.listen: ") and problem in line


def test_no_http_section_means_no_endpoint_and_text_logs(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.http is None and config.logging.format == "text"
    with pytest.raises(ConfigError, match=r"logging.format: Input should be 'text' or 'json'"):
        load_config(write(tmp_path, GOOD + '[logging]\nformat = "xml"\n'))


STRICT = """
[trust]
mode = "strict"
[[trust.pinned_devices]]
user_id = "@manager:example.org"
device_id = "ABCDEFGHIJ"
ed25519 = "p2oD wnVt 73/n LHDR +TOR hEfe Vpp1 BnmI DXaX licf eJI"
"""


def test_strict_trust_with_a_pinned_device_as_clients_show_its_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD + STRICT))
    assert config.trust.mode == "strict"
    [pin] = config.trust.pinned_devices
    assert pin.ed25519 == "p2oDwnVt73/nLHDR+TORhEfeVpp1BnmIDXaXlicfeJI"
    assert load_config(write(tmp_path, GOOD)).trust.mode == "tofu"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('"strict"', '"paranoid"'), "trust.mode: Input should be 'tofu' or 'strict'"),
        (("eJI", "eJ"), "trust.pinned_devices.0.ed25519: must be the 43-character"),
        (('"@manager:example.org"', '"manager"'), "trust.pinned_devices.0.user_id"),
        (("device_id", "device"), "trust.pinned_devices.0.device: unknown key"),
    ],
)
def test_trust_mistakes_are_named(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD + STRICT.replace(*change)))
    assert expected in str(err.value)


def test_a_postgresql_database_and_its_password_from_a_file(tmp_path: Path) -> None:
    from bot.maintenance import database_location
    from storage.engine import Postgres

    (tmp_path / "db-password").write_text("s3cret\n")
    text = GOOD.replace(
        'database_key = { file = "key" }',
        'database_key = { file = "key" }\n'
        'database = "postgresql://referral-bot@db.example.org:5432/referrals"\n'
        'database_password = { file = "db-password" }',
    )
    config = load_config(write(tmp_path, text))
    where = database_location(config)
    assert where == Postgres("postgresql://referral-bot@db.example.org:5432/referrals", "s3cret")
    assert "s3cret" not in str(where) and "s3cret" not in repr(where)
    # Without `database`: SQLite in data_dir, as before.
    plain = load_config(write(tmp_path, GOOD))
    assert database_location(plain) == tmp_path / "data" / "referrals.db"


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('database = "postgresql://bot:hunter2@db/referrals"', "not in the URL"),
        ('database = "postgresql://bot@db/referrals?password=hunter2"', "not in the URL"),
        ('database = "mysql://bot@db/referrals"', "must be a PostgreSQL URL"),
        ('database_password = { env = "DB_PASSWORD" }', "database (a PostgreSQL URL) is not"),
    ],
)
def test_postgresql_mistakes_are_named(tmp_path: Path, lines: str, expected: str) -> None:
    text = GOOD.replace(
        'database_key = { file = "key" }', 'database_key = { file = "key" }\n' + lines
    )
    with pytest.raises(ConfigError, match="storage") as err:
        load_config(write(tmp_path, text))
    assert expected in str(err.value)
