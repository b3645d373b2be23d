//! The body of `POST /v1/withdrawals`: bytes to a checked [`WithdrawalBody`]. Pure and total — any input
//! gives a body or a [`BodyError`], never a panic — and built without the `service` feature, so the
//! `withdrawal_body` fuzz target runs the very function the handler calls.
//!
//! ```
//! use ethkms_server::policy::Asset;
//! use ethkms_server::withdrawals::body::{BodyError, parse_withdrawal};
//!
//! let body = br#"{"idempotency_key": "payout-1", "key": "hot",
//!     "to": "0x000000000000000000000000000000000000dead", "asset": "ETH", "amount": "0.25ether"}"#;
//! let withdrawal = parse_withdrawal(body)?;
//! assert_eq!((withdrawal.asset, withdrawal.amount.as_str()), (Asset::Ether, "0.25ether"));
//! assert!(matches!(parse_withdrawal(b"{}"), Err(BodyError::NotAWithdrawal(_))));
//! # Ok::<(), BodyError>(())
//! ```

use alloy_primitives::Address;
use serde::Deserialize;

use crate::policy::Asset;

/// The longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 200;

/// The JSON a client sends: every field required, no others.
///
/// The patterns in the OpenAPI document describe what is always accepted; the server also takes an
/// EIP-55 mixed-case address and, for ETH, an amount with a unit (`0.25ether`, `20gwei`).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(feature = "service", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WithdrawalRequest {
    /// The client's key for this withdrawal: the same key again answers the same withdrawal (`200`),
    /// with other parameters `409`.
    #[cfg_attr(
        feature = "service",
        schema(min_length = 1, max_length = 200, pattern = r"^[^\x00-\x1F\x7F-\x9F]+$", example = "payout-8812")
    )]
    pub idempotency_key: String,
    /// The name of the signing key in the server's configuration.
    #[cfg_attr(feature = "service", schema(example = "hot"))]
    pub key: String,
    /// The recipient: `0x` and 40 hexadecimal digits, all lower or all upper case (or EIP-55).
    #[cfg_attr(
        feature = "service",
        schema(pattern = r"^0x([0-9a-f]{40}|[0-9A-F]{40})$", example = "0x000000000000000000000000000000000000dead")
    )]
    pub to: String,
    /// `ETH`, or an ERC-20 contract address.
    #[cfg_attr(
        feature = "service",
        schema(pattern = r"^([Ee][Tt][Hh]|0x[0-9a-f]{40}|0x[0-9A-F]{40})$", example = "ETH")
    )]
    pub asset: String,
    /// More than zero: wei for ETH (or with a unit: `0.25ether`, `20gwei`), else the token's smallest unit.
    #[cfg_attr(feature = "service", schema(pattern = r"^[1-9][0-9]{0,75}$", example = "1000"))]
    pub amount: String,
}

/// A withdrawal request with its fields checked, except the amount, whose meaning depends on the asset
/// (ETH amounts take units) and which the handler reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WithdrawalBody {
    /// 1 to [`MAX_IDEMPOTENCY_KEY_CHARS`] characters.
    pub idempotency_key: String,
    /// The key's name (not yet checked to exist).
    pub key: String,
    /// The recipient.
    pub to: Address,
    /// What is sent.
    pub asset: Asset,
    /// The amount as the client wrote it.
    pub amount: String,
}

/// Why a body is not a withdrawal (each answered `400 invalid_request` with this message).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// Not JSON, not an object, a field missing, of the wrong type, or unknown.
    #[error("the body is not a withdrawal: {0}")]
    NotAWithdrawal(String),
    /// The idempotency key is empty, too long, or holds a control character (a NUL, which no PostgreSQL
    /// text can hold, among them).
    #[error("`idempotency_key` must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters, none of them a control character")]
    IdempotencyKey,
    /// `to` is not an address.
    #[error("`to`: {0}")]
    To(String),
    /// `asset` is neither `ETH` nor an address.
    #[error("`asset` must be ETH or an ERC-20 contract address: {0}")]
    Asset(String),
}

