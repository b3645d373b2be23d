//! Exit codes and the errors that carry them. [`Exit`] is the one table: `ethkms --help` prints it, the
//! README repeats it, and a test checks both against it.

use std::fmt;

use ethkms::backend::BackendError;
use ethkms::eth::SignerError;

/// What the process exits with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    Success = 0,
    Failure = 1,
    Usage = 2,
    NotFound = 3,
    Credentials = 4,
    KeyUnusable = 5,
    Network = 6,
    Transaction = 7,
    InvalidSignature = 8,
}

impl Exit {
    /// Every exit code, in order.
    pub(crate) const ALL: [Self; 9] = [
        Self::Success,
        Self::Failure,
        Self::Usage,
        Self::NotFound,
        Self::Credentials,
        Self::KeyUnusable,
        Self::Network,
        Self::Transaction,
        Self::InvalidSignature,
    ];

    /// The number the process exits with.
    pub(crate) const fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, in one line.
    pub(crate) const fn meaning(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "any other failure",
            Self::Usage => {
                "invalid arguments (bad value, address, key reference, typed data, wrong chain, unsupported by the backend)"
            }
            Self::NotFound => "key or alias not found",
            Self::Credentials => {
                "credentials or permissions (missing or rejected credentials or PIN, locked token, access denied, no region)"
            }
            Self::KeyUnusable => "key unusable (wrong key type or usage, disabled, pending deletion)",
            Self::Network => "network (KMS or Ethereum node unreachable, timed out, throttled)",
            Self::Transaction => "transaction failed (reverted, or not mined in time)",
            Self::InvalidSignature => {
                "verification failed: a signature (`ethkms verify`), an audit log (`ethkms audit verify`) or a webhook \
                 request (`ethkms webhook verify`)"
            }
        }
    }
}

/// The exit-code table shown by `ethkms --help`.
pub(crate) fn help() -> String {
    let mut text = String::from("Exit codes:");
    for exit in Exit::ALL {
        text.push_str(&format!("\n  {}  {}", exit.code(), exit.meaning()));
    }
    text
}

/// An error for the user: one line (which ends with a hint where there is one) and an exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) exit: Exit,
    pub(crate) message: String,
    /// The error and its sources, one per line, shown with `-v`.
    pub(crate) detail: Option<String>,
    /// The key service could not be reached, for this reason: the message is written once the endpoint
    /// is known (see [`CliError::at_endpoint`]).
    unreachable: Option<String>,
}

impl CliError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self { exit, message: message.into(), detail: None, unreachable: None }
    }

    /// Puts `context` (what was being done) before the message.
    pub(crate) fn context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// Names the key service's endpoint in an error that says it could not be reached.
    pub(crate) fn at_endpoint(mut self, endpoint: &str) -> Self {
        if let Some(cause) = self.unreachable.take() {
            self.message = format!(
                "could not reach the key service at {endpoint} ({cause}); check --kms-endpoint / \
                 AWS_ENDPOINT_URL_KMS / AWS_ENDPOINT_URL and that the service is running"
            );
        }
        self
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The error and each of its sources, by their `Display`, one per line (a source already contained in
/// the line before it is skipped).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut lines: Vec<String> = vec![error.to_string()];
    let mut next = error.source();
    while let Some(source) = next {
        let text = source.to_string();
        if !lines.iter().any(|line| line.contains(&text)) {
            lines.push(text);
        }
        next = source.source();
    }
    lines.join("\n  caused by: ")
}

fn backend_exit(error: &BackendError) -> Exit {
    match error {
        BackendError::NotFound { .. } => Exit::NotFound,
        BackendError::AccessDenied { .. }
        | BackendError::PinIncorrect { .. }
        | BackendError::TokenLocked { .. }
        | BackendError::MissingCredentials { .. }
        | BackendError::InvalidCredentials { .. }
        | BackendError::NotLoggedIn { .. }
        | BackendError::Configuration { .. } => Exit::Credentials,
        BackendError::Disabled { .. }
        | BackendError::PendingDeletion { .. }
        | BackendError::InvalidState { .. }
        | BackendError::WrongKeySpec { .. }
        | BackendError::WrongKeyUsage { .. }
        | BackendError::InvalidPublicKey { .. } => Exit::KeyUnusable,
        BackendError::Throttled { .. } | BackendError::Transport { .. } | BackendError::Timeout { .. } => Exit::Network,
        BackendError::Service { retryable: true, .. } => Exit::Network,
        BackendError::InvalidKeyReference { .. }
        | BackendError::AmbiguousKey { .. }
        | BackendError::InvalidArgument { .. }
        | BackendError::AliasExists { .. }
        | BackendError::Unsupported { .. } => Exit::Usage,
        _ => Exit::Failure,
    }
}

/// `text` with its lines joined by spaces.
fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join(" ")
}

