"""The database key the unit tests use (a real key, derived like any other)."""

from __future__ import annotations

from storage.keyring import Keyring

TEST_KEY = "unit-test-database-key-0123456789abcdef"
KEYRING = Keyring(TEST_KEY)
