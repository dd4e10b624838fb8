"""Device trust with real matrix-nio objects (client, E2EE store, SAS) and a real database.

No homeserver: keys are made with vodozemac, key-query responses are built and signed
the way a homeserver serves them, and handed to nio exactly as the sync loop does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import vodozemac
from nio import AsyncClient, AsyncClientConfig, KeysQueryResponse, MatrixRoom, ToDeviceEvent
from nio.api import Api
from nio.crypto import OlmDevice
from nio.crypto.sas import Sas, SasState
from nio.store import SqliteStore

from bot.device_trust import DeviceTrust
from bot.messenger import MatrixMessenger
from bot.sas import EMOJI, BotSas, sas_emoji
from handlers.ports import OutgoingMessage, SendRefused
from handlers.settings import Settings
from schemas.config import PinnedDevice
from storage.engine import Store
from tests.keys import KEYRING

BOT = "@bot:example.org"
NURSE = "@nurse:example.org"
STRANGER = "@someone:elsewhere.org"
TEAM_ROOM = "!team:example.org"


class Device:
    """A user's device: its own vodozemac account, and key objects as a homeserver serves."""

    def __init__(self, user_id: str, device_id: str) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self.account = vodozemac.Account()

    @property
    def ed25519(self) -> str:
        return str(self.account.ed25519_key.to_base64())

    @property
    def curve25519(self) -> str:
        return str(self.account.curve25519_key.to_base64())

    def payload(self) -> dict[str, Any]:
        keys: dict[str, Any] = {
            "user_id": self.user_id,
            "device_id": self.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                f"ed25519:{self.device_id}": self.ed25519,
                f"curve25519:{self.device_id}": self.curve25519,
            },
        }
        signature = self.account.sign(Api.to_canonical_json(keys).encode()).to_base64()
        keys["signatures"] = {self.user_id: {f"ed25519:{self.device_id}": signature}}
        return keys


def query_response(*devices: Device) -> KeysQueryResponse:
    body: dict[str, Any] = {"device_keys": {}, "failures": {}}
    for d in devices:
        body["device_keys"].setdefault(d.user_id, {})[d.device_id] = d.payload()
    resp = KeysQueryResponse.from_dict(body)
    assert isinstance(resp, KeysQueryResponse)
    return resp


@pytest_asyncio.fixture
async def client(tmp_path: Path) -> AsyncIterator[AsyncClient]:
    c = AsyncClient(
        "http://127.0.0.1:9",
        BOT,
        store_path=str(tmp_path),
        config=AsyncClientConfig(store=SqliteStore, encryption_enabled=True, pickle_key="k" * 32),
    )
    c.restore_login(BOT, "BOTDEVICE", "not-a-token")
    yield c
    await c.close()


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "referrals.db", KEYRING)
    yield s
    await s.close()


SETTINGS = Settings(bot_user_id=BOT, advice_team_room=TEAM_ROOM)


def trust(
    client: AsyncClient, store: Store, *, strict: bool, pins: tuple[PinnedDevice, ...] = ()
) -> DeviceTrust:
    return DeviceTrust(client, store, SETTINGS, strict=strict, pinned=pins)


async def served(client: AsyncClient, t: DeviceTrust, *devices: Device) -> None:
    """What the sync loop does with a /keys/query answer: nio first, then the check."""
    resp = query_response(*devices)
    await client.receive_response(resp)
    async with t.lock:
        await t.check_response(resp)


async def team_messages(store: Store) -> list[str]:
    async with store.transaction() as tx:
        return [row.message.body for row in await tx.unsent(TEAM_ROOM)]


def nio_device(client: AsyncClient, d: Device) -> Any:
    return client.device_store[d.user_id][d.device_id]


async def test_tofu_trusts_first_keys_strict_trusts_nothing_unverified(
    client: AsyncClient, store: Store
) -> None:
    phone = Device(NURSE, "PHONE")
    stranger = Device(STRANGER, "X")
    tofu = trust(client, store, strict=False)
    await served(client, tofu, phone, stranger)
    assert nio_device(client, phone).verified
    assert nio_device(client, stranger).blacklisted  # not an allowed homeserver

    # The same devices under strict mode (a restart with mode = "strict"): trust on
    # first use does not carry over.
    strict = trust(client, store, strict=True)
    await strict.load()
    await strict.apply_all()
    assert nio_device(client, phone).blacklisted
    assert not strict.is_trusted(NURSE, "PHONE")
    assert await team_messages(store) == []


