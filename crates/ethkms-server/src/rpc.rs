//! Parsing JSON-RPC 2.0 request bodies: a single call or a batch, each checked to be a well-formed
//! request before anything acts on it. Pure and total: any input gives calls or an error, never a panic
//! (the `rpc_request` fuzz target checks this).

use serde_json::{Value, json};

/// A JSON-RPC error: a code and a message, and optional data.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcError {
    /// The code: -32700 parse error, -32600 invalid request, -32601 no such method, -32602 invalid
    /// parameters, -32000 and below for the service's own.
    pub code: i64,
    /// What went wrong.
    pub message: String,
    /// Details (`{"rule": …}` for a policy denial).
    pub data: Option<Value>,
}

impl RpcError {
    /// An error without data.
    #[must_use]
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), data: None }
    }

    /// An error with data.
    #[must_use]
    pub fn with_data(code: i64, message: impl Into<String>, data: Value) -> Self {
        Self { code, message: message.into(), data: Some(data) }
    }

    /// The JSON-RPC response carrying this error for request `id`.
    #[must_use]
    pub fn to_json(&self, id: &Value) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        json!({ "jsonrpc": "2.0", "id": id, "error": error })
    }
}

/// One well-formed call.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The request id (echoed in the answer).
    pub id: Value,
    /// The method name.
    pub method: String,
    /// The positional parameters.
    pub params: Vec<Value>,
}

/// What a request body holds.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestBody {
    /// One call, or the error for it (answered with its id).
    Single(Result<Call, (Value, RpcError)>),
    /// A batch: each call or its error, in order.
    Batch(Vec<Result<Call, (Value, RpcError)>>),
}

/// The most calls one batch may hold: each may be a KMS signature, and a client must not queue thousands
/// of them with one request.
pub const MAX_BATCH: usize = 100;

/// Parses a request body.
///
/// # Errors
/// `-32700` if the body is not JSON, `-32600` for an empty batch or one of more than [`MAX_BATCH`] calls
/// (refused whole: nothing in it is signed).
pub fn parse_body(body: &[u8]) -> Result<RequestBody, RpcError> {
    let parsed: Value =
        serde_json::from_slice(body).map_err(|error| RpcError::new(-32700, format!("parse error: {error}")))?;
    match parsed {
        Value::Array(batch) if batch.is_empty() => Err(RpcError::new(-32600, "an empty batch")),
        Value::Array(batch) if batch.len() > MAX_BATCH => {
            Err(RpcError::new(-32600, format!("a batch of {} calls: at most {MAX_BATCH} per request", batch.len())))
        }
        Value::Array(batch) => Ok(RequestBody::Batch(batch.into_iter().map(parse_call).collect())),
        single => Ok(RequestBody::Single(parse_call(single))),
    }
}

/// Checks one call: `{"jsonrpc": "2.0", "method": "…", "params": […], "id": …}` (params optional).
///
/// # Errors
/// `-32600` for a malformed call, `-32602` for params that are not an array; with the call's id.
pub fn parse_call(mut call: Value) -> Result<Call, (Value, RpcError)> {
    let id = call.get_mut("id").map_or(Value::Null, Value::take);
    let method = call.get("method").and_then(Value::as_str).map(str::to_owned);
    let valid = call.get("jsonrpc").and_then(Value::as_str) == Some("2.0");
    let (Some(method), true) = (method, valid) else {
        let message = "invalid request: expected {\"jsonrpc\": \"2.0\", \"method\": …, \"params\": […], \"id\": …}";
        return Err((id, RpcError::new(-32600, message)));
    };
    let params = match call.get_mut("params").map(Value::take) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(params)) => params,
        Some(_) => return Err((id, RpcError::new(-32602, "params must be an array"))),
    };
    Ok(Call { id, method, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_batches_and_their_errors() {
        let single = parse_body(br#"{"jsonrpc":"2.0","id":3,"method":"eth_accounts"}"#).unwrap();
        assert_eq!(
            single,
            RequestBody::Single(Ok(Call { id: json!(3), method: "eth_accounts".into(), params: vec![] }))
        );
        assert_eq!(parse_body(b"{ nope").unwrap_err().code, -32700);
        assert_eq!(parse_body(b"[]").unwrap_err().code, -32600);
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"personal_sign","params":["hi","0x00"]}"#;
        let batch = |count: usize| format!("[{}]", vec![call; count].join(","));
        assert!(
            matches!(parse_body(batch(MAX_BATCH).as_bytes()), Ok(RequestBody::Batch(calls)) if calls.len() == MAX_BATCH)
        );
        let refused = parse_body(batch(5_000).as_bytes()).unwrap_err();
        assert_eq!(refused.code, -32600);
        assert!(refused.message.contains("5000 calls"), "{}", refused.message);
        let RequestBody::Batch(calls) = parse_body(br#"[{"jsonrpc":"2.0","id":1,"method":"a","params":[1]},{"id":2,"method":"b"},{"jsonrpc":"2.0","id":"x","method":"c","params":{}}]"#).unwrap() else {
            panic!("not a batch")
        };
        assert_eq!(calls[0].as_ref().unwrap().params, vec![json!(1)]);
        assert_eq!(calls[1].as_ref().unwrap_err().1.code, -32600);
        assert_eq!(calls[2].as_ref().unwrap_err(), &(json!("x"), RpcError::new(-32602, "params must be an array")));
    }
}
