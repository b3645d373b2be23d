//! The service's Prometheus metrics, kept and exposed (`OpenMetrics` text at `/metrics`) with
//! `prometheus-client`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`].
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A counter with one label.
#[derive(Clone, Debug)]
pub(crate) struct Labeled {
    label: &'static str,
    family: Family<Vec<(&'static str, String)>, Counter>,
}

impl Labeled {
    pub(crate) fn new(label: &'static str) -> Self {
        Self { label, family: Family::default() }
    }

    /// Adds one to the counter labelled `value`.
    pub(crate) fn inc(&self, value: &str) {
        self.family.get_or_create(&vec![(self.label, value.to_owned())]).inc();
    }

    /// The counter labelled `value`.
    #[cfg(test)]
    pub(crate) fn get(&self, value: &str) -> u64 {
        self.family.get_or_create(&vec![(self.label, value.to_owned())]).get()
    }
}

/// Every metric of the service.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// JSON-RPC requests received.
    pub(crate) requests: Counter,
    /// Signatures released, by method.
    pub(crate) signatures: Labeled,
    /// Requests denied by policy, by rule.
    pub(crate) denials: Labeled,
    /// Key service errors, by kind.
    pub(crate) kms_errors: Labeled,
    /// Withdrawals by what became of them.
    pub(crate) withdrawals: Labeled,
    /// Approvers' decisions by outcome (`counted`, `approved`, `rejected`, `duplicate`, `expired`,
    /// `not_pending`).
    pub(crate) approvals: Labeled,
    /// Allowlist changes by event (`proposed`, `counted`, `approved`, `cancelled`, `duplicate`,
    /// `not_pending`, `removed`).
    pub(crate) allowlist: Labeled,
    /// Nonce gaps filled.
    pub(crate) gaps_filled: Counter,
    /// Gap fills the node refused (each followed by a longer wait before the next).
    pub(crate) gap_fill_failures: Counter,
    /// Transactions signed again with higher fees.
    pub(crate) rebroadcasts: Counter,
    /// Bumps stopped by a fee cap.
    pub(crate) fee_cap_reached: Counter,
    /// Transactions at a key's next nonce the node lost (held nothing pending there), sent again.
    pub(crate) lost_transactions: Counter,
    /// Broadcasts, by how the node answered.
    pub(crate) broadcasts: Labeled,
    /// Passing failures retried, by cause.
    pub(crate) retries: Labeled,
    /// Mined transactions a reorg dropped.
    pub(crate) reorgs: Counter,
    /// Nonces taken by a transaction this service did not sign (the row failed with proof).
    pub(crate) nonce_taken: Counter,
    /// Withdrawals whose nonce is mined but no transaction of theirs has a receipt yet.
    pub(crate) unresolved: Counter,
    /// Time to sign, KMS request and verification included.
    pub(crate) signing_seconds: Histogram,
    /// Connections and requests refused for overload, by limit.
    pub(crate) overload: Labeled,
    /// Leases taken by this replica.
    pub(crate) lease_acquisitions: Counter,
    /// Leases this replica lost (another took the key, or it could not renew in time).
    pub(crate) lease_losses: Counter,
    /// Leases this replica handed over because it held more keys than its share.
    pub(crate) lease_handovers: Counter,
    /// Journal writes refused because their lease was no longer the key's.
    pub(crate) fenced_writes: Counter,
    /// Whether this replica holds each key's lease (1) or not (0).
    leases_held: Family<Vec<(&'static str, String)>, Gauge>,
    /// Deposits by event: found, confirmed, removed (its block left the chain first), reversed (after),
    /// sweeping, swept, unswept (a sweep failed).
    pub(crate) deposits: Labeled,
    /// Sweeps of deposit addresses by outcome: started, confirmed, failed.
    pub(crate) sweeps: Labeled,
    /// The last block the deposit watcher read.
    pub(crate) deposit_block: Gauge,
    /// Sweeps stored and not yet final, as the watching replica last counted.
    pub(crate) sweeps_open: Gauge,
    /// Seconds since the oldest of them was stored (0 with none).
    pub(crate) oldest_open_sweep_seconds: Gauge,
    /// Webhook delivery attempts by outcome: delivered, failed.
    pub(crate) webhook_deliveries: Labeled,
    /// Webhook events not yet delivered.
    pub(crate) webhook_events_waiting: Gauge,
    /// The node's latest block number, as last seen.
    chain_head: Gauge,
    /// The node's latest block hash, as last seen: one series, labelled with it.
    chain_head_hash: Family<Vec<(&'static str, String)>, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            requests: Counter::default(),
            signatures: Labeled::new("method"),
            denials: Labeled::new("rule"),
            kms_errors: Labeled::new("kind"),
            withdrawals: Labeled::new("status"),
            approvals: Labeled::new("outcome"),
            allowlist: Labeled::new("event"),
            gaps_filled: Counter::default(),
            gap_fill_failures: Counter::default(),
            rebroadcasts: Counter::default(),
            fee_cap_reached: Counter::default(),
            lost_transactions: Counter::default(),
            broadcasts: Labeled::new("outcome"),
            retries: Labeled::new("cause"),
            reorgs: Counter::default(),
            nonce_taken: Counter::default(),
            unresolved: Counter::default(),
            signing_seconds: Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
            overload: Labeled::new("limit"),
            lease_acquisitions: Counter::default(),
            lease_losses: Counter::default(),
            lease_handovers: Counter::default(),
            fenced_writes: Counter::default(),
            leases_held: Family::default(),
            deposits: Labeled::new("event"),
            sweeps: Labeled::new("outcome"),
            deposit_block: Gauge::default(),
            sweeps_open: Gauge::default(),
            oldest_open_sweep_seconds: Gauge::default(),
            webhook_deliveries: Labeled::new("outcome"),
            webhook_events_waiting: Gauge::default(),
            chain_head: Gauge::default(),
            chain_head_hash: Family::default(),
            registry: Registry::default(),
        };
        let counters: [(&str, &str, &Counter); 13] = [
            ("ethkms_requests", "JSON-RPC requests received", &metrics.requests),
            (
                "ethkms_nonce_gaps_filled",
                "Nonce gaps filled with a zero-value transfer to the key itself",
                &metrics.gaps_filled,
            ),
            (
                "ethkms_gap_fill_failures",
                "Gap fills refused by the node; the next waits longer",
                &metrics.gap_fill_failures,
            ),
            (
                "ethkms_rebroadcasts",
                "Transactions signed again with higher fees after staying unmined",
                &metrics.rebroadcasts,
            ),
            (
                "ethkms_fee_cap_reached",
                "Fee bumps (or first signatures) held down by a key's fee cap",
                &metrics.fee_cap_reached,
            ),
            (
                "ethkms_lost_transactions",
                "Transactions at a key's next nonce the node held nothing pending for, sent again (then replaced)",
                &metrics.lost_transactions,
            ),
            ("ethkms_reorgs", "Mined transactions dropped by a reorg and broadcast again", &metrics.reorgs),
            (
                "ethkms_nonce_taken_by_foreign_transaction",
                "Nonces mined by a transaction this service did not sign; the row failed, unpaid, with the proof",
                &metrics.nonce_taken,
            ),
            (
                "ethkms_withdrawals_unresolved",
                "Withdrawals whose nonce was mined without a receipt for any of their transactions, reported",
                &metrics.unresolved,
            ),
            ("ethkms_lease_acquisitions", "Key leases taken by this replica", &metrics.lease_acquisitions),
            (
                "ethkms_lease_losses",
                "Key leases this replica lost: another replica took the key, or it could not renew in time",
                &metrics.lease_losses,
            ),
            (
                "ethkms_lease_handovers",
                "Key leases this replica handed over to share the keys out among the replicas",
                &metrics.lease_handovers,
            ),
            (
                "ethkms_fenced_writes",
                "Journal writes refused because this replica's lease on the key was no longer current",
                &metrics.fenced_writes,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        let families: [(&str, &str, &Labeled); 12] = [
            (
                "ethkms_webhook_deliveries",
                "Webhook delivery attempts by outcome: delivered (a 2xx answer), failed (retried after a back-off)",
                &metrics.webhook_deliveries,
            ),
            (
                "ethkms_deposits",
                "Deposits by event: found, confirmed, removed (their block left the chain before they were \
                 confirmed), reversed (after), sweeping, swept, unswept (their sweep failed)",
                &metrics.deposits,
            ),
            (
                "ethkms_sweeps",
                "Sweeps of deposit addresses by outcome: started, confirmed, failed (nothing moved)",
                &metrics.sweeps,
            ),
            ("ethkms_signatures", "Signatures released, by method", &metrics.signatures),
            ("ethkms_policy_denials", "Requests denied by policy, by rule", &metrics.denials),
            ("ethkms_kms_errors", "Key service errors, by kind", &metrics.kms_errors),
            (
                "ethkms_withdrawals",
                "Withdrawals by status reached: pending_approval, accepted, mined, confirmed, failed, cancelled, \
                 rejected, expired",
                &metrics.withdrawals,
            ),
            (
                "ethkms_approval_decisions",
                "Approvers' decisions by outcome: counted, approved (quorum complete), rejected, duplicate, expired, \
                 not_pending",
                &metrics.approvals,
            ),
            (
                "ethkms_allowlist_changes",
                "Allowlist additions and decisions by event: proposed, counted, approved, cancelled, duplicate, \
                 not_pending, removed",
                &metrics.allowlist,
            ),
            ("ethkms_broadcasts", "Broadcasts by the node's answer", &metrics.broadcasts),
            ("ethkms_transient_retries", "Passing failures retried with back-off, by cause", &metrics.retries),
            (
                "ethkms_overload_refusals",
                "Connections closed and requests answered 503 for overload, by limit: connections, requests, \
                 pending_withdrawals, journal_queue",
                &metrics.overload,
            ),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.family.clone());
        }
        registry.register(
            "ethkms_signing_seconds",
            "Time to sign, KMS request and verification included",
            metrics.signing_seconds.clone(),
        );
        registry.register(
            "ethkms_lease_held",
            "Whether this replica holds the key's lease and processes its rows (1) or not (0)",
            metrics.leases_held.clone(),
        );
        registry.register(
            "ethkms_webhook_events_waiting",
            "Webhook events not yet delivered (pending or failing), as the delivering replica last counted",
            metrics.webhook_events_waiting.clone(),
        );
        registry.register(
            "ethkms_deposit_scan_block",
            "The last block the deposit watcher read",
            metrics.deposit_block.clone(),
        );
        registry.register(
            "ethkms_sweeps_open",
            "Sweeps of deposit addresses stored and not yet final, as the watching replica last counted",
            metrics.sweeps_open.clone(),
        );
        registry.register(
            "ethkms_oldest_open_sweep_seconds",
            "Seconds since the oldest sweep not yet final was stored (0 with none): a sweep the engine does not \
             process (a halted engine, a key no replica holds) grows it",
            metrics.oldest_open_sweep_seconds.clone(),
        );
        registry.register(
            "ethkms_chain_head_block",
            "The upstream node's latest block number, read when /metrics is scraped",
            metrics.chain_head.clone(),
        );
        registry.register(
            "ethkms_chain_head",
            "The upstream node's latest block, its hash as the `hash` label (value: its number), to pin it elsewhere",
            metrics.chain_head_hash.clone(),
        );
        Self { registry, ..metrics }
    }
}

impl Metrics {
    /// Records whether this replica holds `key`'s lease.
    pub(crate) fn lease_held(&self, key: &str, held: bool) {
        self.leases_held.get_or_create(&vec![("key", key.to_owned())]).set(i64::from(held));
    }

