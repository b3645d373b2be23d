//! PKCS#11 return values as [`BackendError`]s: each names the key (or token) and the `CKR_…` code, in
//! one line. Which codes are worth a retry: a token that is busy or briefly gone, never a refusal.

use cryptoki::error::{Error, RvError};
use ethkms_backend::BackendError;

/// The `CKR_…` name of a return value (`PinIncorrect` → `CKR_PIN_INCORRECT`).
pub(crate) fn ckr_name(rv: RvError) -> String {
    let camel = format!("{rv:?}");
    let mut name = String::from("CKR");
    for character in camel.chars() {
        if character.is_ascii_uppercase() {
            name.push('_');
        }
        name.push(character.to_ascii_uppercase());
    }
    name
}

/// The PKCS#11 return value of an error, if it is one.
pub(crate) fn rv(error: &Error) -> Option<RvError> {
    match error {
        Error::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// What a failed PKCS#11 call means for `key` on token `token`.
pub(crate) fn backend_error(error: &Error, key: &str, token: &str) -> BackendError {
    let key = key.to_owned();
    let Error::Pkcs11(rv, function) = error else {
        return match error {
            Error::LibraryLoading(cause) => {
                BackendError::Configuration { message: format!("the PKCS#11 module could not be loaded: {cause}") }
            }
            other => BackendError::Service {
                key,
                code: "PKCS11_CLIENT".into(),
                message: format!("the PKCS#11 client failed: {other}"),
                retryable: false,
            },
        };
    };
    let code = ckr_name(*rv);
    let service = |message: String, retryable: bool| BackendError::Service {
        key: key.clone(),
        code: code.clone(),
        message: format!("{function} on token `{token}`: {message}"),
        retryable,
    };
    match rv {
        RvError::PinLocked => BackendError::TokenLocked { token: token.to_owned(), reason: "CKR_PIN_LOCKED" },
        RvError::PinExpired => BackendError::TokenLocked { token: token.to_owned(), reason: "CKR_PIN_EXPIRED" },
        RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => BackendError::NotFound { key },
        RvError::SessionCount | RvError::FunctionNotParallel | RvError::OperationActive => BackendError::Throttled {
            key,
            message: format!("token `{token}` is busy ({code}); fewer sessions (max_sessions) or a retry help"),
        },
        RvError::DeviceRemoved
        | RvError::TokenNotPresent
        | RvError::SessionClosed
        | RvError::SessionHandleInvalid
        | RvError::DeviceError => {
            BackendError::Transport { key, message: format!("token `{token}` is unavailable ({code} from {function})") }
        }
        RvError::GeneralError | RvError::FunctionFailed | RvError::DeviceMemory | RvError::HostMemory => {
            service("the token failed; a retry may succeed".into(), true)
        }
        // Met by logging in again and running the request once more (`Token::run`): what is left is this.
        RvError::UserNotLoggedIn => BackendError::NotLoggedIn { token: token.to_owned() },
        RvError::TokenWriteProtected | RvError::SessionReadOnly => {
            service("the token is read-only: keys cannot be created or changed on it".into(), false)
        }
        RvError::MechanismInvalid => BackendError::Unsupported {
            key,
            backend: "pkcs11",
            operation: "use a mechanism the token lacks",
            reason: format!(
                "token `{token}` does not offer the mechanism C_{function:?} asked for (CKR_MECHANISM_INVALID)"
            ),
        },
        RvError::CurveNotSupported | RvError::DomainParamsInvalid => {
            service("the token does not support this key type or curve".into(), false)
        }
        _ => service("refused".into(), false),
    }
}

#[cfg(test)]
mod tests {
    use cryptoki::context::Function;

    use super::*;

    #[test]
    fn codes_are_named_as_the_standard_names_them() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(ckr_name(RvError::KeyFunctionNotPermitted), "CKR_KEY_FUNCTION_NOT_PERMITTED");
        assert_eq!(ckr_name(RvError::SlotIdInvalid), "CKR_SLOT_ID_INVALID");
    }

    #[test]
    fn errors_are_typed_and_only_a_busy_or_missing_token_is_retried() {
        let error = |rv| backend_error(&Error::Pkcs11(rv, Function::Sign), "alias/hot", "treasury");
        assert!(matches!(error(RvError::PinLocked), BackendError::TokenLocked { reason: "CKR_PIN_LOCKED", .. }));
        assert!(matches!(error(RvError::KeyHandleInvalid), BackendError::NotFound { key } if key == "alias/hot"));
        assert!(error(RvError::SessionCount).is_retryable());
        assert!(error(RvError::DeviceRemoved).is_retryable());
        assert!(error(RvError::GeneralError).is_retryable());
        assert!(matches!(error(RvError::UserNotLoggedIn), BackendError::NotLoggedIn { token } if token == "treasury"));
        let lacking = error(RvError::MechanismInvalid);
        assert!(matches!(&lacking, BackendError::Unsupported { key, .. } if key == "alias/hot"), "{lacking:?}");
        assert!(lacking.to_string().contains("CKR_MECHANISM_INVALID"), "{lacking}");
        let refused = error(RvError::TemplateInconsistent);
        assert!(!refused.is_retryable());
        let text = refused.to_string();
        assert!(
            text.contains("CKR_TEMPLATE_INCONSISTENT") && text.contains("treasury") && !text.contains('\n'),
            "{text}"
        );
    }
}
