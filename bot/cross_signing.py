"""The bot's cross-signing identity: master, self-signing and user-signing keys.

Current clients (Element and others built on the Rust crypto SDK) neither send room keys to
nor show messages from a device its owner has not cross-signed. matrix-nio has no
cross-signing, so it is built here from Ed25519 (`cryptography`) and canonical JSON, as the
Matrix spec describes them (appendix "Signing JSON", client-server API "Cross-signing").

The identity is made once, on the first start, and kept: the private keys are stored in
`data_dir/cross_signing.json` (0600; on PostgreSQL a row of `device_files`, sealed once
more: bot/device_files.py), each encrypted with AES-256-GCM under a key derived
from `storage.store_key`, the same secret that protects the device's own keys. Every start
checks that the homeserver still publishes our keys and that our device carries a valid
self-signing signature, and repairs what is missing. Nothing here may stop the bot: a
problem is logged as a warning and the bot runs on, its device then not cross-signed.
"""

from __future__ import annotations

import base64
import enum
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import aiohttp
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nio import AsyncClient

from bot.device_files import (
    CROSS_SIGNING,
    DeviceFileError,
    DeviceFiles,
    store_key_cipher,
    write_private,
)
from schemas.config import ConfigError, SecretSource

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]

USAGES = ("master", "self_signing", "user_signing")
KEY_FILE = CROSS_SIGNING
_FILE_VERSION = 1


# --- canonical JSON and signatures (spec appendix "Signing JSON") ---------------------------


def canonical_json(value: Any) -> bytes:
    """Matrix canonical JSON: sorted keys, no insignificant whitespace, UTF-8, no floats."""
    return json.dumps(
        value,
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
        default=_refuse,
    ).encode("utf-8")


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} cannot be signed as Matrix JSON")


def unpadded_b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def unpadded_b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def signing_bytes(obj: Mapping[str, Any]) -> bytes:
    """What a signature covers: the object without `signatures` and `unsigned`."""
    return canonical_json({k: v for k, v in obj.items() if k not in ("signatures", "unsigned")})


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return unpadded_b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign_json(obj: Mapping[str, Any], signer: str, key_id: str, key: Ed25519PrivateKey) -> JsonDict:
    """A copy of `obj` with a signature by `key` added under `signatures[signer][key_id]`."""
    signature = unpadded_b64encode(key.sign(signing_bytes(obj)))
    signed = dict(obj)
    signatures = {user: dict(sigs) for user, sigs in obj.get("signatures", {}).items()}
    signatures.setdefault(signer, {})[key_id] = signature
    signed["signatures"] = signatures
    return signed


def verify_json(obj: Mapping[str, Any], signer: str, key_id: str, public_key: str) -> bool:
    """Whether `obj` carries a valid signature by the Ed25519 key `public_key` (base64)."""
    try:
        signature = obj["signatures"][signer][key_id]
        key = Ed25519PublicKey.from_public_bytes(unpadded_b64decode(public_key))
        key.verify(unpadded_b64decode(signature), signing_bytes(obj))
    except (KeyError, TypeError, ValueError, InvalidSignature):
        return False
    return True


def key_object_public(obj: Mapping[str, Any]) -> str | None:
    """The one Ed25519 public key in a cross-signing key object, if it has exactly one."""
    keys = obj.get("keys")
    if not isinstance(keys, dict) or len(keys) != 1:
        return None
    ((key_id, value),) = keys.items()
    if not isinstance(value, str) or key_id != f"ed25519:{value}":
        return None
    return value


# --- the three keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class CrossSigningKeys:
    master: Ed25519PrivateKey
    self_signing: Ed25519PrivateKey
    user_signing: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> CrossSigningKeys:
        return cls(*(Ed25519PrivateKey.generate() for _ in USAGES))

    def by_usage(self, usage: str) -> Ed25519PrivateKey:
        key: Ed25519PrivateKey = getattr(self, usage)
        return key

    def public(self, usage: str) -> str:
        return public_key_b64(self.by_usage(usage))

    def key_id(self, usage: str) -> str:
        return f"ed25519:{self.public(usage)}"

    def key_object(self, user_id: str, usage: str) -> JsonDict:
        """The public key object as uploaded; the master key signs the other two."""
        obj: JsonDict = {
            "user_id": user_id,
            "usage": [usage],
            "keys": {self.key_id(usage): self.public(usage)},
        }
        if usage != "master":
            obj = sign_json(obj, user_id, self.key_id("master"), self.master)
        return obj

    def upload_body(self, user_id: str) -> JsonDict:
        return {f"{usage}_key": self.key_object(user_id, usage) for usage in USAGES}

    def sign_device(self, user_id: str, device_keys: Mapping[str, Any]) -> JsonDict:
        """The device's key object, exactly as the server holds it, signed by self-signing."""
        bare = {k: v for k, v in device_keys.items() if k not in ("signatures", "unsigned")}
        signed = sign_json(bare, user_id, self.key_id("self_signing"), self.self_signing)
        signed["signatures"] = {user_id: signed["signatures"][user_id]}
        return signed


