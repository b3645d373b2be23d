//! Webhook signatures, in the style payment providers use: every request carries
//!
//! ```text
//! Ethkms-Signature: t=1735689600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//! Ethkms-Event-Id: 0f8fad5b-d9cb-469f-a165-70867728950e
//! ```
//!
//! `t` is when the request was signed (Unix seconds), `v1` the hexadecimal HMAC-SHA256, keyed with the
//! client's webhook secret (its bytes as configured), of `t`, a dot and the raw body: `"{t}.{body}"`.
//! Receivers recompute it over the body exactly as received (before any JSON parsing), compare in constant
//! time, and refuse a timestamp more than [`DEFAULT_TOLERANCE`] (five minutes) from their clock, so a
//! captured request cannot be replayed later; they de-duplicate by the event id (every attempt of one event
//! carries the same id). Several `v1` values may be given (any one matching is enough: a secret being
//! rotated); other schemes are ignored. [`verify`] does all of it, and `ethkms webhook verify` runs it.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header of the signature.
pub const SIGNATURE_HEADER: &str = "Ethkms-Signature";

/// The header of the event's id.
pub const EVENT_ID_HEADER: &str = "Ethkms-Event-Id";

/// How far from the receiver's clock a signature's timestamp may be: five minutes.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A webhook secret: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    /// The secret `text` (its UTF-8 bytes are the HMAC key); `None` if it is empty.
    #[must_use]
    pub fn new(text: &str) -> Option<Self> {
        (!text.is_empty()).then(|| Self(text.as_bytes().to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

/// Why a signature does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The header is not `t=<unix seconds>,v1=<hex>[,v1=<hex>…]`.
    #[error("malformed {SIGNATURE_HEADER} header: {0}")]
    Malformed(String),
    /// The timestamp is too far from now: an old request replayed, or a clock far off.
    #[error(
        "the signature's timestamp {timestamp} is {distance} s from now ({now}), outside the {tolerance} s window: \
         an old request replayed, or a wrong clock"
    )]
    OutsideWindow {
        /// The header's `t`.
        timestamp: u64,
        /// The receiver's clock, Unix seconds.
        now: u64,
        /// How far apart they are, in seconds.
        distance: u64,
        /// The window, in seconds.
        tolerance: u64,
    },
    /// No `v1` is the HMAC of this body with this secret at this timestamp.
    #[error("signature mismatch: no v1 signature is this body's with this secret (a wrong secret, or a changed body)")]
    Mismatch,
}

/// The hexadecimal HMAC-SHA256 of `"{timestamp}.{body}"` under `secret`.
#[must_use]
pub fn signature(secret: &WebhookSecret, timestamp: u64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    alloy_primitives::hex::encode(mac.finalize().into_bytes())
}

/// The value of the [`SIGNATURE_HEADER`] for `body` signed at `timestamp` (Unix seconds).
#[must_use]
pub fn header(secret: &WebhookSecret, timestamp: u64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", signature(secret, timestamp, body))
}

/// Checks `header` (the [`SIGNATURE_HEADER`]'s value) for `body` under `secret` at `now` (Unix seconds):
/// its timestamp within `tolerance` of `now`, and one of its `v1` signatures the body's (compared in
/// constant time). Returns the timestamp.
///
/// # Errors
/// [`VerifyError`] naming what is wrong.
pub fn verify(
    secret: &WebhookSecret,
    header: &str,
    body: &[u8],
    now: u64,
    tolerance: Duration,
) -> Result<u64, VerifyError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.trim().split(',') {
        let Some((name, value)) = part.trim().split_once('=') else {
            return Err(VerifyError::Malformed(format!("`{}` is not name=value", shorten(part))));
        };
        match name {
            "t" if timestamp.is_some() => return Err(VerifyError::Malformed("two timestamps (t=)".into())),
            "t" => {
                let parsed = value.parse::<u64>().map_err(|_| {
                    VerifyError::Malformed(format!("t=`{}` is not a Unix time in seconds", shorten(value)))
                })?;
                timestamp = Some(parsed);
            }
            "v1" => {
                let bytes = alloy_primitives::hex::decode(value)
                    .ok()
                    .filter(|bytes| bytes.len() == 32)
                    .ok_or_else(|| VerifyError::Malformed("a v1 signature is not 64 hexadecimal digits".into()))?;
                signatures.push(bytes);
            }
            _ => {} // other schemes
        }
    }
    let timestamp = timestamp.ok_or_else(|| VerifyError::Malformed("no timestamp (t=)".into()))?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed("no v1 signature".into()));
    }
    let distance = now.abs_diff(timestamp);
    if distance > tolerance.as_secs() {
        return Err(VerifyError::OutsideWindow { timestamp, now, distance, tolerance: tolerance.as_secs() });
    }
    let mut matched = false;
    for candidate in &signatures {
        let mut mac = secret.mac();
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        // Constant time (`subtle`), whatever the candidate.
        matched |= mac.verify_slice(candidate).is_ok();
    }
    if matched { Ok(timestamp) } else { Err(VerifyError::Mismatch) }
}

