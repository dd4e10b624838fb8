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
        8,
        """
        -- Where a referral's updates go (issue 10): the thread its acknowledgement is in,
        -- or NULL for none (updates are then replies to the referral's message). Until now
        -- that was always a thread on the referral's own event.
        ALTER TABLE referrals ADD COLUMN thread_root TEXT;
        UPDATE referrals SET thread_root = event_id;

        -- A message the homeserver refused for good (4xx other than 429, the bot not in the
        -- room) is given up after a few attempts, so that it never blocks its room's later
        -- messages: failed_at set (and sent_at, which takes it out of the queue),
        -- last_error its HTTP status and errcode. `referral-bot outbox --retry` requeues it.
        ALTER TABLE outbox ADD COLUMN failed_at TEXT;
        CREATE INDEX outbox_failed ON outbox (failed_at) WHERE failed_at IS NOT NULL;
        """,
    ),
    (
        9,
        """
        -- A message whose room key arrived late (issue 10): when it was decrypted, so its
        -- referral's running record can say it arrived late and what overtook it.
        ALTER TABLE inbox ADD COLUMN decrypted_at TEXT;
        """,
    ),
    (
        10,
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
    (
        11,
        """
        -- Files attached to referrals (issue 14). A file arrives as an end-to-end encrypted
        -- media event; the handler records a job (the event's encrypted-file descriptor,
        -- itself encrypted here) and a worker downloads, checks and stores it outside any
        -- write transaction. `media` and `error` are cleared/kept so that a finished job
        -- holds no key to the homeserver's copy.
        CREATE TABLE attachment_jobs (
            id          INTEGER PRIMARY KEY,
            event_id    TEXT    NOT NULL UNIQUE,
            room_id     TEXT    NOT NULL,
            sender      TEXT    NOT NULL,
            referral_id INTEGER NOT NULL REFERENCES referrals (id),
            thread_root TEXT,
            media       TEXT,
            state       TEXT    NOT NULL CHECK (state IN ('pending', 'done', 'refused')),
            attempts    INTEGER NOT NULL DEFAULT 0,
            error       TEXT,
            created_at  TEXT    NOT NULL,
            done_at     TEXT
        );
        CREATE INDEX attachment_jobs_pending ON attachment_jobs (room_id, id)
            WHERE state = 'pending';

        -- The stored files. `data` is AES-256-GCM under a key of its own (`file_key`,
        -- wrapped by the database key's field encryption, bound to the row's uid);
        -- `meta` (file name, caption) is field-encrypted too. `sha256`, `size` and `kind`
        -- are of the plaintext and carry no personal data; the running record has them.
        CREATE TABLE attachments (
            id          INTEGER PRIMARY KEY,
            uid         TEXT    NOT NULL UNIQUE,
            referral_id INTEGER NOT NULL REFERENCES referrals (id),
            event_id    TEXT    NOT NULL UNIQUE,
            sender      TEXT    NOT NULL,
            added_at    TEXT    NOT NULL,
            kind        TEXT    NOT NULL,
            mimetype    TEXT    NOT NULL,
            size        INTEGER NOT NULL,
            sha256      TEXT    NOT NULL,
            meta        TEXT    NOT NULL,
            file_key    TEXT    NOT NULL,
            data        BLOB    NOT NULL
        );
        CREATE INDEX attachments_by_referral ON attachments (referral_id, id);

        -- `!attach REF-…`: the sender's next files in that room go to that referral until
        -- `until`.
        CREATE TABLE attach_windows (
            room_id     TEXT    NOT NULL,
            sender      TEXT    NOT NULL,
            referral_id INTEGER NOT NULL REFERENCES referrals (id),
            until       TEXT    NOT NULL,
            PRIMARY KEY (room_id, sender)
        );

        -- A file sent as a reply to the bot's acknowledgement (or another message of a
        -- referral's) goes to that referral: found by the event the bot sent.
        CREATE INDEX outbox_by_sent_event ON outbox (sent_event_id)
            WHERE sent_event_id IS NOT NULL;
        """,
    ),
    (
        12,
        """
        -- Reports (issue 14, part 3): the figures for a period are counted from these
        -- indexes alone, never from the table rows (which hold the encrypted forms): what
        -- was received in the period, what was decided in it, and earlier records about
        -- the same child (keyed hash) in the 12 months before each.
        CREATE INDEX referrals_report_received ON referrals
            (received_at, current_type, declared_type, agency, child_key);
        CREATE INDEX referrals_report_decided ON referrals
            (decided_at, received_at, decision_due, outcome);
        CREATE INDEX referrals_report_child ON referrals (child_key, received_at);
        """,
    ),
    (
        13,
        """
        -- An outcome is stored by its key (issue 11), as `!decide` takes it, not by its
        -- display text: the wording can then change without touching stored rows. Only
        -- this column: the running record's `decided` entries keep the text they were
        -- chained with. The texts are those of schemas/domain.py `Outcome` before this step.
        UPDATE referrals SET outcome = CASE outcome
            WHEN 'proceed to child and family assessment' THEN 'assessment'
            WHEN 'strategy discussion (section 47)' THEN 'strategy'
            WHEN 'early help' THEN 'early-help'
            WHEN 'no further action, with advice/signposting' THEN 'nfa'
            ELSE outcome END
        WHERE outcome IS NOT NULL;
        """,
    ),
    (
        14,
        """
        -- Nothing on local disk, and one leader among many processes (issue 13, parts 2
        -- and 3). device_files: what otherwise lives beside the database in data_dir
        -- (credentials.json: the access token and device ID; cross_signing.json), each
        -- sealed with storage.store_key. Used on PostgreSQL only (SQLite keeps the files in
        -- data_dir); made on both so that the two schemas stay one.
        CREATE TABLE device_files (
            name        TEXT    PRIMARY KEY,
            content     BLOB    NOT NULL,
            updated_at  TEXT    NOT NULL
        );

        -- One row. A process that becomes leader adds one to `epoch` in the transaction
        -- that makes it leader, and every write transaction of its checks that the epoch
        -- is still its own (storage/leader.py): a process that lost the lead writes nothing.
        CREATE TABLE leader (
            id          INTEGER PRIMARY KEY CHECK (id = 1),
            epoch       INTEGER NOT NULL,
            holder      TEXT    NOT NULL,
            since       TEXT    NOT NULL
        );
        INSERT INTO leader (id, epoch, holder, since) VALUES (1, 0, '', '');
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]
