"""Which devices get room keys, and what happens when a known device's keys change.

`[trust] mode`:

- ``tofu`` (trust on first use): every device of an allowed user is trusted with the keys
  it had when the bot first saw it.
- ``strict``: a device is trusted only once it has been verified interactively with the
  bot (emoji/SAS, `bot/verification.py`) or pinned by the operator in the configuration
  (`trust.pinned_devices`, the key checked in person). Every other device is blacklisted:
  it never gets a room key, and what it sends is not acted on (see `bot/sync_loop.py`).

In both modes the devices of users who are not allowed are blacklisted, and a device whose
keys differ from the ones first seen for its ID is refused for good and announced to the
advice team: a device ID never legitimately gets new keys, so a change means a
compromised account, a malicious homeserver, or a broken client.

The bot keeps its own record of every device's keys as first seen, in the database
(`kv` rows ``device:[user, device]``), because matrix-nio's record cannot be used for
this: it silently replaces a known device's Curve25519 key, and keeps the old Ed25519
key with only a log line when a new one is served. nio's per-device flags (verified,
blacklisted) are derived from this record: set at start, after every key query and
before every encrypted send, so a change of mode or of the pinned devices takes effect
on restart, and trust left over from the other mode never counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from nio import AsyncClient, KeysQueryResponse, MatrixRoom

from handlers.device_trust import KeyChange, announce_key_change
from handlers.settings import CurrentSettings, Settings
from schemas.config import PinnedDevice
from storage.engine import Store

log = logging.getLogger(__name__)

KV_PREFIX = "device:"

# How a device came to be trusted (or not). "seen": keys recorded, nothing checked.
SEEN, SAS, REFUSED = "seen", "sas", "refused"


@dataclass(frozen=True)
class DeviceRecord:
    user_id: str
    device_id: str
    ed25519: str
    curve25519: str
    trust: str  # seen | sas | refused
    since: str
    by: str | None = None  # who confirmed the verification
    refused_keys: tuple[str, str] | None = None  # (ed25519, curve25519) that were refused

    def to_json(self) -> str:
        return json.dumps(
            {
                "ed25519": self.ed25519,
                "curve25519": self.curve25519,
                "trust": self.trust,
                "since": self.since,
                "by": self.by,
                "refused_keys": list(self.refused_keys) if self.refused_keys else None,
            },
            sort_keys=True,
        )

    @classmethod
    def from_kv(cls, key: str, value: str) -> DeviceRecord:
        user_id, device_id = json.loads(key[len(KV_PREFIX) :])
        data = json.loads(value)
        refused = data.get("refused_keys")
        return cls(
            user_id=user_id,
            device_id=device_id,
            ed25519=data["ed25519"],
            curve25519=data["curve25519"],
            trust=data["trust"],
            since=data["since"],
            by=data.get("by"),
            refused_keys=(refused[0], refused[1]) if refused else None,
        )


def kv_key(user_id: str, device_id: str) -> str:
    return KV_PREFIX + json.dumps([user_id, device_id])


def key_change(record: DeviceRecord, ed25519: str, curve25519: str) -> tuple[str, ...]:
    """Which of a known device's keys differ from the ones first seen (empty: none)."""
    changed = []
    if ed25519 != record.ed25519:
        changed.append("ed25519")
    if curve25519 != record.curve25519:
        changed.append("curve25519")
    return tuple(changed)


