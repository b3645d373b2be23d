//! Turning AWS SDK errors into [`BackendError`]s that name the key and say what to do.

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use ethkms_backend::BackendError;

/// Maps an SDK error of a request about `key` (for the KMS `action`, e.g. `"Sign"`).
pub(crate) fn map_sdk_error<E, R>(error: &SdkError<E, R>, key: &str, action: &'static str) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let key = key.to_owned();
    match error {
        SdkError::ServiceError(context) => {
            let service_error = context.err();
            classify(service_error.code().unwrap_or("Unknown"), service_error.message().unwrap_or(""), key, action)
        }
        SdkError::TimeoutError(_) => BackendError::Timeout { key, after: None },
        SdkError::DispatchFailure(failure) => {
            let message = chain(error);
            if failure.is_timeout() {
                BackendError::Timeout { key, after: None }
            } else if mentions_credentials(&message) {
                BackendError::MissingCredentials { message }
            } else {
                BackendError::Transport { key, message }
            }
        }
        SdkError::ConstructionFailure(_) => {
            let message = chain(error);
            if mentions_credentials(&message) {
                BackendError::MissingCredentials { message }
            } else {
                BackendError::Configuration { message }
            }
        }
        SdkError::ResponseError(_) => BackendError::MalformedResponse { key, detail: chain(error) },
        _ => BackendError::Service { key, code: "Unknown".into(), message: chain(error), retryable: false },
    }
}

/// Maps a KMS error code and message.
pub(crate) fn classify(code: &str, message: &str, key: String, action: &'static str) -> BackendError {
    let lower = message.to_ascii_lowercase();
    let message = message.to_owned();
    match code {
        "NotFoundException" => BackendError::NotFound { key },
        "DisabledException" => BackendError::Disabled { key },
        "KMSInvalidStateException" if lower.contains("pending deletion") || lower.contains("pendingdeletion") => {
            BackendError::PendingDeletion { key }
        }
        "KMSInvalidStateException" if lower.contains("disabled") => BackendError::Disabled { key },
        "KMSInvalidStateException" => BackendError::InvalidState { key, state: message },
        "AccessDeniedException" => BackendError::AccessDenied { key, action, message },
        "ThrottlingException" | "ThrottledException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
            BackendError::Throttled { key, message }
        }
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "InvalidClientTokenId"
        | "IncompleteSignature"
        | "MissingAuthenticationToken" => BackendError::InvalidCredentials { message },
        "KMSInternalException"
        | "DependencyTimeoutException"
        | "KeyUnavailableException"
        | "ServiceUnavailable"
        | "InternalFailure" => BackendError::Service { key, code: code.to_owned(), message, retryable: true },
        _ => BackendError::Service { key, code: code.to_owned(), message, retryable: false },
    }
}

/// The error and all its sources by their `Display`, as one line (never the SDK's `Debug` dump); a
/// source whose text the line already holds is skipped.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if !text.is_empty() && !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

/// Whether the request provably never reached the service: the connection itself was refused or had no
/// route. (A request that may have been sent, even if no answer came, is not this.)
pub(crate) fn never_sent<E, R>(error: &SdkError<E, R>) -> bool
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    use std::io::ErrorKind;
    let SdkError::DispatchFailure(_) = error else { return false };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        next = error.source();
    }
    false
}

fn mentions_credentials(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("credential") && !lower.contains("invalid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_codes_map_to_their_variants() {
        let map = |code: &str, message: &str| classify(code, message, "alias/k".into(), "Sign");
        assert!(matches!(map("NotFoundException", "Key 'x' does not exist"), BackendError::NotFound { .. }));
        assert!(matches!(map("DisabledException", ""), BackendError::Disabled { .. }));
        assert!(matches!(
            map("KMSInvalidStateException", "arn:aws:kms:…:key/x is pending deletion."),
            BackendError::PendingDeletion { .. }
        ));
        assert!(matches!(map("KMSInvalidStateException", "key is PendingImport"), BackendError::InvalidState { .. }));
        assert!(matches!(map("ThrottlingException", "Rate exceeded"), BackendError::Throttled { .. }));
        assert!(matches!(
            map("AccessDeniedException", "not authorized"),
            BackendError::AccessDenied { action: "Sign", .. }
        ));
        assert!(matches!(map("UnrecognizedClientException", "bad token"), BackendError::InvalidCredentials { .. }));
        let internal = map("KMSInternalException", "oops");
        assert!(internal.is_retryable(), "{internal:?}");
        let other = map("ValidationException", "bad digest");
        assert!(!other.is_retryable() && other.to_string().contains("ValidationException"), "{other}");
        assert_eq!(other.key(), Some("alias/k"));
    }
}