# --- the encrypted key file ------------------------------------------------------------------


class KeyFileError(Exception):
    """The key file exists but cannot be used; it is never overwritten automatically."""


def _file_cipher(store_key: str) -> AESGCM:
    return store_key_cipher(store_key, b"cross-signing-private-keys")


def _aad(user_id: str, usage: str, public: str) -> bytes:
    # Binds each sealed key to its account, role and public key: keys cannot be swapped.
    return f"{user_id}\x00{usage}\x00{public}".encode()


def seal_keys(keys: CrossSigningKeys, user_id: str, store_key: str) -> str:
    """The key file's text: each private key sealed, bound to its account and role."""
    cipher = _file_cipher(store_key)
    sealed: dict[str, dict[str, str]] = {}
    for usage in USAGES:
        public = keys.public(usage)
        seed = keys.by_usage(usage).private_bytes_raw()
        nonce = os.urandom(12)
        box = cipher.encrypt(nonce, seed, _aad(user_id, usage, public))
        sealed[usage] = {"public": public, "sealed": unpadded_b64encode(nonce + box)}
    return json.dumps({"version": _FILE_VERSION, "user_id": user_id, "keys": sealed}, indent=1)


def open_keys(text: str, where: str, user_id: str, store_key: str) -> CrossSigningKeys:
    """The keys sealed in `text` (from `where`, for messages); KeyFileError if unusable."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KeyFileError(f"{where} cannot be read: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != _FILE_VERSION:
        raise KeyFileError(f"{where} is not a version {_FILE_VERSION} key file")
    if data.get("user_id") != user_id:
        raise KeyFileError(f"{where} holds the keys of another account, not {user_id}")
    cipher = _file_cipher(store_key)
    found: list[Ed25519PrivateKey] = []
    for usage in USAGES:
        try:
            entry = data["keys"][usage]
            raw = unpadded_b64decode(entry["sealed"])
            seed = cipher.decrypt(raw[:12], raw[12:], _aad(user_id, usage, entry["public"]))
            key = Ed25519PrivateKey.from_private_bytes(seed)
        except InvalidTag as exc:
            raise KeyFileError(
                f"{where} cannot be decrypted with storage.store_key (changed key?)"
            ) from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyFileError(f"{where}: the {usage} key entry is damaged") from exc
        if public_key_b64(key) != entry["public"]:
            raise KeyFileError(f"{where}: the {usage} key does not match its public key")
        found.append(key)
    return CrossSigningKeys(*found)


def save_keys(path: Path, keys: CrossSigningKeys, user_id: str, store_key: str) -> None:
    write_private(path, seal_keys(keys, user_id, store_key))


def load_keys(path: Path, user_id: str, store_key: str) -> CrossSigningKeys | None:
    """The stored keys, None if there is no file; KeyFileError if it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path} cannot be read: {exc}") from exc
    return open_keys(text, str(path), user_id, store_key)


async def load_stored_keys(
    files: DeviceFiles, user_id: str, store_key: str
) -> CrossSigningKeys | None:
    """The keys kept with the device (bot/device_files.py), None if there are none."""
    try:
        text = await files.read(KEY_FILE)
    except DeviceFileError as exc:
        raise KeyFileError(str(exc)) from exc
    return None if text is None else open_keys(text, files.describe(KEY_FILE), user_id, store_key)


# --- the homeserver ----------------------------------------------------------------------


class CrossSigningError(Exception):
    pass