/// Parses and checks the body of `POST /v1/withdrawals`.
///
/// # Errors
/// [`BodyError`], naming what is wrong.
pub fn parse_withdrawal(body: &[u8]) -> Result<WithdrawalBody, BodyError> {
    let request: WithdrawalRequest =
        serde_json::from_slice(body).map_err(|error| BodyError::NotAWithdrawal(error.to_string()))?;
    if !(1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&request.idempotency_key.chars().count())
        || request.idempotency_key.chars().any(char::is_control)
    {
        return Err(BodyError::IdempotencyKey);
    }
    let to = address(&request.to).map_err(BodyError::To)?;
    let asset = if request.asset.eq_ignore_ascii_case("eth") {
        Asset::Ether
    } else {
        Asset::Token(address(&request.asset).map_err(BodyError::Asset)?)
    };
    Ok(WithdrawalBody { idempotency_key: request.idempotency_key, key: request.key, to, asset, amount: request.amount })
}

/// An address as `ethkms::units::parse_address` reads it: 40 hexadecimal digits after `0x`, mixed case only
/// as its EIP-55 checksum.
fn address(text: &str) -> Result<Address, String> {
    ethkms_core::Address::parse_checksummed(text.trim())
        .map(|address| Address::from(address.0))
        .map_err(|error| format!("`{text}`: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(idempotency_key: &str, to: &str, asset: &str) -> Vec<u8> {
        serde_json::json!({ "idempotency_key": idempotency_key, "key": "hot", "to": to, "asset": asset, "amount": "1" })
            .to_string()
            .into_bytes()
    }

    const DEAD: &str = "0x000000000000000000000000000000000000dEaD";

    #[test]
    fn a_good_body_is_read_and_each_bad_field_is_named() {
        let parsed = parse_withdrawal(&body("k", DEAD, "eth")).unwrap();
        assert_eq!((parsed.to, parsed.asset), (DEAD.parse().unwrap(), Asset::Ether));
        let token = parse_withdrawal(&body("k", DEAD, &DEAD.to_uppercase().replace("0X", "0x"))).unwrap();
        assert_eq!(token.asset, Asset::Token(DEAD.parse().unwrap()));

        assert_eq!(parse_withdrawal(&body("", DEAD, "ETH")), Err(BodyError::IdempotencyKey));
        // Characters, not bytes: 200 two-byte characters are a good key, 201 are not.
        assert!(parse_withdrawal(&body(&"é".repeat(200), DEAD, "ETH")).is_ok());
        assert_eq!(parse_withdrawal(&body(&"é".repeat(201), DEAD, "ETH")), Err(BodyError::IdempotencyKey));
        assert!(matches!(parse_withdrawal(&body("k", "0x12", "ETH")), Err(BodyError::To(_))));
        // A wrong EIP-55 checksum (the last letter's case flipped).
        assert!(matches!(parse_withdrawal(&body("k", &DEAD.replace("aD", "ad"), "ETH")), Err(BodyError::To(_))));
        assert!(matches!(parse_withdrawal(&body("k", DEAD, "DOGE")), Err(BodyError::Asset(_))));
        for bad in [&b"{"[..], b"[]", b"null", br#"{"idempotency_key": "k"}"#] {
            assert!(matches!(parse_withdrawal(bad), Err(BodyError::NotAWithdrawal(_))), "{bad:?}");
        }
        let mut extra: serde_json::Value = serde_json::from_slice(&body("k", DEAD, "ETH")).unwrap();
        extra["memo"] = "hi".into();
        let error = parse_withdrawal(extra.to_string().as_bytes()).unwrap_err();
        assert!(error.to_string().contains("unknown field `memo`"), "{error}");
    }

    #[test]
    fn a_control_character_in_the_idempotency_key_is_refused() {
        let to = "0x000000000000000000000000000000000000dEaD";
        for key in ["pay\u{0}out", "pay\nout", "\u{7f}"] {
            let error = parse_withdrawal(&body(key, to, "ETH")).unwrap_err();
            assert!(matches!(error, BodyError::IdempotencyKey), "{key:?}: {error}");
            assert!(error.to_string().contains("control character"), "{error}");
        }
        assert!(parse_withdrawal(&body("payout-ünïcode 1", to, "ETH")).is_ok());
    }
}