async def test_a_pinned_device_is_trusted_in_strict_mode_and_a_wrong_pin_is_refused(
    client: AsyncClient, store: Store
) -> None:
    good, bad = Device(NURSE, "GOOD"), Device(NURSE, "BAD")
    pins = (
        PinnedDevice(user_id=NURSE, device_id="GOOD", ed25519=good.ed25519),
        PinnedDevice(user_id=NURSE, device_id="BAD", ed25519=Device(NURSE, "BAD").ed25519),
    )
    t = trust(client, store, strict=True, pins=pins)
    await served(client, t, good, bad)
    assert nio_device(client, good).verified
    assert nio_device(client, bad).blacklisted
    assert t.is_refused(NURSE, "BAD")
    [alert] = await team_messages(store)
    assert "operator pinned" in alert and "BAD" in alert


async def test_a_new_ed25519_key_for_a_known_device_is_refused_and_announced_once(
    client: AsyncClient, store: Store
) -> None:
    phone = Device(NURSE, "PHONE")
    t = trust(client, store, strict=False)
    await served(client, t, phone)
    first_key = phone.ed25519

    replaced = Device(NURSE, "PHONE")  # same device ID, a new key pair
    await served(client, t, replaced)
    # nio keeps the old key and says nothing to the caller: the record is what notices.
    assert nio_device(client, phone).ed25519 == first_key
    assert nio_device(client, phone).blacklisted
    assert not t.is_trusted(NURSE, "PHONE")
    [alert] = await team_messages(store)
    assert "SECURITY" in alert and NURSE in alert and "PHONE" in alert
    assert first_key[:4] in alert and replaced.ed25519[:4] in alert

    await served(client, t, replaced)  # served again: no second announcement
    assert len(await team_messages(store)) == 1
    # Messages signed with the new key are recognised as the refused session's.
    assert t.is_refused_key(NURSE, replaced.ed25519)
    assert not t.is_refused_key(NURSE, first_key)

    # A restart keeps the refusal: it is in the database, not only in nio's flags.
    again = trust(client, store, strict=False)
    await again.load()
    assert again.is_refused(NURSE, "PHONE")


async def test_a_new_curve25519_key_that_nio_accepts_silently_is_refused(
    client: AsyncClient, store: Store
) -> None:
    phone = Device(NURSE, "PHONE")
    t = trust(client, store, strict=False)
    await served(client, t, phone)
    # The same identity key signing a new Curve25519 key: nio simply takes it.
    new_curve = vodozemac.Account().curve25519_key.to_base64()
    payload = phone.payload()
    payload["keys"]["curve25519:PHONE"] = new_curve
    del payload["signatures"]
    payload["signatures"] = {
        NURSE: {
            "ed25519:PHONE": phone.account.sign(Api.to_canonical_json(payload).encode()).to_base64()
        }
    }
    resp = KeysQueryResponse.from_dict({"device_keys": {NURSE: {"PHONE": payload}}, "failures": {}})
    await client.receive_response(resp)
    assert nio_device(client, phone).curve25519 == new_curve  # nio replaced it
    async with t.lock:
        await t.check_response(resp)
    assert nio_device(client, phone).blacklisted
    [alert] = await team_messages(store)
    assert "encryption (Curve25519) key" in alert


async def test_interactive_verification_is_recorded_and_survives_a_restart(
    client: AsyncClient, store: Store
) -> None:
    phone, changed = Device(NURSE, "PHONE"), Device(NURSE, "OLD")
    t = trust(client, store, strict=True)
    await served(client, t, phone, changed)
    assert await t.mark_verified(NURSE, "PHONE", by="@worker:example.org")
    assert nio_device(client, phone).verified and t.is_trusted(NURSE, "PHONE")
    assert t.verified_devices(NURSE) == ["PHONE"]

    await served(client, t, Device(NURSE, "OLD"))  # keys changed: refused
    assert not await t.mark_verified(NURSE, "OLD", by="@worker:example.org")
    assert nio_device(client, changed).blacklisted

    again = trust(client, store, strict=True)
    await again.load()
    assert again.is_trusted(NURSE, "PHONE") and not again.is_trusted(NURSE, "OLD")