class HomeserverKeys:
    """The three key endpoints nio does not wrap, called with the bot's access token."""

    def __init__(self, homeserver: str, access_token: str, session: aiohttp.ClientSession):
        self._base = homeserver.rstrip("/") + "/_matrix/client/v3"
        self._headers = {"Authorization": f"Bearer {access_token}"}
        self._session = session

    async def _post(self, path: str, body: JsonDict) -> tuple[int, JsonDict]:
        async with self._session.post(self._base + path, json=body, headers=self._headers) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = None
            return resp.status, data if isinstance(data, dict) else {}

    async def query(self, user_id: str) -> JsonDict:
        status, data = await self._post("/keys/query", {"device_keys": {user_id: []}})
        if status != 200:
            raise CrossSigningError(f"/keys/query failed: HTTP {status} {data.get('errcode')}")
        return data

    async def upload_signing_keys(
        self, body: JsonDict, user_id: str, password: Callable[[], str | None]
    ) -> None:
        """Upload the keys; answer user-interactive auth with the password if asked."""
        status, data = await self._post("/keys/device_signing/upload", body)
        if status == 200:
            return
        flows = data.get("flows")
        if status != 401 or not isinstance(flows, list):
            raise CrossSigningError(f"key upload refused: HTTP {status} {data.get('errcode')}")
        if not any(f.get("stages") == ["m.login.password"] for f in flows if isinstance(f, dict)):
            raise CrossSigningError("the homeserver asks for an authentication other than password")
        secret = password()
        if not secret:
            raise CrossSigningError(
                "the homeserver asks for the bot's password to replace its cross-signing "
                "keys, and bot.password is not available"
            )
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": secret,
            "session": data.get("session"),
        }
        status, data = await self._post("/keys/device_signing/upload", {**body, "auth": auth})
        if status != 200:
            raise CrossSigningError(
                f"key upload refused after authentication: HTTP {status} {data.get('errcode')}"
            )

    async def upload_signatures(self, signed: dict[str, JsonDict]) -> None:
        """`signed` maps a device ID or master public key to its signed key object."""
        user_ids = {obj["user_id"] for obj in signed.values()}
        assert len(user_ids) == 1
        status, data = await self._post("/keys/signatures/upload", {user_ids.pop(): signed})
        if status != 200:
            raise CrossSigningError(f"signature upload failed: HTTP {status}")
        if data.get("failures"):
            raise CrossSigningError(f"signature upload refused: {data['failures']}")


@dataclass(frozen=True)
class PublishedIdentity:
    """What /keys/query says about an account's cross-signing keys and one device."""

    master: JsonDict | None
    self_signing: JsonDict | None
    device: JsonDict | None

    @classmethod
    def from_query(cls, data: Mapping[str, Any], user_id: str, device_id: str) -> Self:
        def pick(section: str) -> JsonDict | None:
            value = data.get(section, {}).get(user_id)
            return value if isinstance(value, dict) else None

        device = data.get("device_keys", {}).get(user_id, {}).get(device_id)
        return cls(
            pick("master_keys"),
            pick("self_signing_keys"),
            device if isinstance(device, dict) else None,
        )

    def matches(self, keys: CrossSigningKeys) -> bool:
        """The server publishes exactly our master and self-signing keys."""
        return (
            self.master is not None
            and self.self_signing is not None
            and key_object_public(self.master) == keys.public("master")
            and key_object_public(self.self_signing) == keys.public("self_signing")
        )


def device_is_cross_signed(identity: PublishedIdentity, user_id: str, device_id: str) -> bool:
    """The chain a client checks: master → self-signing → device, every signature valid."""
    if identity.master is None or identity.self_signing is None or identity.device is None:
        return False
    master = key_object_public(identity.master)
    ssk = key_object_public(identity.self_signing)
    if master is None or ssk is None:
        return False
    return (
        identity.master.get("user_id") == user_id
        and "master" in identity.master.get("usage", [])
        and identity.self_signing.get("user_id") == user_id
        and "self_signing" in identity.self_signing.get("usage", [])
        and verify_json(identity.self_signing, user_id, f"ed25519:{master}", master)
        and identity.device.get("user_id") == user_id
        and identity.device.get("device_id") == device_id
        and verify_json(identity.device, user_id, f"ed25519:{ssk}", ssk)
    )


# --- the start-up step -----------------------------------------------------------------------


class Outcome(enum.Enum):
    CREATED = "created"  # new keys made and published
    REPUBLISHED = "republished"  # stored keys (re)published: the server had other or none
    DEVICE_SIGNED = "device signed"  # keys were in place; the device signature was added
    UNCHANGED = "unchanged"  # everything already in place
    UNAVAILABLE = "unavailable"  # could not be done; the device is not cross-signed


