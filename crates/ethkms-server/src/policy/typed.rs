//! The typed-data (`eth_signTypedData_v4`) policy: the request is parsed once ([`TypedRequest::parse`]),
//! into the digest that is signed and what the policy reads from the same parse — the domain's `chainId`
//! and `verifyingContract`, the primary type, and the approvals it grants when it is a known permit.
//!
//! Known permits are recognised by their type definition (`encodeType`), which is what the verifying
//! contract hashes, not by name:
//!
//! - ERC-2612 `Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)`: `value`
//!   of the domain's `verifyingContract` (the token) to `spender` until `deadline`.
//! - DAI's `Permit(address holder,address spender,uint256 nonce,uint256 expiry,bool allowed)`: an unlimited
//!   allowance when `allowed` (an `expiry` of 0 never expires).
//! - Uniswap Permit2's `PermitSingle`, `PermitBatch` (each `details.amount` of `details.token` to `spender`
//!   until `sigDeadline`), `PermitTransferFrom`, `PermitBatchTransferFrom` and their `…WitnessTransferFrom`
//!   forms (each `permitted.amount` of `permitted.token` to `spender` until `deadline`).
//!
//! A primary type named like one of these but defined otherwise is refused (`typed_data_type`): it is not
//! understood. The rules, in order, for a key whose typed data is restricted (it has a `typed_data` policy,
//! or any limit, allowlist or contract-call allowlist):
//!
//! 1. `typed_data_domain`: `domain.chainId` present and the key's chain, `domain.verifyingContract` one of
//!    the policy's `domains` (an entry without one matches domains without one; a restricted key without a
//!    `typed_data` policy signs no typed data).
//! 2. `typed_data_type`: the primary type is one of that domain's `primary_types`; a permit is understood, and
//!    of a token with a `max_value` or `daily_limit`.
//! 3. `permit_deadline`: a permit's deadline at most `max_deadline` from now.
//! 4. Then each permit like an `approve`: the spender through the destination lists, the amount against the
//!    token's `max_value` and `daily_limit`.
//!
//! An unrestricted key signs any typed data, but never for another chain: a `domain.chainId` that is not the
//! key's is refused (`typed_data_domain`), and permits' spenders still go through the deny list.
//!
//! ```
//! use ethkms_server::policy::typed::TypedRequest;
//!
//! let json = r#"{"types":{"EIP712Domain":[{"name":"chainId","type":"uint256"}],
//!   "Note":[{"name":"text","type":"string"}]},"primaryType":"Note","domain":{"chainId":1},"message":{"text":"hi"}}"#;
//! let request = TypedRequest::parse(json).unwrap();
//! assert_eq!((request.primary_type.as_str(), request.chain_id), ("Note", Some(1u64.try_into().unwrap())));
//! assert!(request.permits.is_empty());
//! assert!(TypedRequest::parse("{}").unwrap_err().to_string().contains("eth_signTypedData_v4"));
//! ```

use std::time::{Duration, SystemTime};

use alloy_dyn_abi::{DynSolValue, TypedData};
use alloy_primitives::{Address, B256, U256};

use super::{Asset, Denial, Effects, KeyPolicy, Rule};

/// The typed-data rules of a key (`keys.NAME.policy.typed_data`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedDataPolicy {
    /// The domains typed data may be signed for.
    pub domains: Vec<TypedDomain>,
    /// The furthest a permit's deadline may be from the time of signing.
    pub max_deadline: Duration,
}

/// The default [`TypedDataPolicy::max_deadline`]: one hour.
pub const DEFAULT_MAX_DEADLINE: Duration = Duration::from_secs(60 * 60);

impl Default for TypedDataPolicy {
    fn default() -> Self {
        Self { domains: Vec::new(), max_deadline: DEFAULT_MAX_DEADLINE }
    }
}

/// A domain typed data may be signed for: its `verifyingContract`, and the primary types allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedDomain {
    /// `domain.verifyingContract` (`None`: typed data whose domain has none, such as an off-chain login).
    pub verifying_contract: Option<Address>,
    /// The primary types allowed for it.
    pub primary_types: Vec<String>,
}

