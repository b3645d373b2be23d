//! What a webhook request carries: an event of the outbox as JSON, its `data` the row as it was when it
//! changed, in the REST API's representation (a withdrawal as `GET /v1/withdrawals/{id}` shows it, a
//! deposit as `GET /v1/deposits` lists it):
//!
//! ```json
//! {"id": "0f8fad5b-…", "type": "withdrawal.confirmed", "created_ms": 1735689600123,
//!  "subject_type": "withdrawal", "subject": "wd-…", "sequence": 6, "data": {"id": "wd-…", "status": "confirmed", …}}
//! ```
//!
//! `sequence` numbers the subject's events from 1: a receiver that has seen a higher one for the subject
//! can ignore a lower one (delivery is in order per subject, but a receiver that acknowledged late may
//! see an event twice).

use std::str::FromStr;

use alloy_primitives::{Address, B256, U256};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::deposits::api::DepositView;
use crate::journal::{DepositRow, DepositStatus, Kind, Status, SweepStatus, WebhookEvent, Withdrawal};
use crate::policy::Asset;
use crate::withdrawals::api::WithdrawalView;

/// A flag as a journal's JSON holds it: `true`/`false` (PostgreSQL) or `1`/`0` (SQLite).
fn flag<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::Bool(value) => value,
        Value::Number(number) => number.as_i64().is_some_and(|value| value != 0),
        _ => false,
    })
}

/// A withdrawal row as the trigger saw it.
#[derive(Deserialize)]
struct WithdrawalSnapshot {
    id: String,
    kind: String,
    client: Option<String>,
    idempotency_key: Option<String>,
    key: String,
    recipient: String,
    asset: String,
    amount: String,
    status: String,
    nonce: Option<u64>,
    tx_hash: Option<String>,
    block_number: Option<u64>,
    error: Option<String>,
    #[serde(deserialize_with = "flag")]
    cancel_requested: bool,
    #[serde(deserialize_with = "flag")]
    confirmed: bool,
    transactions: usize,
}

/// A deposit row as the trigger saw it.
#[derive(Deserialize)]
struct DepositSnapshot {
    change: u64,
    tx_hash: String,
    log_index: i64,
    address: String,
    reference: Option<String>,
    asset: String,
    amount: String,
    sender: String,
    block_number: u64,
    block_hash: String,
    status: String,
    sweep_status: String,
    sweep: Option<String>,
    sweep_tx_hash: Option<String>,
}

fn parse<T: FromStr>(what: &str, text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("the event's {what} `{text}` cannot be read"))
}

fn asset(text: &str) -> Result<Asset, String> {
    if text == "ETH" { Ok(Asset::Ether) } else { parse("asset", text).map(Asset::Token) }
}

fn withdrawal(data: &str, address_of: &dyn Fn(&str) -> Option<Address>) -> Result<Value, String> {
    let row: WithdrawalSnapshot =
        serde_json::from_str(data).map_err(|error| format!("the event's withdrawal cannot be read: {error}"))?;
    let withdrawal = Withdrawal {
        kind: Kind::parse(&row.kind).ok_or_else(|| format!("the event's kind `{}` cannot be read", row.kind))?,
        client: row.client,
        idempotency_key: row.idempotency_key,
        recipient: parse("recipient", &row.recipient)?,
        asset: asset(&row.asset)?,
        amount: parse::<U256>("amount", &row.amount)?,
        status: Status::parse(&row.status)
            .ok_or_else(|| format!("the event's status `{}` cannot be read", row.status))?,
        nonce: row.nonce,
        tx_hash: row.tx_hash.as_deref().map(|hash| parse::<B256>("tx_hash", hash)).transpose()?,
        block_number: row.block_number,
        block_hash: None,
        error: row.error,
        created_ms: 0,
        request: None,
        cancel_requested: row.cancel_requested,
        confirmed: row.confirmed,
        attempts: Vec::new(),
        id: row.id,
        key: row.key,
    };
    let from = address_of(&withdrawal.key);
    serde_json::to_value(WithdrawalView::of(&withdrawal, from, row.transactions)).map_err(|error| error.to_string())
}

