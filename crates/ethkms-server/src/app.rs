//! The running service: its configuration, the [shared state](crate::shared) and the
//! [withdrawal engine](crate::withdrawals), started and stopped together. The routes of
//! [`service`](crate::service) and [`withdrawals::api`](crate::withdrawals) are served with it as state.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use alloy_primitives::Address;
use alloy_signer::Signer as _;
use ethkms::audit::{AuditLog, AuditWriter};
use ethkms::backend::{KeyBackend, KeyRef};
use ethkms::eth::{KmsSigner, SignerError};
use ethkms::{BackendSettings, ChainSettings, WalletManager};

use crate::config::{BackendConfig, Config, JournalLocation};
use crate::journal::{DepositStore, JournalStore, PostgresJournal, SqliteJournal, WebhookStore};
use crate::policy::PolicyEngine;
use crate::shared::{Key, Shared};
use crate::withdrawals::Engine;

/// The journal, as the withdrawal engine, the deposit watcher and the webhook deliverer use it (the same one).
type Journals = (Option<Arc<dyn JournalStore>>, Option<Arc<dyn DepositStore>>, Option<Arc<dyn WebhookStore>>);

/// The running service's state.
pub struct Service {
    pub(crate) config: Config,
    pub(crate) shared: Arc<Shared>,
    /// The withdrawal engine (with a journal configured).
    pub(crate) engine: Option<Arc<Engine>>,
    /// Customer deposit addresses (with `[deposits]` configured).
    pub(crate) deposits: Option<Arc<crate::deposits::Deposits>>,
    /// The webhook deliverer (with a client's `webhook` configured).
    pub(crate) webhooks: Option<Arc<crate::webhooks::Webhooks>>,
    /// `/readyz`'s last check: when, and whether the node and the journal answered.
    pub(crate) node_checked: std::sync::Mutex<Option<(std::time::Instant, bool, bool)>>,
    /// Slots of the requests being answered.
    pub(crate) in_flight: crate::limits::InFlight,
    /// When `/metrics` last asked the node for its latest block.
    pub(crate) head_asked: std::sync::Mutex<Option<std::time::Instant>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("listen", &self.config.listen)
            .field("keys", &self.shared.keys.keys().collect::<Vec<_>>())
            .field("clients", &self.config.clients.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A key could not be opened.
    #[error("key `{name}`: {source}")]
    Key {
        /// The key's name in the configuration.
        name: String,
        /// Why.
        source: SignerError,
    },
    /// A backend of the configuration's `[backends]` could not be reached (a PKCS#11 token that is not
    /// there, a wrong PIN).
    #[error("backend `{name}`: {source}")]
    Backend {
        /// The backend's name in the configuration.
        name: String,
        /// Why.
        source: SignerError,
    },
    /// Two key names resolve to the same key (address and chain): they would share nonces unknowingly.
    #[error(
        "keys `{first}` and `{second}` are the same key ({address} on chain {chain_id}); configure it once and give \
         clients that name"
    )]
    DuplicateKey {
        /// One name.
        first: String,
        /// The other.
        second: String,
        /// Their address.
        address: Address,
        /// Their chain.
        chain_id: u64,
    },
    /// The audit log could not be opened (or does not verify).
    #[error(transparent)]
    Audit(#[from] ethkms::audit::AuditError),
    /// The node connection could not be prepared.
    #[error(transparent)]
    Upstream(SignerError),
    /// The withdrawal journal could not be opened.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

impl Service {
    /// Opens every configured key (one `GetPublicKey` each) — on `backend`, or on the backend of the
    /// configuration's `[backends]` it names (each logged in to once) — the audit log and the withdrawal journal
    /// (SQLite, or PostgreSQL shared with other replicas); then, in the background, checks each key's chain
    /// against the node's (retrying until it answers) and takes the leases of the keys no other replica
    /// holds — recovering each: stored transactions broadcast again, unfinished withdrawals resumed.
    ///
    /// # Errors
    /// [`StartError`] naming the key or file that failed.
    pub async fn start(config: Config, backend: Arc<dyn KeyBackend>) -> Result<Arc<Self>, StartError> {
        let chain =
            ChainSettings { request_timeout: Duration::from_secs(10), ..ChainSettings::new(config.upstream.clone()) };
        let manager = WalletManager::with_backend(backend, chain).map_err(StartError::Upstream)?;
        let mut backends: HashMap<&str, Arc<dyn KeyBackend>> = HashMap::new();
        for (name, settings) in &config.backends {
            let connected = match settings {
                BackendConfig::Pkcs11(token) => BackendSettings::Pkcs11(token.clone()).connect().await,
            };
            let connected = connected.map_err(|source| StartError::Backend { name: name.clone(), source })?;
            tracing::info!(backend = %name, kind = connected.name(), "key backend ready");
            backends.insert(name, connected);
        }
        let mut keys = BTreeMap::new();
        let mut seen: HashMap<(Address, u64), String> = HashMap::new();
        let mut policies = HashMap::new();
        for (name, key) in &config.keys {
            let reference = KeyRef::new(key.key.clone())
                .map_err(|error| StartError::Key { name: name.clone(), source: error.into() })?;
            let backend = key.backend.as_deref().and_then(|name| backends.get(name)).unwrap_or(manager.backend());
            let handle = ethkms::backend::KeyHandle::open(Arc::clone(backend), reference)
                .await
                .map_err(|error| StartError::Key { name: name.clone(), source: error.into() })?;
            let signer = KmsSigner::from_handle(handle, Some(key.chain_id));
            let address = signer.address();
            if let Some(first) = seen.insert((address, key.chain_id), name.clone()) {
                return Err(StartError::DuplicateKey { first, second: name.clone(), address, chain_id: key.chain_id });
            }
            policies.insert(name.clone(), key.policy.clone());
            keys.insert(
                name.clone(),
                Key {
                    name: name.clone(),
                    signer,
                    chain_id: key.chain_id,
                    fee_caps: key.fees,
                    confirmations: key.confirmations,
                },
            );
        }
        let audit = AuditWriter::spawn(AuditLog::open(&config.audit_log)?)?;
        let policy = PolicyEngine::new(policies);
        let (journal, deposit_store, webhook_store): Journals = match &config.journal {
            Some(JournalLocation::Sqlite(path)) => {
                let journal = Arc::new(SqliteJournal::open(path)?);
                (Some(journal.clone()), Some(journal.clone()), Some(journal))
            }
            Some(JournalLocation::Postgres(url)) => {
                let journal = Arc::new(PostgresJournal::connect(url).await?);
                (Some(journal.clone()), Some(journal.clone()), Some(journal))
            }
            None => (None, None, None),
        };
        // Only these clients' changes are written to the outbox from now on (a webhook removed from the
        // configuration stops its events).
        let endpoints: HashMap<String, crate::config::WebhookConfig> = config
            .clients
            .iter()
            .filter_map(|(name, client)| client.webhook.clone().map(|webhook| (name.clone(), webhook)))
            .collect();
        if let Some(store) = &webhook_store {
            store.set_webhook_clients(endpoints.keys().cloned().collect()).await?;
        }
        let shared = Arc::new(Shared::new(manager, keys, policy, audit, config.replica.name.clone()));
        let engine = journal.as_ref().map(|journal| {
            Engine::new(Arc::clone(&shared), Arc::clone(journal), config.withdrawals, config.replica.clone())
        });
        let deposits = match (&config.deposits, deposit_store, &journal) {
            (Some(settings), Some(store), Some(journal)) => {
                // Sweeps are stored by the deposits' sweeper and signed by the engine.
                let submit =
                    engine.clone().map(|engine| -> crate::deposits::Submit { Arc::new(move |row| engine.submit(row)) });
                Some(Arc::new(crate::deposits::Deposits::new(
                    settings.clone(),
                    store,
                    Arc::clone(journal),
                    submit,
                    Arc::clone(&shared),
                    config.replica.clone(),
                )))
            }
            _ => None,
        };
        let webhooks = match (webhook_store, &journal) {
            (Some(store), Some(journal)) if !endpoints.is_empty() => Some(Arc::new(crate::webhooks::Webhooks::new(
                store,
                Arc::clone(journal),
                endpoints,
                config.webhooks,
                Arc::clone(&shared),
                config.replica.clone(),
            )?)),
            _ => None,
        };
        if let Some(engine) = &engine {
            engine.start();
            if config.keys.values().any(|key| key.approvals.is_some()) {
                crate::approvals::expire_in_background(Arc::clone(engine));
                crate::approvals::allowlist::refresh_in_background(Arc::clone(engine));
            }
        }
        if let Some(webhooks) = &webhooks {
            webhooks.start();
        }
        if let Some(deposits) = &deposits {
            deposits.start();
        }
        let in_flight = crate::limits::InFlight::new(config.limits.max_in_flight_requests);
        Ok(Arc::new(Self {
            config,
            shared,
            engine,
            deposits,
            webhooks,
            node_checked: std::sync::Mutex::new(None),
            in_flight,
            head_asked: std::sync::Mutex::new(None),
        }))
    }

    /// Stops background work: waits up to `timeout` for withdrawals being signed and sent (what is left
    /// resumes at the next start), stops the watcher and closes the journal.
    pub async fn stop(&self, timeout: Duration) {
        if let Some(webhooks) = &self.webhooks {
            webhooks.stop().await;
        }
        if let Some(deposits) = &self.deposits {
            deposits.stop().await;
        }
        if let Some(engine) = &self.engine {
            engine.stop(timeout).await;
        }
    }
}
