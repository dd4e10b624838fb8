"""Canonical JSON, signatures, key objects and the encrypted key file of cross-signing."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import canonicaljson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from bot.cross_signing import (
    KEY_FILE,
    CrossSigningKeys,
    KeyFileError,
    PublishedIdentity,
    canonical_json,
    device_is_cross_signed,
    key_object_public,
    load_keys,
    public_key_b64,
    save_keys,
    sign_json,
    unpadded_b64decode,
    unpadded_b64encode,
    verify_json,
)

# Matrix spec, appendix "Cryptographic test vectors": this seed signs as "domain", "ed25519:1".
SPEC_SEED = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
USER = "@bot:example.org"


def spec_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(unpadded_b64decode(SPEC_SEED))


def test_spec_vector_empty_object() -> None:
    signed = sign_json({}, "domain", "ed25519:1", spec_key())
    assert signed == {
        "signatures": {
            "domain": {
                "ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/"
                "7Xg4ahLwYGYZzuHGZKM5ZAQ"
            }
        }
    }


def test_spec_vector_simple_object() -> None:
    signed = sign_json({"one": 1, "two": "Two"}, "domain", "ed25519:1", spec_key())
    assert signed["signatures"]["domain"]["ed25519:1"] == (
        "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
    )
    assert signed["one"] == 1 and signed["two"] == "Two"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Examples from the spec's "Canonical JSON" section.
        ({}, "{}"),
        ({"one": 1, "two": "Two"}, '{"one":1,"two":"Two"}'),
        ({"b": "2", "a": "1"}, '{"a":"1","b":"2"}'),
        (
            {
                "auth": {
                    "success": True,
                    "mxid": "@john.doe:example.com",
                    "profile": {
                        "display_name": "John Doe",
                        "three_pids": [
                            {"medium": "email", "address": "john.doe@example.org"},
                            {"medium": "msisdn", "address": "123456789"},
                        ],
                    },
                }
            },
            '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
            '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
            '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
        ),
        ({"a": "日本語"}, '{"a":"日本語"}'),
        ({"本": 2, "日": 1}, '{"日":1,"本":2}'),
        ({"a": "\u65e5"}, '{"a":"日"}'),
        ({"a": None}, '{"a":null}'),
    ],
)
def test_canonical_json_spec_examples(value: Any, expected: str) -> None:
    assert canonical_json(value) == expected.encode("utf-8")


def test_canonical_json_refuses_floats() -> None:
    with pytest.raises(TypeError):
        canonical_json({"a": object()})
    with pytest.raises(ValueError):
        canonical_json({"a": float("nan")})


_text = st.text(st.characters(codec="utf-8"), max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@given(value=st.dictionaries(_text, _json, max_size=6))
def test_canonical_json_matches_synapse_canonicaljson(value: dict[str, Any]) -> None:
    assert canonical_json(value) == canonicaljson.encode_canonical_json(value)


@given(value=st.dictionaries(_text, _json, max_size=6))
def test_signature_verifies_with_synapse_signedjson(value: dict[str, Any]) -> None:
    """Our signature over any JSON object is one Synapse's own library accepts."""
    key = Ed25519PrivateKey.generate()
    public = public_key_b64(key)
    signed = sign_json(value, USER, "ed25519:abc", key)
    verify_signed_json(
        json.loads(json.dumps(signed)),
        USER,
        decode_verify_key_bytes("ed25519:abc", unpadded_b64decode(public)),
    )
    assert verify_json(signed, USER, "ed25519:abc", public)


def test_verify_ignores_unsigned_and_rejects_changes() -> None:
    key = Ed25519PrivateKey.generate()
    public = public_key_b64(key)
    signed = sign_json({"a": 1, "unsigned": {"x": 1}}, USER, "ed25519:k", key)
    assert verify_json({**signed, "unsigned": {"y": 2}}, USER, "ed25519:k", public)
    assert not verify_json({**signed, "a": 2}, USER, "ed25519:k", public)
    assert not verify_json(signed, USER, "ed25519:other", public)
    assert not verify_json(signed, "@else:example.org", "ed25519:k", public)
    other = public_key_b64(Ed25519PrivateKey.generate())
    assert not verify_json(signed, USER, "ed25519:k", other)
    assert not verify_json(signed, USER, "ed25519:k", "not base64!")
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(
            {**signed, "a": 2},
            USER,
            decode_verify_key_bytes("ed25519:k", unpadded_b64decode(public)),
        )


def test_sign_json_keeps_other_signatures_and_does_not_mutate() -> None:
    key = Ed25519PrivateKey.generate()
    original = {"a": 1, "signatures": {USER: {"ed25519:DEV": "sig"}}}
    signed = sign_json(original, USER, "ed25519:k", key)
    assert original == {"a": 1, "signatures": {USER: {"ed25519:DEV": "sig"}}}
    assert set(signed["signatures"][USER]) == {"ed25519:DEV", "ed25519:k"}


