//! `ethkms approve ID --key KEY --service URL [--reject] [--print]` and `ethkms approvals list --service
//! URL`: an approver's side of four-eyes approvals. `approve` reads the withdrawal's EIP-712 message from the
//! service (`GET /v1/approvals`), signs it with KEY — a KMS key under the approver's own IAM role, an HSM
//! key, any backend — and posts the decision (`POST /v1/withdrawals/ID/approvals`), or prints it for
//! someone else to post. The bearer token comes from an environment variable, never the command line; the
//! service's URL is never printed (it may carry credentials).

use std::time::Duration;

use alloy_primitives::Address;
use ethkms::eth::redact_urls;
use serde_json::{Value, json};

use super::{Output, connect, key_ref};
use crate::cli::{ApproveArgs, DecisionArgs, Global, ServiceArgs};
use crate::exit::{CliError, Exit};

/// The signing service's REST API, as an approval client.
pub(super) struct Service {
    pub(super) http: reqwest::Client,
    pub(super) url: String,
    token: String,
}

impl Service {
    pub(super) fn new(args: &ServiceArgs) -> Result<Self, CliError> {
        let token = std::env::var(&args.token_env).ok().filter(|token| !token.is_empty()).ok_or_else(|| {
            CliError::new(
                Exit::Credentials,
                format!("set {} to the bearer token of a client with the `approvals` method", args.token_env),
            )
        })?;
        let url = args.service.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CliError::usage("--service must be an http:// or https:// URL"));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|error| CliError::new(Exit::Failure, format!("an HTTP client: {error}")))?;
        Ok(Self { http, url, token })
    }

    /// `method path` with `body`: the JSON answer of a 2xx, or the service's error as a CLI error.
    pub(super) async fn call(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value, CliError> {
        let response = request.bearer_auth(&self.token).send().await.map_err(|error| {
            CliError::new(
                Exit::Network,
                format!("{what}: the service did not answer: {}", redact_urls(&error.to_string())),
            )
        })?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let kind = body["error"]["kind"].as_str().unwrap_or("unknown");
        let message = body["error"]["message"].as_str().unwrap_or("no error message");
        let exit = match status {
            400 => Exit::Usage,
            401 | 403 => Exit::Credentials,
            404 => Exit::NotFound,
            500.. => Exit::Network,
            _ => Exit::Failure,
        };
        Err(CliError::new(exit, format!("{what}: the service answered {status} ({kind}): {message}")))
    }

    async fn pending(&self) -> Result<Vec<Value>, CliError> {
        let request = self.http.get(format!("{}/v1/approvals?limit=1000", self.url));
        let listed = self.call(request, "listing the withdrawals waiting for approvals").await?;
        Ok(listed["withdrawals"].as_array().cloned().unwrap_or_default())
    }
}

/// What an approver signed, as the service takes it (`signed`), from the EIP-712 message.
fn signed_content(typed: &Value) -> Value {
    let message = &typed["message"];
    json!({
        "chain_id": typed["domain"]["chainId"], "id": message["id"], "key": message["key"], "to": message["to"],
        "asset": message["asset"], "amount": message["amount"], "expiry": message["expiry"],
    })
}

/// An approver's decision, signed: who, how (`approve` or `reject`), the signature, and the message signed.
pub(super) struct Signed {
    pub(super) approver: Address,
    pub(super) decision: &'static str,
    pub(super) signature: String,
    pub(super) typed: Value,
}

/// Signs the service's EIP-712 message `typed`, its `message.approve` set as `args` decides, with the
/// approver's key.
pub(super) async fn sign_decision(global: &Global, args: &DecisionArgs, mut typed: Value) -> Result<Signed, CliError> {
    let key = key_ref(&args.key)?;
    typed["message"]["approve"] = json!(!args.reject);
    let manager = connect(global).await?;
    let signature = manager.sign_typed_data(&key, &typed.to_string()).await?.to_string();
    let approver: Address = manager.address(&key).await?;
    Ok(Signed { approver, decision: if args.reject { "reject" } else { "approve" }, signature, typed })
}

pub(super) async fn approve(global: &Global, output: Output, args: &ApproveArgs) -> Result<(), CliError> {
    let decided = &args.decision;
    key_ref(&decided.key)?;
    let service = Service::new(&decided.service)?;
    let pending = service.pending().await?;
    let withdrawal = pending.iter().find(|withdrawal| withdrawal["id"] == args.id.as_str()).ok_or_else(|| {
        CliError::new(
            Exit::NotFound,
            format!("withdrawal `{}` is not waiting for approvals of any key this client may approve for", args.id),
        )
    })?;
    let typed = withdrawal["approval"]["typed_data"].clone();
    if typed.is_null() {
        return Err(CliError::new(Exit::Failure, format!("the service gave no approval message for `{}`", args.id)));
    }
    let Signed { approver, decision, signature, typed } = sign_decision(global, decided, typed).await?;
    let body = json!({
        "approver": approver.to_string(), "decision": decision, "signature": signature,
        "signed": signed_content(&typed),
    });
    if decided.print {
        output.emit(&body, || body.to_string());
        return Ok(());
    }
    let request = service.http.post(format!("{}/v1/withdrawals/{}/approvals", service.url, args.id)).json(&body);
    let answer = service.call(request, &format!("posting the decision on `{}`", args.id)).await?;
    let approved = answer["approval"]["approved_by"].as_array().map_or(0, Vec::len);
    let quorum = answer["approval"]["quorum"].as_u64().unwrap_or(0);
    let status = answer["status"].as_str().unwrap_or("?").to_owned();
    output.emit(
        &json!({
            "id": args.id, "approver": approver.to_string(), "decision": decision, "status": status,
            "approvals": approved, "quorum": quorum, "signature": signature,
        }),
        || {
            let done = if decided.reject { "rejected" } else { "approved" };
            format!("{done} withdrawal {} as {approver}: now {status}, {approved} of {quorum} approvals", args.id)
        },
    );
    Ok(())
}

pub(super) async fn list(output: Output, args: &ServiceArgs) -> Result<(), CliError> {
    let service = Service::new(args)?;
    for withdrawal in service.pending().await? {
        let approval = &withdrawal["approval"];
        let approved_by = approval["approved_by"].as_array().cloned().unwrap_or_default();
        let line = json!({
            "id": withdrawal["id"], "key": withdrawal["key"], "to": withdrawal["to"], "asset": withdrawal["asset"],
            "amount": withdrawal["amount"], "approved_by": approved_by, "quorum": approval["quorum"],
            "expiry": approval["expiry"],
        });
        output.emit(&line, || {
            format!(
                "{}  {} {} to {}  key {}  {} of {} approvals  expires {}",
                withdrawal["id"].as_str().unwrap_or("?"),
                withdrawal["amount"].as_str().unwrap_or("?"),
                withdrawal["asset"].as_str().unwrap_or("?"),
                withdrawal["to"].as_str().unwrap_or("?"),
                withdrawal["key"].as_str().unwrap_or("?"),
                approved_by.len(),
                approval["quorum"],
                approval["expiry"],
            )
        });
    }
    Ok(())
}