class DeviceTrust:
    """The trust decision for every device the bot may send room keys to."""

    def __init__(
        self,
        client: AsyncClient,
        store: Store,
        settings: Settings | CurrentSettings,
        *,
        strict: bool,
        pinned: Iterable[PinnedDevice] = (),
    ) -> None:
        self.client = client
        self.store = store
        # The holder shared with the pipeline: roles as they are now, after any reload.
        self.current = CurrentSettings.of(settings)
        self.strict = strict
        self._pinned = {(p.user_id, p.device_id): p.ed25519 for p in pinned}
        self._records: dict[tuple[str, str], DeviceRecord] = {}
        # Held while trust flags change and while a room key is shared (by the messenger):
        # nio ignores "invalidate this room's session" while a share is under way, so a
        # change made during a share would not reach the session being shared.
        self.lock = asyncio.Lock()

    @property
    def settings(self) -> Settings:
        """The settings in force now (read on every use, never kept)."""
        return self.current.current

    async def load(self) -> None:
        async with self.store.transaction() as tx:
            rows = await tx.kv_with_prefix(KV_PREFIX)
        for key, value in rows:
            record = DeviceRecord.from_kv(key, value)
            self._records[(record.user_id, record.device_id)] = record

    # -- the decision --------------------------------------------------------------------

    def record(self, user_id: str, device_id: str) -> DeviceRecord | None:
        return self._records.get((user_id, device_id))

    def is_pinned(self, record: DeviceRecord) -> bool:
        return self._pinned.get((record.user_id, record.device_id)) == record.ed25519

    def is_verified(self, user_id: str, device_id: str) -> bool:
        """Checked interactively (SAS with the bot) or pinned by the operator, keys unchanged."""
        record = self.record(user_id, device_id)
        return (
            record is not None
            and record.trust != REFUSED
            and (record.trust == SAS or self.is_pinned(record))
        )

    def is_refused(self, user_id: str, device_id: str) -> bool:
        record = self.record(user_id, device_id)
        return record is not None and record.trust == REFUSED

    def is_refused_key(self, user_id: str, ed25519: str) -> bool:
        """A key that was refused for one of the user's sessions (a changed key)."""
        return any(
            r.user_id == user_id and r.refused_keys is not None and r.refused_keys[0] == ed25519
            for r in self._records.values()
        )

    def vouches_for(self, device: Any) -> bool:
        """A verified device whose keys are still the ones recorded."""
        record = self.record(device.user_id, device.id)
        return (
            record is not None
            and self.is_verified(device.user_id, device.id)
            and not key_change(record, device.ed25519, device.curve25519)
        )

    def is_trusted(self, user_id: str, device_id: str) -> bool:
        """Whether this device may get room keys (and, in strict mode, be listened to)."""
        if not self.settings.is_allowed(user_id):
            return False
        if self.strict:
            return self.is_verified(user_id, device_id)
        record = self.record(user_id, device_id)
        return record is not None and record.trust != REFUSED

    def verified_devices(self, user_id: str) -> list[str]:
        return sorted(d for (u, d) in self._records if u == user_id and self.is_verified(u, d))

    # -- observing keys ------------------------------------------------------------------

    async def observe(self, user_id: str, device_id: str, ed25519: str, curve25519: str) -> None:
        """Record a device's keys when first seen; refuse and announce a change."""
        record = self.record(user_id, device_id)
        if record is not None:
            changed = key_change(record, ed25519, curve25519)
            if not changed or record.refused_keys == (ed25519, curve25519):
                return
            await self._refuse(record, ed25519, curve25519, changed)
            return
        pin = self._pinned.get((user_id, device_id))
        async with self.store.transaction() as tx:
            record = DeviceRecord(
                user_id, device_id, ed25519, curve25519, SEEN, since=tx.now.isoformat()
            )
            await tx.set_kv(kv_key(user_id, device_id), record.to_json())
        self._records[(user_id, device_id)] = record
        if pin is not None and pin != ed25519:
            # The operator checked a different key for this device than the server serves.
            await self._refuse(record, ed25519, curve25519, ("ed25519",), pinned=pin)

    async def _refuse(
        self,
        record: DeviceRecord,
        ed25519: str,
        curve25519: str,
        changed: tuple[str, ...],
        pinned: str | None = None,
    ) -> None:
        refused = replace(record, trust=REFUSED, refused_keys=(ed25519, curve25519))
        change = KeyChange(
            user_id=record.user_id,
            device_id=record.device_id,
            changed=changed,
            old_ed25519=pinned or record.ed25519,
            new_ed25519=ed25519,
            pinned=pinned is not None,
        )
        async with self.store.transaction() as tx:
            await tx.set_kv(kv_key(record.user_id, record.device_id), refused.to_json())
            await announce_key_change(tx, self.settings, change)
        self._records[(record.user_id, record.device_id)] = refused
        log.warning(
            "refused a device whose keys changed: device=%s changed=%s",
            record.device_id,
            ",".join(changed),
        )
        device = self.client.device_store[record.user_id].get(record.device_id)
        if device is not None:
            self.client.blacklist_device(device)

    async def mark_verified(self, user_id: str, device_id: str, by: str) -> bool:
        """Record a completed interactive verification. False if the device was refused
        meanwhile or its keys are not the ones recorded."""
        async with self.lock:
            return await self._mark_verified(user_id, device_id, by)

    async def _mark_verified(self, user_id: str, device_id: str, by: str) -> bool:
        record = self.record(user_id, device_id)
        device = self.client.device_store[user_id].get(device_id)
        if device is None:
            return False
        if (
            record is None
            or record.trust == REFUSED
            or key_change(record, device.ed25519, device.curve25519)
        ):
            await self.apply_to([device])  # undo nio's own "verified" where it must not hold
            return False
        async with self.store.transaction() as tx:
            verified = replace(record, trust=SAS, since=tx.now.isoformat(), by=by)
            await tx.set_kv(kv_key(user_id, device_id), verified.to_json())
        self._records[(user_id, device_id)] = verified
        await self.apply_to([device])
        # The outbound session of a room was shared before this device counted: start a
        # new one, shared with it too, for the next message (nio's SAS path does not).
        for room in self.client.rooms.values():
            if room.encrypted and user_id in room.users:
                self.client.invalidate_outbound_session(room.room_id)
        return True

    async def query_keys(self) -> None:
        """`/keys/query` if nio wants it, checking every served key against the record.

        nio drops a new Ed25519 key for a known device (keeping the old one), so the raw
        response is the only place such a change can be seen.
        """
        async with self.lock:
            await self._query_keys()

    async def _query_keys(self) -> None:
        if not self.client.should_query_keys:
            return
        resp = await self.client.keys_query()  # nio has handled it by now
        if isinstance(resp, KeysQueryResponse):
            await self.check_response(resp)

    async def check_response(self, resp: KeysQueryResponse) -> None:
        """Every key the homeserver served, against the record; then decide the devices."""
        for user_id, devices in resp.device_keys.items():
            if not self.settings.is_allowed(user_id) or not isinstance(devices, dict):
                continue
            for device_id, payload in devices.items():
                keys = _payload_keys(payload, user_id, device_id)
                if keys is not None and not (
                    user_id == self.client.user_id and device_id == self.client.device_id
                ):
                    await self.observe(user_id, device_id, *keys)
        await self.apply_to(
            d
            for user_id in resp.device_keys
            for d in self.client.device_store.active_user_devices(user_id)
        )

    async def apply_locked(self, room: MatrixRoom) -> None:
        """Before an encrypted send, with `lock` held by the sender until the room key is
        shared: members known, keys fresh, every device decided."""
        assert self.lock.locked()
        if not room.members_synced:
            await self.client.joined_members(room.room_id)
        await self._query_keys()
        store = self.client.device_store
        await self.apply_to(d for u in room.users for d in store.active_user_devices(u))

    async def apply_all(self) -> None:
        """At start: decide every device nio knows (the mode or the pins may have changed)."""
        async with self.lock:
            await self.apply_to(
                d
                for user_id in list(self.client.device_store.users)
                for d in self.client.device_store.active_user_devices(user_id)
            )

    async def apply_to(self, devices: Iterable[Any]) -> None:
        """Set nio's flags from the record (call with `lock` held)."""
        client = self.client
        for device in list(devices):
            if device.user_id == client.user_id and device.id == client.device_id:
                continue
            if self.settings.is_allowed(device.user_id):
                await self.observe(device.user_id, device.id, device.ed25519, device.curve25519)
            if self.is_trusted(device.user_id, device.id):
                if not device.verified:
                    client.verify_device(device)
                    log.info("device trusted: device=%s mode=%s", device.id, self._mode)
            elif not device.blacklisted:
                client.blacklist_device(device)
                log.info("device not trusted: device=%s mode=%s", device.id, self._mode)

    @property
    def _mode(self) -> str:
        return "strict" if self.strict else "tofu"


def _payload_keys(payload: Any, user_id: str, device_id: str) -> tuple[str, str] | None:
    if not isinstance(payload, dict):
        return None
    if payload.get("user_id") != user_id or payload.get("device_id") != device_id:
        return None
    keys = payload.get("keys")
    if not isinstance(keys, dict):
        return None
    ed25519 = keys.get(f"ed25519:{device_id}")
    curve25519 = keys.get(f"curve25519:{device_id}")
    if not isinstance(ed25519, str) or not isinstance(curve25519, str):
        return None
    return ed25519, curve25519
