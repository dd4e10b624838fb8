"""Compatibility shim: the keyring lives in `storage.keyring` (to be deleted after merge)."""

from storage.keyring import Keyring, normalise_name

__all__ = ["Keyring", "normalise_name"]
