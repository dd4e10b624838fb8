"""Numbered schema steps. Each step runs once, in its own transaction, in order.

Never edit a step that has shipped: add a new one. `tests/unit/test_store.py` upgrades a
database from the first version to the last.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE kv (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );

        -- Every timeline event the bot must act on, written before the sync token moves on.
        -- payload is cleared once the event is handled, so message text does not linger.
        CREATE TABLE inbox (
            seq            INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id       TEXT    NOT NULL UNIQUE,
            room_id        TEXT    NOT NULL,
            sender         TEXT    NOT NULL,
            origin_ts      INTEGER NOT NULL,
            room_encrypted INTEGER NOT NULL,
            state          TEXT    NOT NULL CHECK (state IN ('pending', 'undecrypted', 'done')),
            payload        TEXT,
            received_at    TEXT    NOT NULL,
            handled_at     TEXT
        );
        CREATE INDEX inbox_by_state ON inbox (state, room_id, seq);

        CREATE TABLE referrals (
            id               INTEGER PRIMARY KEY,
            ref              TEXT    NOT NULL UNIQUE,
            year             INTEGER NOT NULL,
            year_seq         INTEGER NOT NULL,
            event_id         TEXT    NOT NULL UNIQUE,
            room_id          TEXT    NOT NULL,
            sender           TEXT    NOT NULL,
            received_at      TEXT    NOT NULL,
            declared_type    TEXT    NOT NULL
                CHECK (declared_type IN ('child protection referral', 'contact')),
            declared_by      TEXT    NOT NULL,
            current_type     TEXT    NOT NULL
                CHECK (current_type IN ('child protection referral', 'contact')),
            immediate_danger INTEGER NOT NULL,
            state            TEXT    NOT NULL,
            decision_due     TEXT    NOT NULL,
            form             TEXT    NOT NULL,
            UNIQUE (year, year_seq)
        );

        -- The running record of a referral: append-only, enforced by triggers.
        CREATE TABLE record_entries (
            id          INTEGER PRIMARY KEY,
            referral_id INTEGER NOT NULL REFERENCES referrals (id),
            at          TEXT    NOT NULL,
            actor       TEXT    NOT NULL,
            kind        TEXT    NOT NULL,
            detail      TEXT    NOT NULL
        );
        CREATE INDEX record_by_referral ON record_entries (referral_id, id);
        CREATE TRIGGER record_entries_no_update BEFORE UPDATE ON record_entries
            BEGIN SELECT RAISE(ABORT, 'the running record is append-only'); END;
        CREATE TRIGGER record_entries_no_delete BEFORE DELETE ON record_entries
            BEGIN SELECT RAISE(ABORT, 'the running record is append-only'); END;

        -- Messages to send, stored in the same transaction as the change they report.
        CREATE TABLE outbox (
            id           INTEGER PRIMARY KEY,
            txn_id       TEXT    NOT NULL UNIQUE,
            room_id      TEXT    NOT NULL,
            content      TEXT    NOT NULL,
            sensitive    INTEGER NOT NULL,
            referral_id  INTEGER REFERENCES referrals (id),
            purpose      TEXT    NOT NULL,
            created_at   TEXT    NOT NULL,
            attempts     INTEGER NOT NULL DEFAULT 0,
            last_error   TEXT,
            sent_event_id TEXT,
            sent_at      TEXT
        );
        CREATE INDEX outbox_unsent ON outbox (sent_at, room_id, id);
        """,
    ),
    # Step 2 is the advice-team workflow (another branch); this step is numbered after it.
    (
        3,
        """
        -- What is stored (issue 5). referrals.form, record_entries.detail, outbox.content
        -- and inbox.payload hold AES-GCM ciphertext from now on ("enc1:..."); rows written
        -- before this step are encrypted by Store.open (bot/store.py, _seal_legacy_rows).
        -- child_key: keyed hash (HMAC) of the child's name and date of birth, for matching
        -- records about the same child without storing the name in clear.
        -- MERGE NOTE: step 2 of the workflow branch adds the same column and index; when both
        -- are merged keep only one ALTER TABLE for child_key.
        ALTER TABLE referrals ADD COLUMN child_key TEXT;
        CREATE INDEX IF NOT EXISTS referrals_child ON referrals (child_key);

        -- Tamper evidence: each entry's hash is an HMAC over the previous entry's hash and
        -- this entry's fields, chained per referral (bot/keyring.py, Keyring.chain_hash).
        ALTER TABLE record_entries ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
        ALTER TABLE record_entries ADD COLUMN hash TEXT;

        -- Retention: what was destroyed, when and under which rule. No personal data.
        CREATE TABLE purged_referrals (
            ref          TEXT PRIMARY KEY,
            record_class TEXT NOT NULL,
            received_at  TEXT NOT NULL,
            purged_at    TEXT NOT NULL,
            rule         TEXT NOT NULL
        );

        -- Store.open seals (encrypts and chains) the rows written before this step, once.
        INSERT INTO kv (key, value) VALUES ('legacy_rows_to_seal', '1');
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]
