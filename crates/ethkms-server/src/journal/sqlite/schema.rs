//! The SQLite journal's schema: its migrations, applied in order at open (`PRAGMA user_version` counts
//! them), and the condition of an open row.

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: [&str; 8] = [
    // 1: withdrawals, their attempts, and amounts counted against daily limits.
    "
CREATE TABLE withdrawals (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    client TEXT,
    idempotency_key TEXT,
    key TEXT NOT NULL,
    recipient TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    status TEXT NOT NULL,
    nonce INTEGER,
    tx_hash TEXT,
    block_number INTEGER,
    error TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (client, idempotency_key)
);
CREATE INDEX open_withdrawals ON withdrawals (status) WHERE status IN ('accepted', 'signed', 'submitted');
CREATE TABLE attempts (
    withdrawal TEXT NOT NULL REFERENCES withdrawals (id),
    number INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    raw BLOB NOT NULL,
    max_fee_per_gas TEXT NOT NULL,
    priority_fee_per_gas TEXT NOT NULL,
    signed_ms INTEGER NOT NULL,
    PRIMARY KEY (withdrawal, number)
);
CREATE TABLE spends (
    key TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
",
    // 2: RPC transactions, confirmations, cancellation, and amounts given back.
    "
ALTER TABLE withdrawals ADD COLUMN request TEXT;
ALTER TABLE withdrawals ADD COLUMN block_hash TEXT;
ALTER TABLE withdrawals ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE withdrawals ADD COLUMN confirmed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN cancel INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spends ADD COLUMN withdrawal TEXT;
CREATE INDEX spends_by_withdrawal ON spends (withdrawal) WHERE withdrawal IS NOT NULL;
DROP INDEX open_withdrawals;
CREATE INDEX open_rows ON withdrawals (status) WHERE confirmed = 0 AND status NOT IN ('confirmed', 'failed');
",
    // 3: leases and nonces per key (the journal allocates nonces), attempts named by the lease they were
    // stored under, daily-limit sums read by key.
    "
CREATE TABLE leases (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE nonces (
    key TEXT PRIMARY KEY,
    next INTEGER NOT NULL,
    free TEXT NOT NULL DEFAULT ''
);
ALTER TABLE attempts ADD COLUMN epoch INTEGER;
ALTER TABLE attempts ADD COLUMN replica TEXT;
CREATE INDEX spends_by_key ON spends (key, asset, at_ms);
CREATE INDEX open_rows_by_key ON withdrawals (key, status) WHERE confirmed = 0 AND status NOT IN ('confirmed', 'failed');
",
    // 4: customer deposits: the addresses handed out, the deposits found (once each: transaction and log
    // index, -1 for a transaction's own value), the blocks read.
    "
CREATE TABLE deposit_addresses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    reference TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE deposit_blocks (
    number INTEGER PRIMARY KEY,
    hash TEXT NOT NULL
);
CREATE TABLE deposits (
    tx_hash TEXT NOT NULL,
    log_index INTEGER NOT NULL,
    address TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount TEXT NOT NULL,
    sender TEXT NOT NULL,
    block_number INTEGER NOT NULL,
    block_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    change INTEGER NOT NULL,
    seen_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (tx_hash, log_index)
);
CREATE INDEX deposits_by_change ON deposits (change);
CREATE INDEX deposits_by_block ON deposits (block_number, status);
",
    // 5: where each deposit's value is (unswept, sweeping, swept) and the sweep (a row of kind `sweep`).
    "
ALTER TABLE deposits ADD COLUMN sweep_status TEXT NOT NULL DEFAULT 'unswept';
ALTER TABLE deposits ADD COLUMN sweep TEXT;
CREATE INDEX deposits_unswept ON deposits (change) WHERE status = 'confirmed' AND sweep_status = 'unswept';
CREATE INDEX deposits_by_sweep ON deposits (sweep) WHERE sweep IS NOT NULL;
CREATE INDEX deposits_by_address ON deposits (address, asset);
",
    // 6: the webhook outbox: the clients with a webhook, and an event for every change of their withdrawals
    // and deposits, written by triggers in the transaction of the change (see `journal::webhooks`).
    MIGRATION_6,
    // 7: four-eyes approvals: each pending withdrawal's terms, and every approver's decision once.
    "
CREATE TABLE approval_terms (
    withdrawal TEXT PRIMARY KEY REFERENCES withdrawals (id),
    quorum INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE approval_decisions (
    withdrawal TEXT NOT NULL REFERENCES withdrawals (id),
    approver TEXT NOT NULL,
    approve INTEGER NOT NULL,
    signature BLOB NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (withdrawal, approver)
);
CREATE INDEX pending_approvals ON withdrawals (key, created_ms) WHERE status = 'pending_approval';
",
    // 8: time-locked allowlist additions (at most one live entry per key and address), and every
    // approver's decision on each once.
    "
CREATE TABLE allowlist_entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    key TEXT NOT NULL,
    address TEXT NOT NULL,
    status TEXT NOT NULL,
    client TEXT NOT NULL,
    label TEXT,
    quorum INTEGER NOT NULL,
    proposed_ms INTEGER NOT NULL,
    effective_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX allowlist_live ON allowlist_entries (key, address) WHERE status IN ('proposed', 'approved');
CREATE INDEX allowlist_by_key ON allowlist_entries (key, seq);
CREATE TABLE allowlist_decisions (
    entry TEXT NOT NULL REFERENCES allowlist_entries (id),
    approver TEXT NOT NULL,
    approve INTEGER NOT NULL,
    signature BLOB NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (entry, approver)
);
",
];

/// A new UUID (version 4), in SQL.
macro_rules! uuid {
    () => {
        "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-' || \
         substr('89AB', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))"
    };
}

/// The statement that stores the event of a withdrawal row `NEW`.
macro_rules! withdrawal_event {
    () => {
        concat!(
            "INSERT INTO webhook_events (id, client, subject_type, subject, sequence, type, data, created_ms) VALUES (",
            uuid!(),
            ", NEW.client, 'withdrawal', NEW.id, \
             COALESCE((SELECT max(sequence) FROM webhook_events WHERE subject_type = 'withdrawal' AND subject = NEW.id), 0) + 1, \
             'withdrawal.' || NEW.status, \
             json_object('id', NEW.id, 'kind', NEW.kind, 'client', NEW.client, 'idempotency_key', NEW.idempotency_key, \
                 'key', NEW.key, 'recipient', NEW.recipient, 'asset', NEW.asset, 'amount', NEW.amount, \
                 'status', NEW.status, 'nonce', NEW.nonce, 'tx_hash', NEW.tx_hash, 'block_number', NEW.block_number, \
                 'error', NEW.error, 'cancel_requested', NEW.cancel_requested <> 0, 'confirmed', NEW.confirmed <> 0, \
                 'transactions', (SELECT count(*) FROM attempts WHERE withdrawal = NEW.id)), \
             NEW.updated_ms);"
        )
    };
}

/// The statement that stores the event of a deposit row `NEW`, of type `deposit.` and `$status`.
macro_rules! deposit_event {
    ($status:literal) => {
        concat!(
            "INSERT INTO webhook_events (id, client, subject_type, subject, sequence, type, data, created_ms) VALUES (",
            uuid!(),
            ", (SELECT client FROM deposit_addresses WHERE address = NEW.address), 'deposit', \
             NEW.tx_hash || ':' || NEW.log_index, \
             COALESCE((SELECT max(sequence) FROM webhook_events WHERE subject_type = 'deposit' \
                 AND subject = NEW.tx_hash || ':' || NEW.log_index), 0) + 1, \
             'deposit.' || ",
            $status,
            ", json_object('change', NEW.change, 'tx_hash', NEW.tx_hash, 'log_index', NEW.log_index, \
                 'address', NEW.address, 'reference', (SELECT reference FROM deposit_addresses WHERE address = NEW.address), \
                 'asset', NEW.asset, 'amount', NEW.amount, 'sender', NEW.sender, 'block_number', NEW.block_number, \
                 'block_hash', NEW.block_hash, 'status', NEW.status, 'sweep_status', NEW.sweep_status, \
                 'sweep', NEW.sweep, 'sweep_tx_hash', (SELECT tx_hash FROM withdrawals WHERE id = NEW.sweep)), \
             NEW.updated_ms);"
        )
    };
}

/// Whether the deposit row `NEW` is at an address of a client with a webhook.
macro_rules! deposit_of_webhook_client {
    () => {
        "(SELECT client FROM deposit_addresses WHERE address = NEW.address) IN (SELECT client FROM webhook_clients)"
    };
}

/// Migration 6: the webhook outbox.
const MIGRATION_6: &str = concat!(
    "
CREATE TABLE webhook_clients (
    client TEXT PRIMARY KEY
);
CREATE TABLE webhook_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_ms INTEGER,
    UNIQUE (subject_type, subject, sequence)
);
CREATE INDEX webhook_events_waiting ON webhook_events (seq) WHERE state <> 'delivered';
CREATE INDEX webhook_events_by_client ON webhook_events (client, state, seq);
CREATE TRIGGER webhook_withdrawal_stored AFTER INSERT ON withdrawals
WHEN NEW.client IN (SELECT client FROM webhook_clients)
BEGIN ",
    withdrawal_event!(),
    " END;
CREATE TRIGGER webhook_withdrawal_changed AFTER UPDATE OF status, confirmed ON withdrawals
WHEN (OLD.status IS NOT NEW.status OR OLD.confirmed IS NOT NEW.confirmed)
    AND NEW.client IN (SELECT client FROM webhook_clients)
BEGIN ",
    withdrawal_event!(),
    " END;
CREATE TRIGGER webhook_deposit_recorded AFTER INSERT ON deposits
WHEN ",
    deposit_of_webhook_client!(),
    "
BEGIN ",
    deposit_event!("NEW.status"),
    " END;
CREATE TRIGGER webhook_deposit_changed AFTER UPDATE OF status, sweep_status ON deposits
WHEN (OLD.status IS NOT NEW.status OR OLD.sweep_status IS NOT NEW.sweep_status) AND ",
    deposit_of_webhook_client!(),
    "
BEGIN ",
    deposit_event!("CASE WHEN OLD.status IS NOT NEW.status THEN NEW.status ELSE NEW.sweep_status END"),
    " END;
"
);

/// Statuses of rows still in the engine's hands (with `confirmed = 0` for a mined cancellation); a row
/// waiting for approvals is not yet.
pub(super) const OPEN: &str = "confirmed = 0 AND status NOT IN ('confirmed', 'failed') \
    AND NOT (status = 'cancelled' AND block_number IS NULL) AND status <> 'pending_approval'";
