//! `ethkms allowlist list KEY --service URL` and `ethkms allowlist approve KEY ADDRESS --key APPROVER
//! [--reject] [--print]`: an approver's side of time-locked allowlist additions. `approve` reads the
//! addition's EIP-712 message from the service (`GET /v1/keys/KEY/allowlist`), signs it with APPROVER — any
//! ethkms key — and posts the decision (`POST /v1/keys/KEY/allowlist/ADDRESS/approvals`), or prints it. A
//! rejection before the addition takes effect cancels it. KEY is the service's name for the key whose
//! allowlist it is. The bearer token comes from an environment variable, never the command line.

use alloy_primitives::Address;
use serde_json::{Value, json};

use super::approvals::{Service, Signed, sign_decision};
use super::{Output, key_ref};
use crate::cli::{AllowlistApproveArgs, AllowlistListArgs, Global};
use crate::exit::{CliError, Exit};

/// The key's allowlist entries, as the service lists them.
async fn entries(service: &Service, key: &str) -> Result<Vec<Value>, CliError> {
    let request = service.http.get(format!("{}/v1/keys/{key}/allowlist", service.url));
    let listed = service.call(request, &format!("listing the allowlist of key `{key}`")).await?;
    Ok(listed["entries"].as_array().cloned().unwrap_or_default())
}

/// The address of an entry, if it reads as one.
fn entry_address(entry: &Value) -> Option<Address> {
    entry["address"].as_str().and_then(|text| text.parse().ok())
}

pub(super) async fn approve(global: &Global, output: Output, args: &AllowlistApproveArgs) -> Result<(), CliError> {
    let decided = &args.decision;
    key_ref(&decided.key)?;
    let address = ethkms::units::parse_address(&args.address)
        .map_err(|error| CliError::usage(format!("ADDRESS `{}`: {error}", args.address)))?;
    let service = Service::new(&decided.service)?;
    let name = &args.allowlist_key;
    let entry = entries(&service, name)
        .await?
        .into_iter()
        .find(|entry| entry_address(entry) == Some(address) && !entry["typed_data"].is_null())
        .ok_or_else(|| {
            CliError::new(Exit::NotFound, format!("no addition of {address} to key `{name}` waits for decisions"))
        })?;
    let Signed { approver, decision, signature, .. } =
        sign_decision(global, decided, entry["typed_data"].clone()).await?;
    let body = json!({ "approver": approver.to_string(), "decision": decision, "signature": signature });
    if decided.print {
        output.emit(&body, || body.to_string());
        return Ok(());
    }
    let request =
        service.http.post(format!("{}/v1/keys/{name}/allowlist/{address}/approvals", service.url)).json(&body);
    let what = format!("posting the decision on the addition of {address} to key `{name}`");
    let answer = service.call(request, &what).await?;
    let approved = answer["approved_by"].as_array().map_or(0, Vec::len);
    let quorum = answer["quorum"].as_u64().unwrap_or(0);
    let status = answer["status"].as_str().unwrap_or("?").to_owned();
    let effective = answer["effective"].as_u64().unwrap_or(0);
    output.emit(
        &json!({
            "key": name, "address": address.to_string(), "approver": approver.to_string(), "decision": decision,
            "status": status, "approvals": approved, "quorum": quorum, "effective": effective,
            "signature": signature,
        }),
        || {
            let done = if decided.reject { "rejected" } else { "approved" };
            format!(
                "{done} the addition of {address} to key `{name}` as {approver}: now {status}, {approved} of {quorum} \
                 approvals, in effect from {effective} (Unix seconds) with its quorum"
            )
        },
    );
    Ok(())
}

pub(super) async fn list(output: Output, args: &AllowlistListArgs) -> Result<(), CliError> {
    let service = Service::new(&args.service)?;
    for entry in entries(&service, &args.allowlist_key).await? {
        let line = json!({
            "address": entry["address"], "status": entry["status"], "active": entry["active"],
            "label": entry["label"], "effective": entry["effective"], "quorum": entry["quorum"],
            "approved_by": entry["approved_by"], "rejected_by": entry["rejected_by"],
            "open": !entry["typed_data"].is_null(),
        });
        output.emit(&line, || {
            let approvals = entry["approved_by"].as_array().map_or(0, Vec::len);
            let mut text = format!(
                "{}  {}{}",
                entry["address"].as_str().unwrap_or("?"),
                entry["status"].as_str().unwrap_or("?"),
                if entry["active"] == true { ", active" } else { "" },
            );
            if let Some(quorum) = entry["quorum"].as_u64() {
                text.push_str(&format!("  {approvals} of {quorum} approvals"));
            }
            if let Some(effective) = entry["effective"].as_u64() {
                text.push_str(&format!("  effective {effective}"));
            }
            if let Some(label) = entry["label"].as_str() {
                text.push_str(&format!("  {label}"));
            }
            text
        });
    }
    Ok(())
}