/// Typed data that is not `eth_signTypedData_v4` JSON, or whose message does not match its types.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TypedDataError(String);

/// An allowance a permit grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    /// The token (`None`: an ERC-2612 permit whose domain has no `verifyingContract`, valid for no token).
    pub token: Option<Address>,
    /// Who may spend it.
    pub spender: Address,
    /// How much (`U256::MAX` for unlimited).
    pub amount: U256,
    /// Until when the signature is valid, Unix seconds (`U256::MAX`: never expires).
    pub deadline: U256,
}

/// Typed data to sign, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedRequest {
    /// The EIP-712 digest: what is signed.
    pub digest: B256,
    /// `domain.chainId`.
    pub chain_id: Option<U256>,
    /// `domain.verifyingContract`.
    pub verifying_contract: Option<Address>,
    /// `primaryType`.
    pub primary_type: String,
    /// The allowances it grants, when it is a known permit.
    pub permits: Vec<Permit>,
    /// Why it is not understood, when the primary type is named like a permit but defined otherwise.
    pub not_understood: Option<String>,
}

const ERC2612: &str = "Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)";
const DAI: &str = "Permit(address holder,address spender,uint256 nonce,uint256 expiry,bool allowed)";
const PERMIT_DETAILS: &str = "PermitDetails(address token,uint160 amount,uint48 expiration,uint48 nonce)";
const PERMIT_SINGLE: &str = "PermitSingle(PermitDetails details,address spender,uint256 sigDeadline)";
const PERMIT_BATCH: &str = "PermitBatch(PermitDetails[] details,address spender,uint256 sigDeadline)";
const TOKEN_PERMISSIONS: &str = "TokenPermissions(address token,uint256 amount)";
const TRANSFER_FROM: &str =
    "PermitTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline)";
const BATCH_TRANSFER_FROM: &str =
    "PermitBatchTransferFrom(TokenPermissions[] permitted,address spender,uint256 nonce,uint256 deadline)";
const WITNESS_STUB: &str =
    "PermitWitnessTransferFrom(TokenPermissions permitted,address spender,uint256 nonce,uint256 deadline,";
const BATCH_WITNESS_STUB: &str =
    "PermitBatchWitnessTransferFrom(TokenPermissions[] permitted,address spender,uint256 nonce,uint256 deadline,";

/// Primary types that name an allowance: refused unless defined as one of the above.
const PERMIT_NAMES: [&str; 7] = [
    "Permit",
    "PermitSingle",
    "PermitBatch",
    "PermitTransferFrom",
    "PermitBatchTransferFrom",
    "PermitWitnessTransferFrom",
    "PermitBatchWitnessTransferFrom",
];

impl TypedRequest {
    /// Parses `eth_signTypedData_v4` JSON (an object, or a string holding one), computes its digest and
    /// decodes what the policy reads.
    ///
    /// # Errors
    /// [`TypedDataError`] when it is not typed-data JSON or its message does not match its types.
    pub fn parse(json: &str) -> Result<Self, TypedDataError> {
        let typed: TypedData = serde_json::from_str(json).map_err(|error| {
            TypedDataError(format!(
                "not eth_signTypedData_v4 JSON ({error}); expected an object with types, primaryType, domain and message"
            ))
        })?;
        let digest = typed
            .eip712_signing_hash()
            .map_err(|error| TypedDataError(format!("the message does not match its types: {error}")))?;
        let mut request = Self {
            digest,
            chain_id: typed.domain.chain_id,
            verifying_contract: typed.domain.verifying_contract,
            primary_type: typed.primary_type.clone(),
            permits: Vec::new(),
            not_understood: None,
        };
        if typed.primary_type == "EIP712Domain" {
            return Ok(request);
        }
        let definition = typed.encode_type().map_err(|error| TypedDataError(format!("the types: {error}")))?;
        let message =
            typed.coerce().map_err(|error| TypedDataError(format!("the message does not match its types: {error}")))?;
        match decode(&typed, &definition, &message, request.verifying_contract) {
            Some(permits) => request.permits = permits,
            None if PERMIT_NAMES.contains(&typed.primary_type.as_str()) => {
                request.not_understood = Some(format!(
                    "`{}` is defined as `{definition}`, not as an ERC-2612, DAI or Permit2 permit",
                    typed.primary_type
                ));
            }
            None => {}
        }
        Ok(request)
    }
}