fn deposit(data: &str) -> Result<Value, String> {
    let row: DepositSnapshot =
        serde_json::from_str(data).map_err(|error| format!("the event's deposit cannot be read: {error}"))?;
    let deposit = DepositRow {
        change: row.change,
        tx_hash: parse("tx_hash", &row.tx_hash)?,
        log_index: u64::try_from(row.log_index).ok(),
        address: parse("address", &row.address)?,
        reference: row.reference,
        asset: asset(&row.asset)?,
        amount: parse("amount", &row.amount)?,
        sender: parse("sender", &row.sender)?,
        block_number: row.block_number,
        block_hash: parse("block_hash", &row.block_hash)?,
        status: DepositStatus::parse(&row.status)
            .ok_or_else(|| format!("the event's deposit status `{}` cannot be read", row.status))?,
        sweep_status: SweepStatus::parse(&row.sweep_status)
            .ok_or_else(|| format!("the event's sweep status `{}` cannot be read", row.sweep_status))?,
        sweep: row.sweep,
        sweep_tx_hash: row.sweep_tx_hash.as_deref().map(|hash| parse("sweep_tx_hash", hash)).transpose()?,
        seen_ms: 0,
        updated_ms: 0,
    };
    serde_json::to_value(DepositView::from(deposit)).map_err(|error| error.to_string())
}

/// The body of `event`'s requests; `address_of` gives a key's address by name (a withdrawal's `from`).
///
/// # Errors
/// The event's snapshot cannot be read (a journal written by something else).
pub(crate) fn render(event: &WebhookEvent, address_of: &dyn Fn(&str) -> Option<Address>) -> Result<Vec<u8>, String> {
    let data = match event.subject_type.as_str() {
        "withdrawal" => withdrawal(&event.data, address_of)?,
        "deposit" => deposit(&event.data)?,
        other => return Err(format!("an event of unknown subject type `{other}`")),
    };
    let body = json!({
        "id": event.id,
        "type": event.event_type,
        "created_ms": event.created_ms,
        "subject_type": event.subject_type,
        "subject": event.subject,
        "sequence": event.sequence,
        "data": data,
    });
    serde_json::to_vec(&body).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::DeliveryState;

    fn event(subject_type: &str, data: &str) -> WebhookEvent {
        WebhookEvent {
            seq: 1,
            id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            client: "exchange".into(),
            subject_type: subject_type.into(),
            subject: "wd-1".into(),
            sequence: 3,
            event_type: "withdrawal.signed".into(),
            data: data.into(),
            created_ms: 5,
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
            delivered_ms: None,
        }
    }

    #[test]
    fn a_withdrawal_event_carries_the_rest_representation() {
        let data = r#"{"id":"wd-1","kind":"withdrawal","client":"exchange","idempotency_key":"k-1","key":"hot",
            "recipient":"0x000000000000000000000000000000000000dEaD","asset":"ETH","amount":"1000","status":"signed",
            "nonce":4,"tx_hash":null,"block_number":null,"error":null,"cancel_requested":0,"confirmed":false,
            "transactions":1}"#;
        let hot = Address::repeat_byte(0x11);
        let body = render(&event("withdrawal", data), &|key| (key == "hot").then_some(hot)).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (body["id"].as_str(), body["type"].as_str()),
            (Some("0f8fad5b-d9cb-469f-a165-70867728950e"), Some("withdrawal.signed"))
        );
        assert_eq!((body["sequence"].as_u64(), body["subject"].as_str()), (Some(3), Some("wd-1")));
        let data = &body["data"];
        assert_eq!(
            (data["status"].as_str(), data["nonce"].as_u64(), data["transactions"].as_u64()),
            (Some("signed"), Some(4), Some(1))
        );
        assert_eq!((data["amount"].as_str(), data["asset"].as_str()), (Some("1000"), Some("ETH")));
        assert_eq!(data["from"].as_str(), Some(&*hot.to_string()));
        assert_eq!((data["final"].as_bool(), data["cancel_requested"].as_bool()), (Some(false), Some(false)));
    }

    #[test]
    fn an_unreadable_event_is_an_error_not_a_panic() {
        for (subject_type, data) in
            [("withdrawal", "{}"), ("withdrawal", "not json"), ("deposit", r#"{"change":1}"#), ("refund", "{}")]
        {
            assert!(render(&event(subject_type, data), &|_| None).is_err(), "{subject_type}: {data}");
        }
    }
}