async def ensure_cross_signing(
    *,
    homeserver: str,
    user_id: str,
    device_id: str,
    access_token: str,
    sign_with_device: Callable[[JsonDict], str],
    files: DeviceFiles,
    store_key: str,
    password: Callable[[], str | None],
) -> Outcome:
    """Make sure the account has our identity and our device is signed by it. Never raises.

    `sign_with_device` signs canonical JSON with the device's Ed25519 key (nio's
    `client.olm.sign_json`); it adds the device's signature to the master key, which lets
    clients that trust this device trust the identity too. `password` is asked only when
    the homeserver demands user-interactive auth (replacing an existing identity).
    """
    try:
        keys = await load_stored_keys(files, user_id, store_key)
    except KeyFileError as exc:
        log.warning("cross-signing not available: %s; the device stays unsigned", exc)
        return Outcome.UNAVAILABLE
    created = keys is None
    try:
        if keys is None:
            keys = CrossSigningKeys.generate()
            # Saved before publishing: keys the server has must never be lost by a crash.
            await files.write(KEY_FILE, seal_keys(keys, user_id, store_key))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            return await _reconcile(
                HomeserverKeys(homeserver, access_token, session),
                keys,
                created=created,
                user_id=user_id,
                device_id=device_id,
                sign_with_device=sign_with_device,
                password=password,
            )
    except (CrossSigningError, OSError, aiohttp.ClientError, TimeoutError) as exc:
        problem: object = exc
    except Exception as exc:  # never stop the bot over this; say what broke
        log.exception("unexpected error while setting up cross-signing")
        problem = type(exc).__name__
    log.warning(
        "cross-signing not in place (%s); clients that require cross-signed devices will "
        "not trust the bot's device until this is fixed and the bot restarted",
        problem,
    )
    return Outcome.UNAVAILABLE


async def _reconcile(
    server: HomeserverKeys,
    keys: CrossSigningKeys,
    *,
    created: bool,
    user_id: str,
    device_id: str,
    sign_with_device: Callable[[JsonDict], str],
    password: Callable[[], str | None],
) -> Outcome:
    published = PublishedIdentity.from_query(await server.query(user_id), user_id, device_id)
    outcome = Outcome.UNCHANGED
    if not published.matches(keys):
        if published.master is not None:
            log.warning(
                "the account's published cross-signing identity is not the one this bot "
                "holds; replacing it (master key %s)",
                keys.public("master"),
            )
        await server.upload_signing_keys(keys.upload_body(user_id), user_id, password)
        outcome = Outcome.CREATED if created else Outcome.REPUBLISHED
        log.info("cross-signing keys published: master key %s", keys.public("master"))
        published = PublishedIdentity.from_query(await server.query(user_id), user_id, device_id)
    if published.device is None:
        raise CrossSigningError(f"the homeserver has no keys for device {device_id}")

    to_sign: dict[str, JsonDict] = {}
    if not device_is_cross_signed(published, user_id, device_id):
        to_sign[device_id] = keys.sign_device(user_id, published.device)
    device_key_id = f"ed25519:{device_id}"
    device_ed25519 = published.device.get("keys", {}).get(device_key_id, "")
    assert published.master is not None
    if not verify_json(published.master, user_id, device_key_id, device_ed25519):
        master = keys.key_object(user_id, "master")
        master["signatures"] = {user_id: {device_key_id: sign_with_device(master)}}
        to_sign[keys.public("master")] = master
    if to_sign:
        await server.upload_signatures(to_sign)
        if outcome is Outcome.UNCHANGED:
            outcome = Outcome.DEVICE_SIGNED
        published = PublishedIdentity.from_query(await server.query(user_id), user_id, device_id)
        if not device_is_cross_signed(published, user_id, device_id):
            raise CrossSigningError("the homeserver does not show the device as cross-signed")
    log.info("cross-signing: %s; device %s is cross-signed", outcome.value, device_id)
    return outcome


def password_reader(first_start: str | None, source: SecretSource) -> Callable[[], str | None]:
    """The password if it was read at login, else read from its source only when asked."""

    def read() -> str | None:
        if first_start:
            return first_start
        try:
            return source.read()
        except ConfigError:
            return None

    return read


async def ensure_for_client(
    client: AsyncClient,
    *,
    files: DeviceFiles,
    store_key: str,
    password: Callable[[], str | None],
) -> Outcome:
    """`ensure_cross_signing` for a logged-in nio client whose device keys are uploaded."""
    return await ensure_cross_signing(
        homeserver=client.homeserver,
        user_id=client.user_id,
        device_id=client.device_id,
        access_token=client.access_token,
        sign_with_device=client.olm.sign_json,
        files=files,
        store_key=store_key,
        password=password,
    )