/// The permits of a message whose primary type is defined by `definition`; `None` if it is not a known one.
fn decode(
    typed: &TypedData,
    definition: &str,
    message: &DynSolValue,
    verifying_contract: Option<Address>,
) -> Option<Vec<Permit>> {
    let token_permissions =
        || typed.resolver.encode_type("TokenPermissions").is_ok_and(|text| text == TOKEN_PERMISSIONS);
    match definition {
        ERC2612 => Some(vec![Permit {
            token: verifying_contract,
            spender: address(message, "spender")?,
            amount: uint(message, "value")?,
            deadline: uint(message, "deadline")?,
        }]),
        DAI => {
            let expiry = uint(message, "expiry")?;
            let allowed = field(message, "allowed")?.as_bool()?;
            Some(vec![Permit {
                token: verifying_contract,
                spender: address(message, "spender")?,
                amount: if allowed { U256::MAX } else { U256::ZERO },
                deadline: if expiry.is_zero() { U256::MAX } else { expiry },
            }])
        }
        _ if definition == format!("{PERMIT_SINGLE}{PERMIT_DETAILS}") => {
            let details = field(message, "details")?;
            Some(vec![details_permit(details, message, "sigDeadline")?])
        }
        _ if definition == format!("{PERMIT_BATCH}{PERMIT_DETAILS}") => field(message, "details")?
            .as_array()?
            .iter()
            .map(|details| details_permit(details, message, "sigDeadline"))
            .collect(),
        _ if definition == format!("{TRANSFER_FROM}{TOKEN_PERMISSIONS}")
            || (definition.starts_with(WITNESS_STUB) && token_permissions()) =>
        {
            Some(vec![details_permit(field(message, "permitted")?, message, "deadline")?])
        }
        _ if definition == format!("{BATCH_TRANSFER_FROM}{TOKEN_PERMISSIONS}")
            || (definition.starts_with(BATCH_WITNESS_STUB) && token_permissions()) =>
        {
            field(message, "permitted")?
                .as_array()?
                .iter()
                .map(|permitted| details_permit(permitted, message, "deadline"))
                .collect()
        }
        _ => None,
    }
}

/// A Permit2 allowance: `token` and `amount` of `details`, `spender` and the deadline of `message`.
fn details_permit(details: &DynSolValue, message: &DynSolValue, deadline: &str) -> Option<Permit> {
    Some(Permit {
        token: Some(address(details, "token")?),
        spender: address(message, "spender")?,
        amount: uint(details, "amount")?,
        deadline: uint(message, deadline)?,
    })
}

fn field<'a>(value: &'a DynSolValue, name: &str) -> Option<&'a DynSolValue> {
    let (_, names, values) = value.as_custom_struct()?;
    names.iter().position(|candidate| candidate == name).and_then(|index| values.get(index))
}

fn address(value: &DynSolValue, name: &str) -> Option<Address> {
    field(value, name)?.as_address()
}

fn uint(value: &DynSolValue, name: &str) -> Option<U256> {
    field(value, name)?.as_uint().map(|(number, _)| number)
}

