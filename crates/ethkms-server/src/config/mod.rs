//! The service's TOML configuration — named keys with their policies, the upstream node, the listen
//! address, clients with hashed bearer tokens — and client authentication.
//!
//! ```toml
//! listen = "127.0.0.1:8600"
//! upstream = "http://127.0.0.1:8545"
//! audit_log = "/var/lib/ethkms/audit.jsonl"
//! journal = "/var/lib/ethkms/withdrawals.sqlite"   # needed for withdrawals and transactions; or postgres://…
//! replica = { name = "withdrawals-a", lease_seconds = 10 }   # with PostgreSQL: see ReplicaSettings
//! withdrawals = { poll_interval_ms = 500, rebroadcast_after_seconds = 60, signing_concurrency = 32 }   # the defaults
//! tls = { cert = "/etc/ethkms/cert.pem", key = "/etc/ethkms/key.pem" }   # optional: HTTPS
//! webhooks = { timeout_ms = 10000, max_backoff_ms = 600000 }   # see crate::config::webhooks for all, and the defaults
//! limits = { max_connections = 1024, max_in_flight_requests = 256 }   # see crate::limits for all, and the defaults
//!
//! [keys.hot]
//! key = "alias/hot-wallet"
//! # backend = "hsm"   # a [backends.hsm] section: sign with an HSM key (see crate::config::backends)
//! chain_id = 1
//! confirmations = 12   # the default: blocks, the including one counted, before a transaction is final
//! # The defaults, safe on mainnet: no transaction pays more, first signature or fee bump.
//! fees = { max_fee_per_gas = "500gwei", max_priority_fee_per_gas = "10gwei", max_fee_per_tx = "0.05ether" }
//! [keys.hot.policy]
//! destination_allowlist = ["0x000000000000000000000000000000000000dEaD"]
//! max_value = { ETH = "1ether", "0x6B175474E89094C44Da98b954EedeAC495271d0F" = "5000" }
//! daily_limit = { ETH = "10ether" }
//! # Any call besides transfers and approvals of tokens with limits must be listed (see below).
//! contract_calls = [
//!     { address = "0x7a250d5630B4cF539739dF2C5dAcb4c659F2488D", selector = "0x38ed1739", args = [
//!         { index = 0, kind = "amount_max", max = "5000", asset = "0x6B175474E89094C44Da98b954EedeAC495271d0F" },
//!         { index = 3, kind = "address_allowlisted" },
//!     ] },
//! ]
//! [keys.hot.policy.typed_data]   # without it, a key with limits or allowlists signs no typed data
//! max_deadline_seconds = 3600    # the default: a permit's deadline at most an hour away
//! domains = [
//!     { verifying_contract = "0x6B175474E89094C44Da98b954EedeAC495271d0F", primary_types = ["Permit"] },
//!     { verifying_contract = "0x000000000022D473030F116dDEE9F6B43aC78BA3", primary_types = ["PermitSingle"] },
//! ]
//! [keys.hot.approvals]           # four-eyes approvals of large withdrawals (see crate::approvals)
//! threshold = { ETH = "10ether" }
//! approvers = ["0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"]
//! quorum = 2
//! allowlist_delay_seconds = 172800  # API additions to destination_allowlist wait 48 h for the quorum
//!
//! [clients.withdrawals]
//! token_sha256 = "…64 hex digits: the SHA-256 of the bearer token…"
//! keys = ["hot"]
//! methods = ["eth_sendTransaction", "eth_signTransaction", "withdrawals"]
//! # Optional: every change of its withdrawals and deposits posted there, signed (see crate::webhooks).
//! webhook = { url = "https://hooks.example.com/ethkms", secret_env = "WITHDRAWALS_WEBHOOK_SECRET" }
//!
//! [clients.approval-desk]        # carries approvers' signed decisions; cannot make withdrawals itself
//! token_sha256 = "…"
//! keys = ["hot"]
//! methods = ["approvals"]
//!
//! [clients.treasury-ops]         # proposes and removes time-locked destination_allowlist additions
//! token_sha256 = "…"
//! keys = ["hot"]
//! methods = ["allowlist"]
//! ```
//!
//! Token amounts in `max_value` and `daily_limit` are in the token's smallest unit; ether amounts take
//! units (`1ether`, `20gwei`, or plain wei). Tokens are stored only as their SHA-256, so the file holds
//! no secret.
//!
//! The [policy](crate::policy) in short:
//!
//! - The ether `max_value` and `daily_limit` count value **and** the most a transaction can pay in fees:
//!   `fees.max_fee_per_tx` when the service picks gas and fees, less with a client gas limit. Client fee
//!   fields above `fees` are refused (`fee_cap`).
//! - A key with a token limit, a `destination_allowlist` or `contract_calls` signs calldata only for
//!   `transfer`, `approve`, `increaseAllowance` and `permit` of tokens with limits (amounts counted, recipient
//!   or spender through the destination lists) and for the calls in `contract_calls`. An entry's `args`
//!   constrain static arguments by position (`index`: the 32-byte word at `4 + 32 × index`):
//!   `address_allowlisted` (passes the destination lists; needs a `destination_allowlist`) or `amount_max`
//!   (at most `max`, a plain number — units for `asset = "ETH"` — and counted against `asset`'s limits if
//!   given). Keys with none of these sign any call.
//! - `typed_data.domains` list the `verifyingContract`s and primary types a key may sign typed data for;
//!   `domain.chainId` must be the key's chain (an entry without `verifying_contract` is for domains without
//!   one, such as off-chain logins). ERC-2612, DAI and Permit2 permits count like approvals, with
//!   a deadline at most `max_deadline_seconds` away. A key with any limit or allowlist and no `typed_data`
//!   signs no typed data; a key with no rules at all signs any (never for another chain).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::policy::KeyPolicy;

