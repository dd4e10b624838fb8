"""matrix-nio's store with device trust answered from memory (the bot's E2EE store on
SQLite; bot/crypto_store_pg.py puts the same on PostgreSQL)."""

from __future__ import annotations

from typing import Any

from nio.crypto import OlmDevice, TrustState
from nio.store import SqliteStore


class TrustCachingStore(SqliteStore):  # type: ignore[misc]
    """matrix-nio's SqliteStore with device trust answered from memory.

    nio asks the store whether the sender's device is verified for every event it
    decrypts, and about every device each time it shares a room key; the SqliteStore
    answers each question with two SQL queries through peewee (about 5 ms each here, the
    largest cost in the bot's own process under load). Trust only changes through the
    methods below, and device rows only through `save_device_keys`, so the answer is kept
    in memory and forgotten whenever either happens.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trust: dict[tuple[str, str], TrustState] = {}

    def _state(self, device: OlmDevice) -> TrustState:
        key = (device.user_id, device.id)
        state = self._trust.get(key)
        if state is None:
            if super().is_device_verified(device):
                state = TrustState.verified
            elif super().is_device_blacklisted(device):
                state = TrustState.blacklisted
            elif super().is_device_ignored(device):
                state = TrustState.ignored
            else:
                state = TrustState.unset
            self._trust[key] = state
        return state

    def is_device_verified(self, device: OlmDevice) -> bool:
        return bool(self._state(device) == TrustState.verified)

    def is_device_blacklisted(self, device: OlmDevice) -> bool:
        return bool(self._state(device) == TrustState.blacklisted)

    def is_device_ignored(self, device: OlmDevice) -> bool:
        return bool(self._state(device) == TrustState.ignored)

    def _changed(self, result: Any) -> Any:
        self._trust.clear()
        return result

    def verify_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().verify_device(device)))

    def unverify_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().unverify_device(device)))

    def blacklist_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().blacklist_device(device)))

    def unblacklist_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().unblacklist_device(device)))

    def ignore_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().ignore_device(device)))

    def unignore_device(self, device: OlmDevice) -> bool:
        return bool(self._changed(super().unignore_device(device)))

    def ignore_devices(self, devices: list[OlmDevice]) -> None:
        self._changed(super().ignore_devices(devices))

    def save_device_keys(self, device_keys: Any) -> None:
        self._changed(super().save_device_keys(device_keys))