/// What typed data does under `policy` for a key of chain `chain_id` at `now`: its permits as movements of
/// their tokens to their spenders. See the [module documentation](self) for the rules.
pub(super) fn effects(
    policy: &KeyPolicy,
    chain_id: u64,
    request: &TypedRequest,
    now: SystemTime,
) -> Result<Effects, Denial> {
    let domain_denial = |message: String| Denial::new(Rule::TypedDataDomain, message);
    if let Some(chain) = request.chain_id
        && chain != U256::from(chain_id)
    {
        return Err(domain_denial(format!("domain.chainId {chain} is not the key's chain {chain_id}")));
    }
    let mut effects = Effects::default();
    if policy.restricts_typed_data() {
        let Some(rules) = &policy.typed_data else {
            return Err(domain_denial(
                "the key has no typed_data policy, and limits or allowlists: it signs no typed data".into(),
            ));
        };
        if request.chain_id.is_none() {
            return Err(domain_denial(format!("domain.chainId is missing (the key's chain is {chain_id})")));
        }
        let contract = request.verifying_contract;
        let contract_name =
            || contract.map_or_else(|| "no verifyingContract".to_owned(), |contract| contract.to_string());
        let Some(domain) = rules.domains.iter().find(|domain| domain.verifying_contract == contract) else {
            return Err(domain_denial(format!("a domain with {} is not one of the key's domains", contract_name())));
        };
        let type_denial = |message: String| Denial::new(Rule::TypedDataType, message);
        if !domain.primary_types.contains(&request.primary_type) {
            return Err(type_denial(format!(
                "primary type `{}` is not one of {:?} for {}",
                request.primary_type,
                domain.primary_types,
                contract_name()
            )));
        }
        if let Some(why) = &request.not_understood {
            return Err(type_denial(why.clone()));
        }
        let latest = unix_seconds(now).saturating_add(U256::from(rules.max_deadline.as_secs()));
        for permit in &request.permits {
            match permit.token {
                Some(token) if policy.limits(Asset::Token(token)) => {}
                token => {
                    return Err(type_denial(format!(
                        "a permit of {}, which has no max_value or daily_limit",
                        token.map_or_else(|| "no token (no verifyingContract)".to_owned(), |token| token.to_string())
                    )));
                }
            }
            if permit.deadline > latest {
                return Err(Denial::new(
                    Rule::PermitDeadline,
                    format!(
                        "deadline {} is more than {} s from now (latest {latest})",
                        permit.deadline,
                        rules.max_deadline.as_secs()
                    ),
                ));
            }
        }
    }
    for permit in &request.permits {
        match permit.token {
            Some(token) => effects.moves(Asset::Token(token), Some(permit.spender), permit.amount),
            None => effects.recipients.push(permit.spender),
        }
    }
    Ok(effects)
}