pub use crate::policy::FeeCaps;
pub use approvals::ApprovalSettings;
pub use backends::BackendConfig;
pub use deposits::DepositSettings;
pub use replica::{JournalLocation, ReplicaSettings, redact_password};
pub use webhooks::{WebhookConfig, WebhookSettings};

mod approvals;
pub mod backends;
mod deposits;
mod policy;
mod replica;
pub mod webhooks;

/// Blocks (the including one counted) before a mined transaction is final, unless a key says otherwise:
/// about two and a half minutes on Ethereum mainnet, deeper than any reorg seen since the merge.
pub const DEFAULT_CONFIRMATIONS: u64 = 12;

/// Settings of the withdrawal engine (`[withdrawals]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WithdrawalSettings {
    /// How often the watcher checks for mined transactions.
    pub poll_interval: std::time::Duration,
    /// How long a transaction may stay unmined before it is re-broadcast with higher fees.
    pub rebroadcast_after: std::time::Duration,
    /// How many transactions may be between taking a nonce and being broadcast at once (KMS requests in
    /// flight). More only queues inside the key service, where a slow signature for a low nonce holds
    /// back every higher one.
    pub signing_concurrency: usize,
}

impl Default for WithdrawalSettings {
    fn default() -> Self {
        Self {
            poll_interval: std::time::Duration::from_millis(500),
            rebroadcast_after: std::time::Duration::from_secs(60),
            signing_concurrency: 32,
        }
    }
}

/// A configuration error, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The Ethereum node reads are proxied to and transactions sent through (its API key, if the URL
    /// holds one, never shows in `Debug`, logs or errors).
    pub upstream: ethkms::NodeUrl,
    /// The audit log file.
    pub audit_log: PathBuf,
    /// Keys by the name clients use.
    pub keys: BTreeMap<String, KeyConfig>,
    /// Key backends besides the service's own, by name (`[backends.NAME]`).
    pub backends: BTreeMap<String, BackendConfig>,
    /// Clients by name.
    pub clients: BTreeMap<String, ClientConfig>,
    /// Serve HTTPS with this certificate and key (PEM files); plain HTTP when `None`.
    pub tls: Option<TlsConfig>,
    /// The withdrawal journal (a SQLite file, or PostgreSQL shared by replicas); REST withdrawals are off
    /// without it.
    pub journal: Option<JournalLocation>,
    /// This replica's name and lease time.
    pub replica: ReplicaSettings,
    /// How withdrawals are watched and re-broadcast.
    pub withdrawals: WithdrawalSettings,
    /// How much the service takes on at once.
    pub limits: crate::limits::Limits,
    /// Customer deposit addresses, if any.
    pub deposits: Option<DepositSettings>,
    /// How clients' webhooks are delivered.
    pub webhooks: WebhookSettings,
}

