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
    (
        2,
        """
        -- The advice team's workflow: claim, RAG rating, decision, reclassification,
        -- reminders, telephone referrals and matching records about the same child.
        ALTER TABLE referrals ADD COLUMN claimed_by TEXT;
        ALTER TABLE referrals ADD COLUMN claimed_at TEXT;
        ALTER TABLE referrals ADD COLUMN rag TEXT CHECK (rag IN ('red', 'amber', 'green'));
        ALTER TABLE referrals ADD COLUMN outcome TEXT;
        ALTER TABLE referrals ADD COLUMN decided_by TEXT;
        ALTER TABLE referrals ADD COLUMN decided_at TEXT;
        ALTER TABLE referrals ADD COLUMN pending_reclassification TEXT;
        ALTER TABLE referrals ADD COLUMN channel TEXT NOT NULL DEFAULT 'matrix';
        ALTER TABLE referrals ADD COLUMN written_followup_due TEXT;
        ALTER TABLE referrals ADD COLUMN written_followup_at TEXT;
        ALTER TABLE referrals ADD COLUMN followup_flagged_at TEXT;
        ALTER TABLE referrals ADD COLUMN child_key TEXT;
        ALTER TABLE referrals ADD COLUMN agency TEXT;
        ALTER TABLE referrals ADD COLUMN last_reminder_at TEXT;
        ALTER TABLE referrals ADD COLUMN reminder_count INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX referrals_open ON referrals (state, received_at);
        CREATE INDEX referrals_child ON referrals (child_key);

        -- Links and unlinks made by hand between records about the same child.
        CREATE TABLE referral_links (
            low_id  INTEGER NOT NULL REFERENCES referrals (id),
            high_id INTEGER NOT NULL REFERENCES referrals (id),
            linked  INTEGER NOT NULL,
            by_user TEXT    NOT NULL,
            at      TEXT    NOT NULL,
            PRIMARY KEY (low_id, high_id),
            CHECK (low_id < high_id)
        );
        """,
    ),
    (
        3,
        """
        -- Strategy meetings: an encrypted room per meeting, who was asked and who came,
        -- and what was said, decided and agreed.
        CREATE TABLE meetings (
            id          INTEGER PRIMARY KEY,
            referral_id INTEGER NOT NULL REFERENCES referrals (id),
            event_id    TEXT    NOT NULL UNIQUE,
            room_id     TEXT    UNIQUE,
            chair       TEXT    NOT NULL,
            called_by   TEXT    NOT NULL,
            scheduled   TEXT,
            state       TEXT    NOT NULL CHECK (state IN ('creating', 'open', 'closed')),
            created_at  TEXT    NOT NULL,
            closed_at   TEXT,
            close_note  TEXT
        );
        CREATE INDEX meetings_by_referral ON meetings (referral_id);

        CREATE TABLE meeting_participants (
            meeting_id INTEGER NOT NULL REFERENCES meetings (id),
            user_id    TEXT    NOT NULL,
            agency     TEXT,
            role       TEXT    NOT NULL,
            status     TEXT    NOT NULL
                CHECK (status IN ('to_invite', 'invited', 'joined', 'declined', 'left')),
            PRIMARY KEY (meeting_id, user_id)
        );

        CREATE TABLE meeting_items (
            id          INTEGER PRIMARY KEY,
            meeting_id  INTEGER NOT NULL REFERENCES meetings (id),
            number      INTEGER,
            kind        TEXT    NOT NULL CHECK (kind IN ('info', 'view_child', 'view_parents',
                                 'action', 'recommendation', 'decision')),
            author      TEXT    NOT NULL,
            agency      TEXT,
            at          TEXT    NOT NULL,
            text        TEXT    NOT NULL,
            owner       TEXT,
            due         TEXT,
            done_at     TEXT,
            done_by     TEXT,
            reminded_at TEXT,
            overdue_told_at TEXT
        );
        CREATE INDEX meeting_items_by_meeting ON meeting_items (meeting_id, kind);

        -- Work on the homeserver other than sending messages (creating rooms, inviting),
        -- stored in the transaction that asked for it and done by the shell.
        CREATE TABLE room_jobs (
            id         INTEGER PRIMARY KEY,
            kind       TEXT    NOT NULL CHECK (kind IN ('create_meeting', 'invite', 'power')),
            meeting_id INTEGER NOT NULL REFERENCES meetings (id),
            user_id    TEXT,
            created_at TEXT    NOT NULL,
            done_at    TEXT,
            attempts   INTEGER NOT NULL DEFAULT 0,
            last_error TEXT
        );
        CREATE INDEX room_jobs_pending ON room_jobs (done_at, id);
        """,
    ),
    (
        4,
        """
        -- What is stored (issue 5). referrals.form, record_entries.detail, outbox.content
        -- and inbox.payload hold AES-GCM ciphertext from now on ("enc1:..."); rows written
        -- before this step are encrypted by Store.open (bot/store.py, _seal_legacy_rows).
        -- child_key: keyed hash (HMAC) of the child's name and date of birth, for matching
        -- records about the same child without storing the name in clear.
        -- (The column and its index come from step 2.)

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
    (
        5,
        """
        -- The deadline clock asks for telephone referrals with an overdue written follow-up
        -- on every tick, inside its write transaction; without an index that read the
        -- whole referrals table (docs/BENCHMARKS.md). Partial: only the ones still waiting.
        CREATE INDEX referrals_followup_due ON referrals (written_followup_due)
            WHERE channel = 'phone' AND written_followup_at IS NULL
            AND followup_flagged_at IS NULL;
        """,
    ),
    (
        6,
        """
        -- /metrics counts referrals by type and state on every scrape. Without an index
        -- that read every row of referrals, forms included (900 MB with 100,000 of them:
        -- 0.1 s from the page cache, 2.4 s from disk); this index answers it alone.
        CREATE INDEX referrals_by_type_state ON referrals (current_type, state);

        -- New-referral summaries that go to the advice-team room together, as one
        -- message: the batch's transaction ID, fixed before the send so that a retry after
        -- a crash sends exactly the same batch (the homeserver drops the copy).
        ALTER TABLE outbox ADD COLUMN batch TEXT;
        """,
    ),
    (
        7,
        """
        -- The deadline clock asks for open referrals due soon (Tx.due_for_reminder): with
        -- this it reads only those, not every open referral, inside its write transaction
        -- (5,500 open referrals: 183-392 ms a tick before, 5-18 ms after).
        CREATE INDEX referrals_open_due ON referrals (state, decision_due);
        """,
    ),
    (
        11,
        """
        -- Guided referrals (issue 12): the draft of a referral answered one question at a
        -- time, stored after every answer. One per practitioner per room. `state` is
        -- AES-GCM ciphertext bound to the row (room, user, the event that started it);
        -- times are clear so the clock can expire drafts and remind without decrypting.
        CREATE TABLE drafts (
            id          INTEGER PRIMARY KEY,
            room_id     TEXT    NOT NULL,
            user_id     TEXT    NOT NULL,
            started_by  TEXT    NOT NULL,
            state       TEXT    NOT NULL,
            created_at  TEXT    NOT NULL,
            updated_at  TEXT    NOT NULL,
            expires_at  TEXT    NOT NULL,
            remind_at   TEXT,
            UNIQUE (room_id, user_id)
        );
        CREATE INDEX drafts_expiry ON drafts (expires_at);
        CREATE INDEX drafts_reminder ON drafts (remind_at) WHERE remind_at IS NOT NULL;

        -- A referrer's own details (name, role, agency, phone), kept after a guided
        -- referral and offered next time; `!me forget` deletes them. Encrypted, bound to
        -- the user.
        CREATE TABLE saved_referrers (
            user_id  TEXT PRIMARY KEY,
            details  TEXT NOT NULL,
            saved_at TEXT NOT NULL
        );
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]
