"""The bot's nio store answers device trust from memory and stays in step with the file."""

from __future__ import annotations

from pathlib import Path

from nio.crypto import OlmAccount, OlmDevice
from nio.store import SqliteStore

from bot.trust_cache import TrustCachingStore


def test_trust_answers_follow_every_change_and_match_the_database(tmp_path: Path) -> None:
    store = TrustCachingStore("@bot:example.org", "BOTDEV", str(tmp_path), "k" * 32)
    store.save_account(OlmAccount())
    nurse = OlmDevice("@nurse:example.org", "NURSEDEV", {"ed25519": "e", "curve25519": "c"})
    store.save_device_keys({nurse.user_id: {nurse.id: nurse}})

    assert not store.is_device_verified(nurse) and not store.is_device_blacklisted(nurse)
    assert store.verify_device(nurse)
    assert store.is_device_verified(nurse)
    assert store.blacklist_device(nurse)
    assert store.is_device_blacklisted(nurse) and not store.is_device_verified(nurse)

    # Another store on the same file (no cache) sees exactly the same.
    plain = SqliteStore("@bot:example.org", "BOTDEV", str(tmp_path), "k" * 32)
    assert plain.is_device_blacklisted(nurse) and not plain.is_device_verified(nurse)
    assert plain.unblacklist_device(nurse)
    # A change made elsewhere is seen once the device rows are saved again (a key query).
    store.save_device_keys({nurse.user_id: {nurse.id: nurse}})
    assert not store.is_device_blacklisted(nurse)