/// The listener's certificate and private key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// One key the service signs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyConfig {
    /// The KMS key id, ARN or alias (on a PKCS#11 token: its label as `alias/LABEL`, or its key id).
    pub key: String,
    /// The backend it lives in, by name in [`Config::backends`]; the service's own when `None`.
    pub backend: Option<String>,
    /// The chain it signs for.
    pub chain_id: u64,
    /// Blocks (the including one counted) before its transactions are final.
    pub confirmations: u64,
    /// Fee caps for every transaction it signs.
    pub fees: FeeCaps,
    /// Its rules.
    pub policy: KeyPolicy,
    /// Its four-eyes approvals, if its large withdrawals need them.
    pub approvals: Option<ApprovalSettings>,
}

/// A client of the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// SHA-256 of its bearer token.
    pub token_sha256: [u8; 32],
    /// The keys it may use, by name.
    pub keys: Vec<String>,
    /// The JSON-RPC methods it may call (`eth_*` reads are always allowed).
    pub methods: Vec<String>,
    /// Where the changes of its withdrawals and deposits are posted, if anywhere.
    pub webhook: Option<WebhookConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    upstream: String,
    audit_log: PathBuf,
    #[serde(default)]
    keys: BTreeMap<String, RawKey>,
    #[serde(default)]
    backends: BTreeMap<String, backends::RawBackend>,
    #[serde(default)]
    clients: BTreeMap<String, RawClient>,
    tls: Option<TlsConfig>,
    journal: Option<String>,
    #[serde(default)]
    replica: replica::RawReplica,
    #[serde(default)]
    withdrawals: RawWithdrawals,
    #[serde(default)]
    limits: crate::limits::Limits,
    deposits: Option<deposits::RawDeposits>,
    #[serde(default)]
    webhooks: webhooks::RawWebhookSettings,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWithdrawals {
    poll_interval_ms: Option<u64>,
    rebroadcast_after_seconds: Option<u64>,
    signing_concurrency: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    key: String,
    backend: Option<String>,
    chain_id: u64,
    confirmations: Option<u64>,
    #[serde(default)]
    fees: RawFees,
    #[serde(default)]
    policy: policy::RawPolicy,
    approvals: Option<approvals::RawApprovals>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFees {
    max_fee_per_gas: Option<String>,
    max_priority_fee_per_gas: Option<String>,
    max_fee_per_tx: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    token_sha256: String,
    keys: Vec<String>,
    methods: Vec<String>,
    webhook: Option<webhooks::RawWebhook>,
}

/// The methods whose transactions take a nonce, and so need the journal.
pub const JOURNALLED_METHODS: [&str; 3] = ["eth_signTransaction", "eth_sendTransaction", "withdrawals"];

/// The method that gives a client the deposit addresses and deposits of its keys.
pub const DEPOSITS_METHOD: &str = "deposits";

/// The method that lets a client list its keys' withdrawals waiting for approvals and post approvers'
/// decisions (each checked by its EIP-712 signature: the client only carries them).
pub const APPROVALS_METHOD: &str = "approvals";

/// The method that lets a client propose time-locked additions to its keys' destination allowlists and
/// remove them (`/v1/keys/{key}/allowlist`).
pub const ALLOWLIST_METHOD: &str = "allowlist";

/// The JSON-RPC methods that sign.
pub const SIGNING_METHODS: [&str; 6] =
    ["eth_sign", "personal_sign", "eth_signTypedData_v4", "eth_signTransaction", "eth_sendTransaction", "withdrawals"];

impl Config {
    /// Parses and checks the TOML text of a configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting that is wrong: invalid TOML, an unknown field, a bad address,
    /// amount or selector, a client naming a key or method that does not exist, a token hash that is not
    /// 64 hexadecimal digits, or two clients with the same token.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        // Not the parser's own text, which quotes the line: a URL on it (a webhook's, the node's) may hold
        // credentials, and a secret written where it does not belong is still a secret.
        let raw: RawConfig = toml::from_str(text).map_err(|error| {
            let line =
                error.span().and_then(|span| text.get(..span.start)).map(|before| before.matches('\n').count() + 1);
            let message = crate::shared::redact_urls(error.message().trim_end());
            ConfigError(line.map_or_else(|| message.clone(), |line| format!("line {line}: {message}")))
        })?;
        let backends = backends::backends(raw.backends)?;
        let mut keys = BTreeMap::new();
        for (name, key) in raw.keys {
            if name.is_empty() || name.starts_with('@') {
                return Err(ConfigError(format!("keys.{name:?}: a key's name must not be empty or start with `@`")));
            }
            let fees = fee_caps(&name, &key.fees)?;
            let policy = KeyPolicy { fees, ..policy::policy(&name, key.policy)? };
            if key.chain_id == 0 {
                return Err(ConfigError(format!(
                    "keys.{name}.chain_id: 0 names no chain (an EIP-7702 authorization for it is valid on every chain)"
                )));
            }
            let confirmations = key.confirmations.unwrap_or(DEFAULT_CONFIRMATIONS);
            if confirmations == 0 {
                return Err(ConfigError(format!(
                    "keys.{name}.confirmations: must be at least 1 (the block that includes the transaction)"
                )));
            }
            if let Some(backend) = key.backend.as_ref().filter(|backend| !backends.contains_key(*backend)) {
                return Err(ConfigError(format!("keys.{name}.backend: no backend named `{backend}` in [backends]")));
            }
            let approvals = approvals::approvals(&name, key.approvals, raw.journal.is_some())?;
            let (chain_id, backend) = (key.chain_id, key.backend);
            keys.insert(name, KeyConfig { key: key.key, backend, chain_id, confirmations, fees, policy, approvals });
        }
        let mut clients = BTreeMap::new();
        let mut tokens = HashMap::new();
        let raw_journal_is_some = raw.journal.is_some();
        for (name, client) in raw.clients {
            let token_sha256 = parse_hash(&client.token_sha256)
                .ok_or_else(|| ConfigError(format!("clients.{name}.token_sha256: expected 64 hexadecimal digits")))?;
            if let Some(other) = tokens.insert(token_sha256, name.clone()) {
                return Err(ConfigError(format!("clients.{name} and clients.{other} have the same token")));
            }
            for key in &client.keys {
                if !keys.contains_key(key) {
                    return Err(ConfigError(format!("clients.{name}.keys: no key named `{key}` in [keys]")));
                }
            }
            for method in &client.methods {
                if !SIGNING_METHODS.contains(&method.as_str())
                    && method != DEPOSITS_METHOD
                    && method != APPROVALS_METHOD
                    && method != ALLOWLIST_METHOD
                {
                    return Err(ConfigError(format!(
                        "clients.{name}.methods: `{method}` is not a signing method ({}) nor `{DEPOSITS_METHOD}`, \
                         `{APPROVALS_METHOD}` or `{ALLOWLIST_METHOD}`",
                        SIGNING_METHODS.join(", ")
                    )));
                }
            }
            if raw.journal.is_none()
                && let Some(method) = client.methods.iter().find(|method| JOURNALLED_METHODS.contains(&method.as_str()))
            {
                return Err(ConfigError(format!(
                    "clients.{name}.methods: `{method}` needs `journal` (the SQLite file or PostgreSQL database every \
                     transaction and its nonce are kept in)"
                )));
            }
            let webhook = client.webhook.map(|raw| webhooks::webhook(&name, raw, raw_journal_is_some)).transpose()?;
            clients.insert(name, ClientConfig { token_sha256, keys: client.keys, methods: client.methods, webhook });
        }
        let defaults = WithdrawalSettings::default();
        let withdrawals = WithdrawalSettings {
            poll_interval: raw
                .withdrawals
                .poll_interval_ms
                .map_or(defaults.poll_interval, std::time::Duration::from_millis),
            rebroadcast_after: raw
                .withdrawals
                .rebroadcast_after_seconds
                .map_or(defaults.rebroadcast_after, std::time::Duration::from_secs),
            signing_concurrency: raw.withdrawals.signing_concurrency.unwrap_or(defaults.signing_concurrency),
        };
        if withdrawals.poll_interval.is_zero()
            || withdrawals.rebroadcast_after.is_zero()
            || withdrawals.signing_concurrency == 0
        {
            return Err(ConfigError(
                "withdrawals: poll_interval_ms, rebroadcast_after_seconds and signing_concurrency must be more than zero"
                    .into(),
            ));
        }
        raw.limits.validate().map_err(ConfigError)?;
        let deposits = deposits::deposits(raw.deposits, &keys, raw.journal.is_some())?;
        for (name, client) in &clients {
            if client.methods.iter().any(|method| method == DEPOSITS_METHOD) && deposits.is_none() {
                return Err(ConfigError(format!("clients.{name}.methods: `deposits` needs a [deposits] section")));
            }
        }
        Ok(Self {
            listen: raw.listen,
            upstream: raw.upstream.parse().map_err(|error| ConfigError(format!("upstream: {error}")))?,
            audit_log: raw.audit_log,
            keys,
            backends,
            clients,
            tls: raw.tls,
            journal: replica::journal(raw.journal)?,
            replica: replica::replica(raw.replica)?,
            withdrawals,
            limits: raw.limits,
            deposits,
            webhooks: webhooks::settings(&raw.webhooks)?,
        })
    }

    /// The client whose bearer token is `token`, by name. Every client's hash is compared, in constant
    /// time, so the answer's timing does not depend on which (if any) matches.
    #[must_use]
    pub fn authenticate(&self, token: &str) -> Option<(&str, &ClientConfig)> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, client) in &self.clients {
            let difference = client.token_sha256.iter().zip(hash).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some((name.as_str(), client));
            }
        }
        found
    }
}