/// Unix seconds of `now`, as a [`U256`].
fn unix_seconds(now: SystemTime) -> U256 {
    U256::from(now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// Permit2 on every chain.
    pub(crate) const PERMIT2: &str = "0x000000000022D473030F116dDEE9F6B43aC78BA3";

    fn domain_types() -> Value {
        json!([
            { "name": "name", "type": "string" },
            { "name": "chainId", "type": "uint256" },
            { "name": "verifyingContract", "type": "address" },
        ])
    }

    /// An ERC-2612 permit of `token` on `chain`.
    pub(crate) fn erc2612(chain: u64, token: Address, spender: Address, value: U256, deadline: U256) -> String {
        json!({
            "types": {
                "EIP712Domain": domain_types(),
                "Permit": [
                    { "name": "owner", "type": "address" },
                    { "name": "spender", "type": "address" },
                    { "name": "value", "type": "uint256" },
                    { "name": "nonce", "type": "uint256" },
                    { "name": "deadline", "type": "uint256" },
                ],
            },
            "primaryType": "Permit",
            "domain": { "name": "Token", "chainId": chain, "verifyingContract": token },
            "message": { "owner": Address::ZERO, "spender": spender, "value": value.to_string(), "nonce": 0, "deadline": deadline.to_string() },
        })
        .to_string()
    }

    /// A Permit2 `PermitBatch` on `chain` of each (token, amount).
    pub(crate) fn permit_batch(chain: u64, details: &[(Address, U256)], spender: Address, deadline: U256) -> String {
        let details: Vec<Value> = details
            .iter()
            .map(|(token, amount)| json!({ "token": token, "amount": amount.to_string(), "expiration": 0, "nonce": 0 }))
            .collect();
        json!({
            "types": {
                "EIP712Domain": domain_types(),
                "PermitBatch": [
                    { "name": "details", "type": "PermitDetails[]" },
                    { "name": "spender", "type": "address" },
                    { "name": "sigDeadline", "type": "uint256" },
                ],
                "PermitDetails": [
                    { "name": "token", "type": "address" },
                    { "name": "amount", "type": "uint160" },
                    { "name": "expiration", "type": "uint48" },
                    { "name": "nonce", "type": "uint48" },
                ],
            },
            "primaryType": "PermitBatch",
            "domain": { "name": "Permit2", "chainId": chain, "verifyingContract": PERMIT2 },
            "message": { "details": details, "spender": spender, "sigDeadline": deadline.to_string() },
        })
        .to_string()
    }

    #[test]
    fn permits_decode_with_the_digest_the_signer_computes() {
        let token = Address::with_last_byte(0x70);
        let spender = Address::with_last_byte(0x51);
        let json = erc2612(1, token, spender, U256::from(5), U256::from(99));
        let request = TypedRequest::parse(&json).unwrap();
        let typed: TypedData = serde_json::from_str(&json).unwrap();
        assert_eq!(request.digest, typed.eip712_signing_hash().unwrap());
        assert_eq!(request.verifying_contract, Some(token));
        assert_eq!(
            request.permits,
            [Permit { token: Some(token), spender, amount: U256::from(5), deadline: U256::from(99) }]
        );
        let other = Address::with_last_byte(0x71);
        let batch = TypedRequest::parse(&permit_batch(
            1,
            &[(token, U256::from(1)), (other, U256::from(2))],
            spender,
            U256::from(7),
        ))
        .unwrap();
        assert_eq!(batch.permits.len(), 2);
        assert_eq!((batch.permits[1].token, batch.permits[1].amount), (Some(other), U256::from(2)));
    }

    #[test]
    fn a_permit_defined_otherwise_is_not_understood_and_witness_transfers_are() {
        // `Permit` with its fields in another order: not ERC-2612's type hash.
        let json = erc2612(1, Address::ZERO, Address::ZERO, U256::from(1), U256::ZERO).replace(
            r#"{"name":"owner","type":"address"},{"name":"spender","type":"address"}"#,
            r#"{"name":"spender","type":"address"},{"name":"owner","type":"address"}"#,
        );
        let request = TypedRequest::parse(&json).unwrap();
        assert!(request.permits.is_empty());
        assert!(request.not_understood.unwrap().contains("Permit(address spender"));

        let witness = json!({
            "types": {
                "EIP712Domain": domain_types(),
                "PermitWitnessTransferFrom": [
                    { "name": "permitted", "type": "TokenPermissions" },
                    { "name": "spender", "type": "address" },
                    { "name": "nonce", "type": "uint256" },
                    { "name": "deadline", "type": "uint256" },
                    { "name": "witness", "type": "Order" },
                ],
                "TokenPermissions": [{ "name": "token", "type": "address" }, { "name": "amount", "type": "uint256" }],
                "Order": [{ "name": "minOut", "type": "uint256" }],
            },
            "primaryType": "PermitWitnessTransferFrom",
            "domain": { "chainId": 1, "verifyingContract": PERMIT2 },
            "message": {
                "permitted": { "token": Address::with_last_byte(3), "amount": "40" },
                "spender": Address::with_last_byte(4), "nonce": 0, "deadline": 10, "witness": { "minOut": 1 },
            },
        });
        let request = TypedRequest::parse(&witness.to_string()).unwrap();
        assert_eq!(
            request.permits,
            [Permit {
                token: Some(Address::with_last_byte(3)),
                spender: Address::with_last_byte(4),
                amount: U256::from(40),
                deadline: U256::from(10),
            }]
        );
    }

    #[test]
    fn bad_json_and_mismatched_messages_are_errors() {
        for (json, expected) in [
            ("[1]", "eth_signTypedData_v4"),
            (r#"{"types":{},"primaryType":"Missing","domain":{},"message":{}}"#, "does not match"),
            (
                r#"{"types":{"A":[{"name":"x","type":"uint8"}]},"primaryType":"A","domain":{},"message":{"x":300}}"#,
                "does not match",
            ),
        ] {
            let error = TypedRequest::parse(json).unwrap_err().to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }
}