    /// Records the node's latest block.
    pub(crate) fn set_chain_head(&self, number: u64, hash: &str) {
        let number = i64::try_from(number).unwrap_or(i64::MAX);
        self.chain_head.set(number);
        self.chain_head_hash.clear();
        self.chain_head_hash.get_or_create(&vec![("hash", hash.to_owned())]).set(number);
    }

    /// The `OpenMetrics` text of every metric.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_with_their_labels_and_the_histogram_counts_observations() {
        let metrics = Metrics::default();
        metrics.withdrawals.inc("accepted");
        metrics.withdrawals.inc("accepted");
        metrics.gaps_filled.inc();
        metrics.signing_seconds.observe(0.02);
        metrics.set_chain_head(7, "0xaa");
        metrics.set_chain_head(8, "0xbb");
        metrics.lease_held("hot", true);
        metrics.lease_held("cold", true);
        metrics.lease_held("cold", false);
        let text = metrics.render();
        assert!(!text.contains("0xaa"), "only the latest head is shown:\n{text}");
        for line in [
            "ethkms_withdrawals_total{status=\"accepted\"} 2",
            "ethkms_nonce_gaps_filled_total 1",
            "ethkms_signing_seconds_count 1",
            "ethkms_fee_cap_reached_total 0",
            "ethkms_lost_transactions_total 0",
            "ethkms_chain_head_block 8",
            "ethkms_chain_head{hash=\"0xbb\"} 8",
            "ethkms_lease_held{key=\"hot\"} 1",
            "ethkms_lease_held{key=\"cold\"} 0",
            "ethkms_fenced_writes_total 0",
        ] {
            assert!(text.lines().any(|candidate| candidate == line), "`{line}` not in:\n{text}");
        }
        assert_eq!(metrics.withdrawals.get("accepted"), 2);
    }
}