def test_unpadded_base64_round_trip() -> None:
    for n in range(5):
        data = bytes(range(n))
        text = unpadded_b64encode(data)
        assert "=" not in text
        assert unpadded_b64decode(text) == data


def fake_device(device_id: str = "DEVICE") -> tuple[Ed25519PrivateKey, dict[str, Any]]:
    key = Ed25519PrivateKey.generate()
    obj = {
        "user_id": USER,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            f"curve25519:{device_id}": "c" * 43,
            f"ed25519:{device_id}": public_key_b64(key),
        },
    }
    obj = sign_json(obj, USER, f"ed25519:{device_id}", key)
    obj["unsigned"] = {"device_display_name": "referral-bot"}
    return key, obj


def test_key_objects_form_a_valid_chain() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.upload_body(USER)
    master = body["master_key"]
    assert master["usage"] == ["master"]
    assert key_object_public(master) == keys.public("master")
    assert body["self_signing_key"]["usage"] == ["self_signing"]
    assert body["user_signing_key"]["usage"] == ["user_signing"]
    for name in ("self_signing_key", "user_signing_key"):
        assert verify_json(body[name], USER, keys.key_id("master"), keys.public("master"))
    assert len({keys.public(u) for u in ("master", "self_signing", "user_signing")}) == 3

    _, device = fake_device()
    signed_device = keys.sign_device(USER, device)
    assert "unsigned" not in signed_device
    assert set(signed_device["signatures"][USER]) == {keys.key_id("self_signing")}
    published = PublishedIdentity(master, body["self_signing_key"], signed_device)
    assert device_is_cross_signed(published, USER, "DEVICE")
    assert not device_is_cross_signed(published, USER, "OTHER")
    assert not device_is_cross_signed(published, "@else:example.org", "DEVICE")


def test_chain_breaks_when_any_link_is_wrong() -> None:
    keys = CrossSigningKeys.generate()
    body = keys.upload_body(USER)
    _, device = fake_device()
    signed_device = keys.sign_device(USER, device)
    other = CrossSigningKeys.generate()
    other_body = other.upload_body(USER)

    # Self-signing key signed by another master key.
    assert not device_is_cross_signed(
        PublishedIdentity(body["master_key"], other_body["self_signing_key"], signed_device),
        USER,
        "DEVICE",
    )
    # Device signed by another self-signing key.
    assert not device_is_cross_signed(
        PublishedIdentity(body["master_key"], body["self_signing_key"], device), USER, "DEVICE"
    )
    # Device keys changed after signing.
    changed = {**signed_device, "keys": {**signed_device["keys"], "curve25519:DEVICE": "x"}}
    assert not device_is_cross_signed(
        PublishedIdentity(body["master_key"], body["self_signing_key"], changed), USER, "DEVICE"
    )
    # The user-signing key standing in for the self-signing key.
    assert not device_is_cross_signed(
        PublishedIdentity(body["master_key"], body["user_signing_key"], signed_device),
        USER,
        "DEVICE",
    )
    assert not device_is_cross_signed(PublishedIdentity(None, None, None), USER, "DEVICE")


def test_key_file_round_trip_is_private_and_encrypted(tmp_path: Path) -> None:
    keys = CrossSigningKeys.generate()
    path = tmp_path / KEY_FILE
    save_keys(path, keys, USER, "store-key-" + "x" * 30)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for usage in ("master", "self_signing", "user_signing"):
        seed = keys.by_usage(usage).private_bytes_raw()
        assert unpadded_b64encode(seed) not in text
        assert seed.hex() not in text
    loaded = load_keys(path, USER, "store-key-" + "x" * 30)
    assert loaded is not None
    for usage in ("master", "self_signing", "user_signing"):
        assert loaded.public(usage) == keys.public(usage)
        assert (
            loaded.by_usage(usage).private_bytes_raw() == keys.by_usage(usage).private_bytes_raw()
        )

    assert load_keys(tmp_path / "missing.json", USER, "k" * 32) is None
    with pytest.raises(KeyFileError, match="store_key"):
        load_keys(path, USER, "another-store-key-" + "y" * 30)
    with pytest.raises(KeyFileError, match="another account"):
        load_keys(path, "@other:example.org", "store-key-" + "x" * 30)


def test_key_file_entries_cannot_be_swapped(tmp_path: Path) -> None:
    secret = "s" * 40
    path = tmp_path / KEY_FILE
    save_keys(path, CrossSigningKeys.generate(), USER, secret)
    data = json.loads(path.read_text())
    keys = data["keys"]
    keys["master"]["sealed"], keys["self_signing"]["sealed"] = (
        keys["self_signing"]["sealed"],
        keys["master"]["sealed"],
    )
    path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError):
        load_keys(path, USER, secret)
    path.write_text("{not json")
    with pytest.raises(KeyFileError):
        load_keys(path, USER, secret)