impl ClientConfig {
    /// Whether the client may call `method` with key `key`.
    #[must_use]
    pub fn may(&self, method: &str, key: &str) -> bool {
        self.methods.iter().any(|allowed| allowed == method) && self.keys.iter().any(|allowed| allowed == key)
    }
}

/// The SHA-256 of a bearer token, in hexadecimal, for `token_sha256`.
#[must_use]
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let bytes = alloy_primitives::hex::decode(text).ok()?;
    bytes.try_into().ok()
}

fn fee_caps(name: &str, raw: &RawFees) -> Result<FeeCaps, ConfigError> {
    let defaults = FeeCaps::default();
    let amount = |field: &str, text: &Option<String>, default: u128| -> Result<u128, ConfigError> {
        let Some(text) = text else { return Ok(default) };
        let value = ethkms::units::parse_value(text)
            .map_err(|error| ConfigError(format!("keys.{name}.fees.{field}: {error}")))?;
        let value = u128::try_from(value)
            .map_err(|_| ConfigError(format!("keys.{name}.fees.{field}: `{text}` is more than any fee")))?;
        if value == 0 {
            return Err(ConfigError(format!("keys.{name}.fees.{field}: must be more than zero")));
        }
        Ok(value)
    };
    Ok(FeeCaps {
        max_fee_per_gas: amount("max_fee_per_gas", &raw.max_fee_per_gas, defaults.max_fee_per_gas)?,
        max_priority_fee_per_gas: amount(
            "max_priority_fee_per_gas",
            &raw.max_priority_fee_per_gas,
            defaults.max_priority_fee_per_gas,
        )?,
        max_fee_per_tx: amount("max_fee_per_tx", &raw.max_fee_per_tx, defaults.max_fee_per_tx)?,
    })
}

#[cfg(test)]
mod tests;
