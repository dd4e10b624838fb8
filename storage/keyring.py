"""Keys derived from the database secret: field encryption and the child-matching hash.

One secret (`storage.database_key`) is stretched with HKDF into separate keys for separate
jobs, so the hash that matches records about the same child can never be used to decrypt
anything, and vice versa.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import unicodedata
from datetime import date

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_PREFIX = "enc1:"


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"referral-bot/v1", info=purpose).derive(
        secret.encode("utf-8")
    )


def normalise_name(name: str) -> str:
    """Name as compared for matching: case, accents, punctuation and spacing ignored."""
    decomposed = unicodedata.normalize("NFKD", name.casefold())
    letters = "".join(c for c in decomposed if c.isalnum() or c.isspace())
    return " ".join(letters.split())


class Keyring:
    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("the database key must be at least 16 characters")
        self._aead = AESGCM(_derive(secret, b"field-encryption"))
        self._match = _derive(secret, b"child-matching")
        self._chain = _derive(secret, b"record-chain")
        self._anchor = _derive(secret, b"record-checkpoints")

    @staticmethod
    def is_encrypted(value: str) -> bool:
        return value.startswith(_PREFIX)

    def encrypt(self, plaintext: str, context: str) -> str:
        """AES-256-GCM with a random nonce; `context` (e.g. a table and column) is bound in."""
        nonce = os.urandom(12)
        data = self._aead.encrypt(nonce, plaintext.encode("utf-8"), context.encode())
        return _PREFIX + base64.b64encode(nonce + data).decode("ascii")

    def decrypt(self, token: str, context: str) -> str:
        if not token.startswith(_PREFIX):
            raise ValueError("not an encrypted field")
        raw = base64.b64decode(token[len(_PREFIX) :])
        return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode("utf-8")

    def child_key(self, name: str, born: date | None) -> str:
        """A keyed hash of the child's normalised name and date of birth, for matching.

        Without the key it reveals nothing: the same child cannot be found by hashing a
        guessed name.
        """
        material = f"{normalise_name(name)}\x00{born.isoformat() if born else ''}"
        return hmac.new(self._match, material.encode("utf-8"), hashlib.sha256).hexdigest()

    def chain_hash(
        self, prev_hash: str, referral_id: int, at: str, actor: str, kind: str, detail: str
    ) -> str:
        """The running-record hash of one entry: HMAC-SHA256 over the previous entry's
        hash and this entry's fields, with `detail` as its plain canonical JSON.

        Keyed, so that someone who can write the database file but does not hold the key
        cannot recompute a chain after changing an entry. Over the plain detail rather than
        its ciphertext, so the chain says what was recorded, not how it was encrypted.
        """
        material = json.dumps(
            [prev_hash, referral_id, at, actor, kind, detail],
            ensure_ascii=True,
            separators=(",", ":"),
        )
        return hmac.new(self._chain, material.encode("ascii"), hashlib.sha256).hexdigest()

    def checkpoint_leaf(self, ref: str, entries: int, head: str) -> bytes:
        """A referral's part of a checkpoint: HMAC-SHA256 over its reference, how many
        running-record entries it has and the hash of the newest one."""
        material = json.dumps([ref, entries, head], ensure_ascii=True, separators=(",", ":"))
        return hmac.new(
            self._anchor, b"leaf\x00" + material.encode("ascii"), hashlib.sha256
        ).digest()

    def checkpoint_mac(self, body: str) -> str:
        """The keyed digest of one checkpoint line (its JSON without the `mac` field)."""
        return hmac.new(
            self._anchor, b"line\x00" + body.encode("utf-8"), hashlib.sha256
        ).hexdigest()

    def checkpoint_key_id(self) -> str:
        """Names the key a checkpoint line was made with, without revealing it."""
        return hmac.new(self._anchor, b"key-id", hashlib.sha256).hexdigest()[:16]
