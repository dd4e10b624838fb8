from datetime import date

import pytest
from cryptography.exceptions import InvalidTag

from storage.keyring import Keyring, normalise_name


def test_round_trip_and_context_binding() -> None:
    k = Keyring("s" * 32)
    token = k.encrypt("Alex Testchild", "referrals.form")
    assert "Alex" not in token
    assert k.decrypt(token, "referrals.form") == "Alex Testchild"
    with pytest.raises(InvalidTag):
        k.decrypt(token, "record_entries.detail")
    with pytest.raises(InvalidTag):
        Keyring("t" * 32).decrypt(token, "referrals.form")


def test_child_key_matches_normalised_names_only_with_the_same_secret() -> None:
    k = Keyring("s" * 32)
    born = date(2014, 5, 2)
    assert k.child_key("Zoë  O'Brien", born) == k.child_key("zoe obrien", born)
    assert k.child_key("Zoe OBrien", born) != k.child_key("Zoe OBrien", date(2014, 5, 3))
    assert Keyring("t" * 32).child_key("Zoe OBrien", born) != k.child_key("Zoe OBrien", born)
    assert normalise_name(" Émile-Jean ") == "emilejean"
