//! `[keys.NAME.policy]`: a key's rules as the configuration gives them — chains, destination allow- and
//! denylists, `max_value` and `daily_limit` per asset, contract calls and typed-data domains — checked into
//! a [`KeyPolicy`], and amounts per asset as every setting that has them writes them.

use std::collections::BTreeMap;

use alloy_primitives::{Address, U256};
use serde::Deserialize;

use super::ConfigError;
use crate::policy::{ArgConstraint, ArgKind, Asset, ContractCall, FeeCaps, KeyPolicy, TypedDataPolicy, TypedDomain};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    allowed_chain_ids: Option<Vec<u64>>,
    destination_allowlist: Option<Vec<String>>,
    #[serde(default)]
    destination_denylist: Vec<String>,
    #[serde(default)]
    max_value: BTreeMap<String, String>,
    #[serde(default)]
    daily_limit: BTreeMap<String, String>,
    contract_calls: Option<Vec<RawCall>>,
    typed_data: Option<RawTypedData>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCall {
    address: String,
    selector: String,
    #[serde(default)]
    args: Vec<RawArg>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArg {
    index: usize,
    kind: String,
    max: Option<String>,
    asset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTypedData {
    #[serde(default)]
    domains: Vec<RawDomain>,
    max_deadline_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    verifying_contract: Option<String>,
    primary_types: Vec<String>,
}

/// Amounts per asset — `ETH` (in ether units: `"1.5ether"`, `"20gwei"`, wei without a unit) or a token's
/// address (in its smallest unit) — as `max_value`, `daily_limit` and approval thresholds give them; `field`
/// names the setting in errors.
pub(super) fn asset_amounts(field: &str, map: BTreeMap<String, String>) -> Result<BTreeMap<Asset, U256>, ConfigError> {
    let error = |message: String| ConfigError(format!("{field}: {message}"));
    map.into_iter()
        .map(|(text, value)| {
            let asset = if text.eq_ignore_ascii_case("eth") {
                Asset::Ether
            } else {
                Asset::Token(ethkms::units::parse_address(&text).map_err(error)?)
            };
            let amount = match asset {
                Asset::Ether => ethkms::units::parse_value(&value),
                Asset::Token(_) => value.parse::<U256>().map_err(|message| format!("`{value}`: {message}")),
            }
            .map_err(error)?;
            Ok((asset, amount))
        })
        .collect()
}

pub(super) fn policy(name: &str, raw: RawPolicy) -> Result<KeyPolicy, ConfigError> {
    let error = |field: &str, message: String| ConfigError(format!("keys.{name}.policy.{field}: {message}"));
    let address = |field: &str, text: &str| ethkms::units::parse_address(text).map_err(|message| error(field, message));
    let addresses =
        |field: &str, list: Vec<String>| list.iter().map(|text| address(field, text)).collect::<Result<Vec<_>, _>>();
    let parse_asset = |field: &str, text: &str| {
        if text.eq_ignore_ascii_case("eth") { Ok(Asset::Ether) } else { address(field, text).map(Asset::Token) }
    };
    let amount = |field: &str, asset: Asset, text: &str| {
        match asset {
            Asset::Ether => ethkms::units::parse_value(text),
            Asset::Token(_) => text.parse::<U256>().map_err(|message| format!("`{text}`: {message}")),
        }
        .map_err(|message| error(field, message))
    };
    let amounts =
        |field: &str, map: BTreeMap<String, String>| asset_amounts(&format!("keys.{name}.policy.{field}"), map);
    let destination_allowlist =
        raw.destination_allowlist.map(|list| addresses("destination_allowlist", list)).transpose()?;
    let contract_calls = match raw.contract_calls {
        None => None,
        Some(calls) => {
            let mut parsed = Vec::new();
            for (position, call) in calls.into_iter().enumerate() {
                let field = format!("contract_calls[{position}]");
                let selector = alloy_primitives::hex::decode(&call.selector)
                    .ok()
                    .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
                    .ok_or_else(|| error(&field, format!("selector `{}` is not 4 bytes", call.selector)))?;
                let mut args = Vec::new();
                for arg in call.args {
                    let field = format!("{field}.args[{}]", arg.index);
                    let kind = match (arg.kind.as_str(), arg.max, arg.asset) {
                        ("address_allowlisted", None, None) if destination_allowlist.is_some() => {
                            ArgKind::AddressAllowlisted
                        }
                        ("address_allowlisted", None, None) => {
                            return Err(error(&field, "`address_allowlisted` needs a destination_allowlist".into()));
                        }
                        ("address_allowlisted", ..) => {
                            return Err(error(&field, "`address_allowlisted` takes no `max` or `asset`".into()));
                        }
                        ("amount_max", Some(max), asset) => {
                            let asset = asset.map(|text| parse_asset(&field, &text)).transpose()?;
                            // A plain number, unless it is an amount of ether (which takes units).
                            let unit =
                                if asset == Some(Asset::Ether) { Asset::Ether } else { Asset::Token(Address::ZERO) };
                            ArgKind::AmountMax { max: amount(&field, unit, &max)?, asset }
                        }
                        ("amount_max", None, _) => return Err(error(&field, "`amount_max` needs `max`".into())),
                        (other, ..) => {
                            return Err(error(
                                &field,
                                format!("kind `{other}` is not one of `address_allowlisted`, `amount_max`"),
                            ));
                        }
                    };
                    args.push(ArgConstraint { index: arg.index, kind });
                }
                parsed.push(ContractCall { address: address(&field, &call.address)?, selector, args });
            }
            Some(parsed)
        }
    };
    let typed_data = raw
        .typed_data
        .map(|typed| {
            let mut domains = Vec::new();
            for (position, domain) in typed.domains.into_iter().enumerate() {
                let field = format!("typed_data.domains[{position}]");
                if domain.primary_types.is_empty() {
                    return Err(error(&field, "primary_types is empty: list the types it may sign".into()));
                }
                domains.push(TypedDomain {
                    verifying_contract: domain.verifying_contract.map(|text| address(&field, &text)).transpose()?,
                    primary_types: domain.primary_types,
                });
            }
            let defaults = TypedDataPolicy::default();
            let max_deadline = typed.max_deadline_seconds.map_or(defaults.max_deadline, std::time::Duration::from_secs);
            Ok(TypedDataPolicy { domains, max_deadline })
        })
        .transpose()?;
    Ok(KeyPolicy {
        allowed_chain_ids: raw.allowed_chain_ids,
        destination_allowlist,
        destination_denylist: addresses("destination_denylist", raw.destination_denylist)?,
        max_value: amounts("max_value", raw.max_value)?,
        daily_limit: amounts("daily_limit", raw.daily_limit)?,
        contract_calls,
        fees: FeeCaps::default(),
        typed_data,
    })
}
