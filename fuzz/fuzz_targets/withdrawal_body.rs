//! The REST withdrawal body parser (`POST /v1/withdrawals`), the very function the handler calls: never
//! panics, every error has a message, and what it accepts has a valid idempotency key and reads the same
//! when written back.
#![no_main]

use ethkms_server::policy::Asset;
use ethkms_server::withdrawals::body::{MAX_IDEMPOTENCY_KEY_CHARS, parse_withdrawal};

libfuzzer_sys::fuzz_target!(|data: &[u8]| match parse_withdrawal(data) {
    Ok(body) => {
        assert!((1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&body.idempotency_key.chars().count()));
        let asset = match body.asset {
            Asset::Ether => "ETH".to_owned(),
            Asset::Token(token) => token.to_string(),
        };
        let written = serde_json::json!({
            "idempotency_key": body.idempotency_key, "key": body.key, "to": body.to.to_string(),
            "asset": asset, "amount": body.amount,
        });
        assert_eq!(parse_withdrawal(written.to_string().as_bytes()).as_ref(), Ok(&body));
    }
    Err(error) => assert!(!error.to_string().is_empty()),
});
