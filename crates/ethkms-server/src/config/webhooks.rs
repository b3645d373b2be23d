//! Webhooks: a client's `webhook` (where its events are sent, and the secret they are signed with) and
//! `[webhooks]`, how they are delivered (see [`crate::webhooks`]).
//!
//! ```toml
//! webhooks = { timeout_ms = 10000, min_backoff_ms = 1000, max_backoff_ms = 600000, concurrency = 16, poll_interval_ms = 500 }   # the defaults
//!
//! [clients.exchange]
//! token_sha256 = "…"
//! keys = ["hot"]
//! methods = ["withdrawals"]
//! webhook = { url = "https://hooks.example.com/ethkms", secret_env = "EXCHANGE_WEBHOOK_SECRET" }
//! # or: webhook = { url = "…", secret_file = "/run/secrets/exchange-webhook" }
//! ```
//!
//! The secret is never in the file: it is read at start from the environment variable or the file named
//! (exactly one; a file's trailing newline is not part of it), and a missing or empty one is an error
//! naming the client and where it was looked for. The URL may hold credentials, so it never appears in
//! logs, errors or `Debug` output. A webhook needs `journal` (the outbox is in it).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::webhooks::signature::WebhookSecret;

/// A client's webhook.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Where its events are posted (`http` or `https`).
    pub url: reqwest::Url,
    /// What they are signed with.
    pub secret: WebhookSecret,
}

/// Neither the URL (it may carry credentials) nor the secret.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig").field("url", &"[redacted]").field("secret", &self.secret).finish()
    }
}

/// How webhooks are delivered (`webhooks = { … }`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookSettings {
    /// How long one attempt may take, connecting included (10 s by default): then it counts as failed.
    pub timeout: Duration,
    /// The back-off after a first failed attempt (1 s by default); it doubles with each further failure.
    pub min_backoff: Duration,
    /// The longest back-off (10 minutes by default). Each wait is drawn at random up to the doubled bound
    /// ("full jitter"), so receivers coming back are not hit by every retry at once.
    pub max_backoff: Duration,
    /// Events (of different subjects) sent at once (16 by default); each client with a webhook has at most
    /// its share (this divided among them, rounded up), so one client's hanging receiver never takes
    /// another's.
    pub concurrency: usize,
    /// How often the outbox is read for new events (500 ms by default).
    pub poll_interval: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            concurrency: 16,
            poll_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    url: String,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhookSettings {
    timeout_ms: Option<u64>,
    min_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    concurrency: Option<usize>,
    poll_interval_ms: Option<u64>,
}

/// Client `name`'s webhook: its URL checked (never quoted), its secret read.
pub(super) fn webhook(name: &str, raw: RawWebhook, journal: bool) -> Result<WebhookConfig, ConfigError> {
    let error = |field: &str, message: String| ConfigError(format!("clients.{name}.webhook.{field}: {message}"));
    if !journal {
        return Err(error("url", "webhooks need `journal` (their outbox is kept in it)".into()));
    }
    let url = reqwest::Url::parse(&raw.url)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
        .ok_or_else(|| {
            error("url", "not an http:// or https:// URL (the value is not shown: it may hold credentials)".into())
        })?;
    let secret = match (raw.secret_env, raw.secret_file) {
        (Some(variable), None) => {
            let value = std::env::var(&variable).map_err(|cause| {
                let why = match cause {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not UTF-8",
                };
                error("secret_env", format!("the environment variable `{variable}` {why}"))
            })?;
            WebhookSecret::new(&value)
                .ok_or_else(|| error("secret_env", format!("the environment variable `{variable}` is empty")))?
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|cause| {
                error("secret_file", format!("`{}` cannot be read: {}", path.display(), cause.kind()))
            })?;
            WebhookSecret::new(text.trim_end_matches(['\n', '\r']))
                .ok_or_else(|| error("secret_file", format!("`{}` is empty", path.display())))?
        }
        _ => {
            return Err(error(
                "secret_env",
                "give exactly one of `secret_env` (an environment variable) and `secret_file` (a file) holding the \
                 secret; the secret itself never goes in the configuration"
                    .into(),
            ));
        }
    };
    Ok(WebhookConfig { url, secret })
}

/// `webhooks = { … }`, checked.
pub(super) fn settings(raw: &RawWebhookSettings) -> Result<WebhookSettings, ConfigError> {
    let defaults = WebhookSettings::default();
    let millis = |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_millis);
    let settings = WebhookSettings {
        timeout: millis(raw.timeout_ms, defaults.timeout),
        min_backoff: millis(raw.min_backoff_ms, defaults.min_backoff),
        max_backoff: millis(raw.max_backoff_ms, defaults.max_backoff),
        concurrency: raw.concurrency.unwrap_or(defaults.concurrency),
        poll_interval: millis(raw.poll_interval_ms, defaults.poll_interval),
    };
    if settings.timeout.is_zero()
        || settings.min_backoff.is_zero()
        || settings.concurrency == 0
        || settings.poll_interval.is_zero()
    {
        return Err(ConfigError(
            "webhooks: timeout_ms, min_backoff_ms, concurrency and poll_interval_ms must be more than zero".into(),
        ));
    }
    if settings.max_backoff < settings.min_backoff {
        return Err(ConfigError("webhooks.max_backoff_ms: must be at least min_backoff_ms".into()));
    }
    Ok(settings)
}