# -- SAS: nio's protocol objects talking to each other in memory -------------------------


def to_device(sender: str, message: Any) -> Any:
    event = ToDeviceEvent.parse_event(
        {"type": message.type, "sender": sender, "content": message.content}
    )
    assert event is not None
    return event


def sas_pair() -> tuple[Any, Any, Device]:
    """The bot's BotSas and a user's plain nio Sas, keys exchanged."""
    bot_dev, phone = Device(BOT, "BOTDEVICE"), Device(NURSE, "PHONE")
    bot_olm = OlmDevice(BOT, "BOTDEVICE", {"ed25519": bot_dev.ed25519, "curve25519": "x"})
    phone_olm = OlmDevice(NURSE, "PHONE", {"ed25519": phone.ed25519, "curve25519": "y"})
    bot = BotSas(BOT, "BOTDEVICE", bot_dev.ed25519, phone_olm)
    user = Sas.from_key_verification_start(
        NURSE, "PHONE", phone.ed25519, bot_olm, to_device(BOT, bot.start_verification())
    )
    bot.receive_accept_event(to_device(NURSE, user.accept_verification()))
    user.receive_key_event(to_device(BOT, bot.share_key()))
    bot.receive_key_event(to_device(NURSE, user.share_key()))
    return bot, user, phone


def test_both_sides_show_the_same_emoji_and_an_honest_mac_verifies() -> None:
    bot, user, _ = sas_pair()
    assert bot.get_emoji() == sas_emoji(user) and len(bot.get_emoji()) == 7
    assert bot.get_decimals() == user.get_decimals()
    # nio's own emoji regroup the bits of the indices: not what any other client shows.
    assert user.get_emoji() != sas_emoji(user)
    user.accept_sas()
    bot.receive_mac_event(to_device(NURSE, user.get_mac()))
    assert bot.state == SasState.mac_received and bot.verified_devices == ["PHONE"]
    bot.accept_sas()
    assert bot.verified


def _mac_without_device_key(user: Any) -> Any:
    """A MAC message that covers some other key, not the device's own (validly MACed)."""
    info = f"MATRIX_KEY_VERIFICATION_MAC{NURSE}PHONE{BOT}BOTDEVICE{user.transaction_id}"
    key_id = "ed25519:SOMEOTHERKEY"
    mac = user.established_sas.calculate_mac
    content = {
        "transaction_id": user.transaction_id,
        "mac": {key_id: mac("some other key", info + key_id)},
        "keys": mac(key_id, info + "KEY_IDS"),
    }
    return ToDeviceEvent.parse_event(
        {"type": "m.key.verification.mac", "sender": NURSE, "content": content}
    )


def test_a_mac_that_does_not_cover_the_device_key_cancels() -> None:
    bot, user, _ = sas_pair()
    user.accept_sas()
    bot.receive_mac_event(_mac_without_device_key(user))
    assert bot.canceled and bot.cancel_code == "m.key_mismatch"


def test_nio_alone_would_verify_on_such_a_mac() -> None:
    """Why BotSas exists: nio 0.26's own check is overwritten by its next line."""
    bot, user, _ = sas_pair()
    bot.__class__ = Sas
    user.accept_sas()
    bot.receive_mac_event(_mac_without_device_key(user))
    bot.accept_sas()
    assert bot.verified and bot.verified_devices == []


def test_the_emoji_table_is_the_specifications() -> None:
    assert len(EMOJI) == 64
    assert EMOJI[0] == ("🐶", "Dog") and EMOJI[63] == ("📌", "Pin")
    assert EMOJI[34] == ("🔧", "Spanner") and EMOJI[36] == ("👍", "Thumbs Up")
    assert EMOJI[53] == ("✈️", "Aeroplane")


async def test_a_plain_text_notice_is_never_sensitive(client: AsyncClient, store: Store) -> None:
    """The unencrypted path exists for unverified sessions; referral data never takes it."""
    client.rooms["!dm:example.org"] = MatrixRoom("!dm:example.org", BOT, encrypted=True)
    messenger = MatrixMessenger(client, SETTINGS.is_allowed, trust(client, store, strict=True))
    message = OutgoingMessage("!dm:example.org", "details", "<p>details</p>", plaintext=True)
    with pytest.raises(SendRefused):
        await messenger.send(message, "txn1")
