//! The PostgreSQL journal's schema: its migrations, applied at connect in one transaction under an advisory
//! lock (several replicas may start at once), the version table `ethkms_schema`, and the check that the
//! tables hold every column the queries use.
//!
//! A database whose schema is newer than this program's is refused by name: an older replica must not
//! write to tables whose meaning it does not know.

use deadpool_postgres::Client;

use super::Failure;

/// Migration `version` takes the schema from `version - 1` to `version`, in order.
const MIGRATIONS: [(i32, &str); 7] = [
    (
        1,
        // Withdrawals (every row the engine signs), their signed attempts, every amount counted against a daily
        // limit, the per-key leases (with the epoch every engine write is fenced by) and nonces.
        //
        // `seq` orders rows "oldest first" (ids are random). `UNIQUE (key, epoch)` on `leases` makes `epoch` a
        // key column for row locks: a takeover (which changes it) takes `FOR UPDATE` of the lease row and so
        // conflicts with the `FOR KEY SHARE` every fenced write holds, while a renewal (only `expires_ms`) takes
        // `FOR NO KEY UPDATE`, which does not (see the module documentation of `postgres`).
        "
CREATE TABLE withdrawals (
    seq BIGSERIAL NOT NULL,
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    client TEXT,
    idempotency_key TEXT,
    key TEXT NOT NULL,
    recipient TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount NUMERIC(78, 0) NOT NULL,
    status TEXT NOT NULL,
    nonce BIGINT,
    tx_hash TEXT,
    block_number BIGINT,
    block_hash TEXT,
    error TEXT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    request TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    confirmed BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (client, idempotency_key)
);
CREATE INDEX withdrawals_open_by_key ON withdrawals (key, seq)
    WHERE NOT confirmed AND status NOT IN ('confirmed', 'failed');
CREATE TABLE attempts (
    withdrawal TEXT NOT NULL REFERENCES withdrawals (id),
    number INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    raw BYTEA NOT NULL,
    max_fee_per_gas TEXT NOT NULL,
    priority_fee_per_gas TEXT NOT NULL,
    signed_ms BIGINT NOT NULL,
    cancel BOOLEAN NOT NULL DEFAULT FALSE,
    epoch BIGINT,
    replica TEXT,
    PRIMARY KEY (withdrawal, number)
);
CREATE TABLE leases (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    UNIQUE (key, epoch)
);
CREATE TABLE nonces (
    key TEXT PRIMARY KEY,
    next BIGINT NOT NULL,
    free TEXT NOT NULL DEFAULT ''
);
CREATE TABLE spends (
    key TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount NUMERIC(78, 0) NOT NULL,
    at_ms BIGINT NOT NULL,
    withdrawal TEXT
);
CREATE INDEX spends_by_key ON spends (key, asset, at_ms);
CREATE INDEX spends_by_withdrawal ON spends (withdrawal) WHERE withdrawal IS NOT NULL;
",
    ),
    (
        2,
        // The replicas running (each announces itself with its leases), so that one holding no key is seen
        // when the keys are shared out.
        "
CREATE TABLE replicas (
    name TEXT PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
",
    ),
    (
        3,
        // Customer deposits: the addresses handed out, the deposits found (once each: transaction and log
        // index, -1 for a transaction's own value), the blocks read; every change numbered by one sequence.
        "
CREATE TABLE deposit_addresses (
    seq BIGSERIAL NOT NULL,
    reference TEXT PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE deposit_blocks (
    number BIGINT PRIMARY KEY,
    hash TEXT NOT NULL
);
CREATE SEQUENCE deposit_changes;
CREATE TABLE deposits (
    tx_hash TEXT NOT NULL,
    log_index BIGINT NOT NULL,
    address TEXT NOT NULL,
    asset TEXT NOT NULL,
    amount NUMERIC(78, 0) NOT NULL,
    sender TEXT NOT NULL,
    block_number BIGINT NOT NULL,
    block_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    change BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (tx_hash, log_index)
);
CREATE INDEX deposits_by_change ON deposits (change);
CREATE INDEX deposits_by_block ON deposits (block_number, status);
",
    ),
    (
        4,
        // Where each deposit's value is (unswept, sweeping, swept) and the sweep (a row of kind `sweep`).
        "
ALTER TABLE deposits ADD COLUMN sweep_status TEXT NOT NULL DEFAULT 'unswept';
ALTER TABLE deposits ADD COLUMN sweep TEXT;
CREATE INDEX deposits_unswept ON deposits (change) WHERE status = 'confirmed' AND sweep_status = 'unswept';
CREATE INDEX deposits_by_sweep ON deposits (sweep) WHERE sweep IS NOT NULL;
CREATE INDEX deposits_by_address ON deposits (address, asset);
",
    ),
    (
        5,
        // The webhook outbox: the clients with a webhook, and an event for every change of their withdrawals
        // and deposits, written by triggers in the transaction of the change (see `journal::webhooks`). A
        // subject's changes hold its row's lock, so its events are numbered in the order they commit.
        "
CREATE TABLE webhook_clients (
    client TEXT PRIMARY KEY
);
CREATE TABLE webhook_events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    client TEXT NOT NULL,
    subject_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_ms BIGINT,
    UNIQUE (subject_type, subject, sequence)
);
CREATE INDEX webhook_events_waiting ON webhook_events (seq) WHERE state <> 'delivered';
CREATE INDEX webhook_events_by_client ON webhook_events (client, state, seq);
CREATE FUNCTION ethkms_webhook_event(TEXT, TEXT, TEXT, TEXT, JSONB, BIGINT) RETURNS void LANGUAGE sql AS $$
    INSERT INTO webhook_events (id, client, subject_type, subject, sequence, type, data, created_ms)
    SELECT gen_random_uuid()::text, $1, $2, $3,
        COALESCE((SELECT max(e.sequence) FROM webhook_events e WHERE e.subject_type = $2 AND e.subject = $3), 0) + 1,
        $4, $5::text, $6
$$;
CREATE FUNCTION ethkms_withdrawal_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.client IS NULL OR NOT EXISTS (SELECT 1 FROM webhook_clients w WHERE w.client = NEW.client) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.status IS NOT DISTINCT FROM NEW.status
        AND OLD.confirmed IS NOT DISTINCT FROM NEW.confirmed THEN
        RETURN NULL;
    END IF;
    PERFORM ethkms_webhook_event(NEW.client, 'withdrawal', NEW.id, 'withdrawal.' || NEW.status,
        jsonb_build_object('id', NEW.id, 'kind', NEW.kind, 'client', NEW.client,
            'idempotency_key', NEW.idempotency_key, 'key', NEW.key, 'recipient', NEW.recipient, 'asset', NEW.asset,
            'amount', NEW.amount::text, 'status', NEW.status, 'nonce', NEW.nonce, 'tx_hash', NEW.tx_hash,
            'block_number', NEW.block_number, 'error', NEW.error, 'cancel_requested', NEW.cancel_requested,
            'confirmed', NEW.confirmed,
            'transactions', (SELECT count(*) FROM attempts a WHERE a.withdrawal = NEW.id)),
        NEW.updated_ms);
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_withdrawal AFTER INSERT OR UPDATE ON withdrawals
    FOR EACH ROW EXECUTE FUNCTION ethkms_withdrawal_event();
CREATE FUNCTION ethkms_deposit_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    owner TEXT;
    happened TEXT;
BEGIN
    SELECT a.client INTO owner FROM deposit_addresses a WHERE a.address = NEW.address;
    IF owner IS NULL OR NOT EXISTS (SELECT 1 FROM webhook_clients w WHERE w.client = owner) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        happened := NEW.status;
    ELSIF OLD.sweep_status IS DISTINCT FROM NEW.sweep_status THEN
        happened := NEW.sweep_status;
    ELSE
        RETURN NULL;
    END IF;
    PERFORM ethkms_webhook_event(owner, 'deposit', NEW.tx_hash || ':' || NEW.log_index, 'deposit.' || happened,
        jsonb_build_object('change', NEW.change, 'tx_hash', NEW.tx_hash, 'log_index', NEW.log_index,
            'address', NEW.address,
            'reference', (SELECT a.reference FROM deposit_addresses a WHERE a.address = NEW.address),
            'asset', NEW.asset, 'amount', NEW.amount::text, 'sender', NEW.sender, 'block_number', NEW.block_number,
            'block_hash', NEW.block_hash, 'status', NEW.status, 'sweep_status', NEW.sweep_status, 'sweep', NEW.sweep,
            'sweep_tx_hash', (SELECT w.tx_hash FROM withdrawals w WHERE w.id = NEW.sweep)),
        NEW.updated_ms);
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_deposit AFTER INSERT OR UPDATE ON deposits
    FOR EACH ROW EXECUTE FUNCTION ethkms_deposit_event();
",
    ),
    (
        6,
        // Four-eyes approvals: each pending withdrawal's terms, and every approver's decision once.
        "
CREATE TABLE approval_terms (
    withdrawal TEXT PRIMARY KEY REFERENCES withdrawals (id),
    quorum INTEGER NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE TABLE approval_decisions (
    withdrawal TEXT NOT NULL REFERENCES withdrawals (id),
    approver TEXT NOT NULL,
    approve BOOLEAN NOT NULL,
    signature BYTEA NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (withdrawal, approver)
);
CREATE INDEX pending_approvals ON withdrawals (key, seq) WHERE status = 'pending_approval';
",
    ),
    (
        7,
        // Time-locked allowlist additions (at most one live entry per key and address), and every approver's
        // decision on each once.
        "
CREATE TABLE allowlist_entries (
    seq BIGSERIAL NOT NULL,
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    address TEXT NOT NULL,
    status TEXT NOT NULL,
    client TEXT NOT NULL,
    label TEXT,
    quorum INTEGER NOT NULL,
    proposed_ms BIGINT NOT NULL,
    effective_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX allowlist_live ON allowlist_entries (key, address) WHERE status IN ('proposed', 'approved');
CREATE INDEX allowlist_by_key ON allowlist_entries (key, seq);
CREATE TABLE allowlist_decisions (
    entry TEXT NOT NULL REFERENCES allowlist_entries (id),
    approver TEXT NOT NULL,
    approve BOOLEAN NOT NULL,
    signature BYTEA NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (entry, approver)
);
",
    ),
];

/// The schema version this code writes (the last migration's).
pub(super) const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The advisory lock (two-key form, so it never meets the one-key locks of the daily limits) held while
/// the schema is read and migrated.
const MIGRATION_LOCK: (i32, i32) = (0x6574_686b, 1);

/// Every column the journal's queries use, table by table: a schema that lacks one is refused at connect.
const COLUMNS: [(&str, &str); 15] = [
    (
        "withdrawals",
        "seq, id, kind, client, idempotency_key, key, recipient, asset, amount, status, nonce, tx_hash, \
         block_number, block_hash, error, created_ms, updated_ms, request, cancel_requested, confirmed",
    ),
    (
        "attempts",
        "withdrawal, number, tx_hash, raw, max_fee_per_gas, priority_fee_per_gas, signed_ms, cancel, epoch, replica",
    ),
    ("leases", "key, holder, epoch, expires_ms"),
    ("nonces", "key, next, free"),
    ("spends", "key, asset, amount, at_ms, withdrawal"),
    ("replicas", "name, expires_ms"),
    ("deposit_addresses", "seq, reference, address, client, created_ms"),
    ("deposit_blocks", "number, hash"),
    (
        "deposits",
        "tx_hash, log_index, address, asset, amount, sender, block_number, block_hash, status, change, seen_ms, updated_ms",
    ),
    ("webhook_clients", "client"),
    (
        "webhook_events",
        "seq, id, client, subject_type, subject, sequence, type, data, created_ms, state, attempts, next_ms, \
         last_error, delivered_ms",
    ),
    ("approval_terms", "withdrawal, quorum, expires_ms"),
    ("approval_decisions", "withdrawal, approver, approve, signature, at_ms"),
    (
        "allowlist_entries",
        "seq, id, key, address, status, client, label, quorum, proposed_ms, effective_ms, updated_ms",
    ),
    ("allowlist_decisions", "entry, approver, approve, signature, at_ms"),
];

/// Brings the database's schema to [`SCHEMA_VERSION`] (in one transaction, under [`MIGRATION_LOCK`]) and
/// checks its tables; refuses a newer schema.
pub(super) async fn migrate(client: &mut Client) -> Result<(), Failure> {
    let transaction = client.transaction().await?;
    transaction.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1]).await?;
    transaction.batch_execute("CREATE TABLE IF NOT EXISTS ethkms_schema (version INTEGER NOT NULL)").await?;
    let version: Option<i32> =
        transaction.query_one("SELECT max(version) FROM ethkms_schema", &[]).await?.try_get(0)?;
    let version = version.unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(Failure::Invalid(format!(
            "the database's schema is version {version}, newer than this ethkms-server's ({SCHEMA_VERSION}); \
             use a newer ethkms-server"
        )));
    }
    for (to, migration) in MIGRATIONS.iter().filter(|(to, _)| *to > version) {
        transaction.batch_execute(migration).await?;
        tracing::info!(from = to - 1, to, "PostgreSQL journal schema migrated");
    }
    if version < SCHEMA_VERSION {
        transaction.execute("DELETE FROM ethkms_schema", &[]).await?;
        transaction.execute("INSERT INTO ethkms_schema (version) VALUES ($1)", &[&SCHEMA_VERSION]).await?;
    }
    transaction.commit().await?;
    for (table, columns) in COLUMNS {
        if let Err(error) = client.prepare(&format!("SELECT {columns} FROM {table} LIMIT 0")).await {
            return Err(Failure::Invalid(format!(
                "table `{table}` is not the journal's (schema version {SCHEMA_VERSION}): {error}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (index, (version, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(*version).unwrap(), index + 1);
        }
    }
}
