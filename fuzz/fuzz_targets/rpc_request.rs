//! The signing service's JSON-RPC request parser: never panics, and every error it reports renders as a
//! JSON-RPC error object with a numeric code.
#![no_main]

use ethkms_server::rpc::{RequestBody, parse_body};
use serde_json::Value;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let calls = match parse_body(data) {
        Err(error) => vec![Err((Value::Null, error))],
        Ok(RequestBody::Single(call)) => vec![call],
        Ok(RequestBody::Batch(calls)) => calls,
    };
    for call in calls {
        if let Err((id, error)) = call {
            assert!(error.to_json(&id)["error"]["code"].is_i64());
        }
    }
});