/// The last, most specific part of a transport failure ("Connection refused (os error 111)").
fn transport_cause(message: &str) -> String {
    message.rsplit(": ").next().unwrap_or(message).trim().to_owned()
}

impl From<BackendError> for CliError {
    fn from(error: BackendError) -> Self {
        let unreachable = match &error {
            BackendError::Transport { message, .. } => Some(transport_cause(message)),
            _ => None,
        };
        let message = match &error {
            // What the SDK's credential chain tried is many lines: it is the detail (`-v`), not the message.
            BackendError::MissingCredentials { .. } => "no credentials for the key service; provide \
                AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE or --aws-profile), SSO (`aws sso \
                login`), web identity or an instance role (-v shows where they were looked for)"
                .to_owned(),
            other => one_line(&other.to_string()),
        };
        Self { exit: backend_exit(&error), message, detail: Some(chain(&error)), unreachable }
    }
}

impl From<SignerError> for CliError {
    fn from(error: SignerError) -> Self {
        if let SignerError::Backend(backend) = error {
            return backend.into();
        }
        let exit = match &error {
            SignerError::Rpc(_) => Exit::Network,
            SignerError::ReceiptTimeout { .. } | SignerError::Reverted { .. } => Exit::Transaction,
            SignerError::ChainIdMismatch { .. }
            | SignerError::ReplayableLegacyTransaction
            | SignerError::AuthorizationChainMismatch { .. }
            | SignerError::MissingChainId
            | SignerError::TypedData(_)
            | SignerError::InvalidArgument(_) => Exit::Usage,
            _ => Exit::Failure,
        };
        let message = match &error {
            SignerError::Rpc(message) => {
                format!("Ethereum node: {message}; check --rpc-url / ETH_RPC_URL and that the node is reachable")
            }
            other => one_line(&other.to_string()),
        };
        Self { exit, message, detail: Some(chain(&error)), unreachable: None }
    }
}

impl From<ethkms::iam::IamError> for CliError {
    fn from(error: ethkms::iam::IamError) -> Self {
        Self::usage(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_every_code_once_in_order() {
        for (index, exit) in Exit::ALL.iter().enumerate() {
            assert_eq!(usize::from(exit.code()), index, "{exit:?}");
            assert!(!exit.meaning().is_empty() && !exit.meaning().contains('\n'), "{exit:?}");
        }
        let help = help();
        assert_eq!(help.lines().count(), Exit::ALL.len() + 1, "{help}");
        assert!(help.contains("\n  4  credentials or permissions"), "{help}");
    }

    #[test]
    fn a_transport_failure_names_the_endpoint_and_the_fix_in_one_line() {
        let error = CliError::from(BackendError::Transport {
            key: "(new key)".into(),
            message: "dispatch failure: io error: client error (Connect): tcp connect error: Connection refused \
                      (os error 111)"
                .into(),
        })
        .at_endpoint("http://127.0.0.1:1");
        assert_eq!(error.exit, Exit::Network);
        assert_eq!(
            error.message,
            "could not reach the key service at http://127.0.0.1:1 (Connection refused (os error 111)); check \
             --kms-endpoint / AWS_ENDPOINT_URL_KMS / AWS_ENDPOINT_URL and that the service is running"
        );
        assert!(error.detail.as_deref().is_some_and(|detail| detail.contains("tcp connect error")), "{error:?}");
        let credentials = CliError::from(BackendError::MissingCredentials {
            message: "no credentials found in chain. Attempted:\n  Environment: not set\n  Profile: not set".into(),
        });
        assert!(!credentials.message.contains('\n') && credentials.message.contains("AWS_PROFILE"), "{credentials}");
        assert!(credentials.detail.as_deref().is_some_and(|detail| detail.contains("Profile: not set")));
        let other = CliError::from(BackendError::NotFound { key: "alias/x".into() }).at_endpoint("http://e");
        assert!(!other.message.contains("http://e") && other.exit == Exit::NotFound, "{}", other.message);
    }
}