/// At most 40 characters of `text`, for an error message.
fn shorten(text: &str) -> String {
    let shown: String = text.chars().take(40).collect();
    if shown.len() < text.len() { format!("{shown}…") } else { shown }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> WebhookSecret {
        WebhookSecret::new(text).unwrap()
    }

    const BODY: &[u8] = br#"{"id":"0f8fad5b-d9cb-469f-a165-70867728950e","type":"withdrawal.signed"}"#;
    const NOW: u64 = 1_735_689_600;

    #[test]
    fn a_signed_body_verifies_and_the_signature_is_the_documented_hmac() {
        let key = secret("whsec_test");
        let value = header(&key, NOW, BODY);
        assert_eq!(verify(&key, &value, BODY, NOW + 10, DEFAULT_TOLERANCE), Ok(NOW));
        assert_eq!(verify(&key, &value, BODY, NOW - 10, DEFAULT_TOLERANCE), Ok(NOW), "a receiver's clock behind");
        // Computed independently: printf '%s' '1.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            signature(&secret("key"), 1, b"{}"),
            "1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"
        );
        assert!(value.starts_with(&format!("t={NOW},v1=")) && value.len() == format!("t={NOW},v1=").len() + 64);
        // Several v1 (a secret being rotated) and unknown schemes: one match is enough.
        let other = signature(&secret("old"), NOW, BODY);
        let rotated = format!("t={NOW},v0=abc,v1={other},v1={}", signature(&key, NOW, BODY));
        assert_eq!(verify(&key, &rotated, BODY, NOW, DEFAULT_TOLERANCE), Ok(NOW));
    }

    #[test]
    fn a_wrong_secret_or_a_changed_body_is_a_mismatch() {
        let key = secret("whsec_test");
        let value = header(&key, NOW, BODY);
        assert_eq!(verify(&secret("whsec_other"), &value, BODY, NOW, DEFAULT_TOLERANCE), Err(VerifyError::Mismatch));
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(verify(&key, &value, &tampered, NOW, DEFAULT_TOLERANCE), Err(VerifyError::Mismatch));
        // The timestamp is signed too: moved forward to pass the window, it no longer matches.
        let moved = value.replace(&format!("t={NOW}"), &format!("t={}", NOW + 1000));
        assert_eq!(verify(&key, &moved, BODY, NOW + 1000, DEFAULT_TOLERANCE), Err(VerifyError::Mismatch));
    }

    #[test]
    fn an_old_timestamp_is_refused_with_the_window() {
        let key = secret("whsec_test");
        let value = header(&key, NOW, BODY);
        let error = verify(&key, &value, BODY, NOW + 301, DEFAULT_TOLERANCE).unwrap_err();
        assert_eq!(error, VerifyError::OutsideWindow { timestamp: NOW, now: NOW + 301, distance: 301, tolerance: 300 });
        assert!(error.to_string().contains("outside the 300 s window"), "{error}");
        assert_eq!(verify(&key, &value, BODY, NOW + 301, Duration::from_secs(600)), Ok(NOW), "a wider window");
        assert!(matches!(
            verify(&key, &value, BODY, NOW - 400, DEFAULT_TOLERANCE),
            Err(VerifyError::OutsideWindow { .. })
        ));
    }

    #[test]
    fn a_malformed_header_is_named() {
        let key = secret("whsec_test");
        let good = signature(&key, NOW, BODY);
        for (header, needle) in [
            ("", "not name=value"),
            ("v1=00", "not 64 hexadecimal digits"),
            (&*format!("v1={good}"), "no timestamp"),
            (&*format!("t={NOW}"), "no v1 signature"),
            (&*format!("t=yesterday,v1={good}"), "not a Unix time"),
            (&*format!("t={NOW},t={NOW},v1={good}"), "two timestamps"),
            (&*format!("t={NOW},v1=zz"), "64 hexadecimal digits"),
            (&*format!("t={NOW},v1={}", &good[..62]), "64 hexadecimal digits"),
        ] {
            let error = verify(&key, header, BODY, NOW, DEFAULT_TOLERANCE).unwrap_err();
            assert!(matches!(error, VerifyError::Malformed(_)), "{header}: {error:?}");
            assert!(error.to_string().contains(needle), "{header}: {error}");
        }
        assert!(WebhookSecret::new("").is_none(), "an empty secret is none");
        assert_eq!(format!("{key:?}"), "WebhookSecret([redacted])");
    }
}
