//! Sweeps: which deposit addresses are worth sweeping, and the one transaction that deploys those not yet
//! deployed and moves their ether and chosen tokens to the parent ([`SweepBatch`], the factory's `sweep`).
//!
//! Only tokens on an allowlist are ever swept: a token nobody vetted may be spam, or hostile code that the
//! sweep would call. Ether is worth sweeping when its value exceeds the sweep's gas cost for it by a margin
//! ([`SweepCosts::worth_sweeping_ether`]); a token when its balance reaches the minimum configured for it
//! (a token's value in ether is not something this crate knows).

use alloy_primitives::{Address, B256, Bytes, U256};
use alloy_provider::Provider;
use alloy_rpc_types_eth::{BlockId, TransactionRequest};
use alloy_sol_types::SolCall as _;

use ethkms_eth::redact_urls;

use crate::contracts::{DEPLOY_BIT, DepositFactory, Erc20, MAX_SWEEP_TOKENS};

/// What a deposit address holds, read from the chain before a sweep ([`read_holding`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holding {
    /// The address.
    pub address: Address,
    /// Its CREATE2 salt.
    pub salt: B256,
    /// Whether its clone is deployed.
    pub deployed: bool,
    /// Its ether, in wei.
    pub ether: U256,
    /// Each token it holds (of those asked for), with the balance.
    pub tokens: Vec<(Address, U256)>,
}

/// Why a holding could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HoldingError {
    /// The node failed.
    #[error("reading what {address} holds: {message}")]
    Node {
        /// The deposit address.
        address: Address,
        /// What went wrong.
        message: String,
    },
    /// A token asked for answers `balanceOf` with no balance.
    #[error("{0} answers balanceOf with no balance: not an ERC-20")]
    NotAToken(Address),
}

/// Reads what the deposit address `address` (of salt `salt`) holds at `block`: whether it is deployed,
/// its ether, and its balance of each of `tokens`. A service pins `block` to one it has read deposits up to
/// (by hash), so that a node behind it, or a reorg meanwhile, fails the read instead of answering an
/// earlier state; `BlockId::latest()` reads the node's head.
///
/// # Errors
/// [`HoldingError`] if the node fails (or does not have `block`) or a token is not one.
pub async fn read_holding<P: Provider>(
    provider: &P,
    address: Address,
    salt: B256,
    tokens: &[Address],
    block: BlockId,
) -> Result<Holding, HoldingError> {
    let node = |error: &dyn std::fmt::Display| HoldingError::Node { address, message: redact_urls(&error.to_string()) };
    let deployed = !provider.get_code_at(address).block_id(block).await.map_err(|error| node(&error))?.is_empty();
    let ether = provider.get_balance(address).block_id(block).await.map_err(|error| node(&error))?;
    let mut held = Vec::new();
    for token in tokens {
        let call = Erc20::balanceOfCall { owner: address }.abi_encode();
        let request =
            TransactionRequest { to: Some((*token).into()), input: call.into(), ..TransactionRequest::default() };
        let answer = provider.call(request).block(block).await.map_err(|error| node(&error))?;
        let balance = Erc20::balanceOfCall::abi_decode_returns(&answer).map_err(|_| HoldingError::NotAToken(*token))?;
        if !balance.is_zero() {
            held.push((*token, balance));
        }
    }
    Ok(Holding { address, salt, deployed, ether, tokens: held })
}

/// Why a deposit address cannot join a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SweepError {
    /// The batch already names [`MAX_SWEEP_TOKENS`] tokens and this address has another.
    #[error("a sweep names at most {MAX_SWEEP_TOKENS} tokens")]
    TooManyTokens,
    /// The address is already in the batch.
    #[error("deposit address salt {0} is already in this sweep")]
    Duplicate(B256),
}

/// One sweep transaction being put together: for one parent, deposit addresses (by salt), each with
/// whether to deploy it first and which of the batch's tokens to move.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepBatch {
    parent: Address,
    tokens: Vec<Address>,
    salts: Vec<B256>,
    masks: Vec<U256>,
}

impl SweepBatch {
    /// An empty batch for `parent`.
    pub fn new(parent: Address) -> Self {
        Self { parent, ..Self::default() }
    }

    /// Adds the deposit address of `salt`: deployed first if `deploy`, and its balance of each of
    /// `tokens` moved (its ether always is).
    ///
    /// # Errors
    /// [`SweepError`] if the address is already in the batch or the batch would name too many tokens
    /// (then the batch is unchanged: start another).
    pub fn add(&mut self, salt: B256, deploy: bool, tokens: &[Address]) -> Result<(), SweepError> {
        if self.salts.contains(&salt) {
            return Err(SweepError::Duplicate(salt));
        }
        let new = tokens.iter().filter(|token| !self.tokens.contains(token)).count();
        if self.tokens.len() + new > MAX_SWEEP_TOKENS {
            return Err(SweepError::TooManyTokens);
        }
        let mut mask = if deploy { U256::from(1) << DEPLOY_BIT } else { U256::ZERO };
        for token in tokens {
            let index = match self.tokens.iter().position(|known| known == token) {
                Some(index) => index,
                None => {
                    self.tokens.push(*token);
                    self.tokens.len() - 1
                }
            };
            mask |= U256::from(1) << index;
        }
        self.salts.push(salt);
        self.masks.push(mask);
        Ok(())
    }

    /// Adds `holding`: deployed first if it is not, its ether and every token it holds moved.
    ///
    /// # Errors
    /// As [`add`](Self::add).
    pub fn add_holding(&mut self, holding: &Holding) -> Result<(), SweepError> {
        let tokens: Vec<Address> = holding.tokens.iter().map(|(token, _)| *token).collect();
        self.add(holding.salt, !holding.deployed, &tokens)
    }

    /// How many deposit addresses it sweeps.
    pub fn len(&self) -> usize {
        self.salts.len()
    }

    /// Whether it sweeps nothing.
    pub fn is_empty(&self) -> bool {
        self.salts.is_empty()
    }

    /// The parent.
    pub fn parent(&self) -> Address {
        self.parent
    }

    /// The input of the factory call `sweep(parent, salts, masks, tokens)`.
    pub fn calldata(&self) -> Bytes {
        DepositFactory::sweepCall {
            parent: self.parent,
            salts: self.salts.clone(),
            masks: self.masks.clone(),
            tokens: self.tokens.clone(),
        }
        .abi_encode()
        .into()
    }
}

/// The gas a sweep spends per deposit address, measured on anvil by `cargo xtask bench deposits` (batches
/// of 50): used to decide what is worth sweeping before asking the node for an estimate of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepCosts {
    /// Deploying the address (its EIP-1167 clone).
    pub deploy: u64,
    /// Moving its ether.
    pub ether: u64,
    /// Moving one token's balance.
    pub token: u64,
    /// Calling an address already deployed.
    pub call: u64,
}

impl Default for SweepCosts {
    fn default() -> Self {
        Self { deploy: 44_000, ether: 10_000, token: 9_500, call: 4_000 }
    }
}

impl SweepCosts {
    /// The gas sweeping one address takes: deployed first or not, its ether or not, and `tokens` tokens.
    pub fn gas(&self, deploy: bool, ether: bool, tokens: u64) -> u64 {
        let start = if deploy { self.deploy } else { self.call };
        start + if ether { self.ether } else { 0 } + self.token * tokens
    }

    /// Whether `holding` is worth sweeping: it holds a token (asked for: those listed), or ether worth more
    /// than `margin_percent` percent of its share of the gas ([`worth_sweeping_ether`](Self::worth_sweeping_ether)).
    pub fn worth_sweeping(&self, holding: &Holding, gas_price: u128, margin_percent: u64) -> bool {
        !holding.tokens.is_empty()
            || self.worth_sweeping_ether(holding.ether, !holding.deployed, gas_price, margin_percent)
    }

    /// Whether `value` wei of ether is worth sweeping from an address: more than `margin_percent` percent of
    /// what sweeping it costs at `gas_price` (wei per gas), counting its deployment when `deploy` (200: the
    /// value must be more than twice the cost).
    pub fn worth_sweeping_ether(&self, value: U256, deploy: bool, gas_price: u128, margin_percent: u64) -> bool {
        let cost = U256::from(self.gas(deploy, true, 0)) * U256::from(gas_price);
        value * U256::from(100) > cost * U256::from(margin_percent)
    }
}

#[cfg(test)]
mod tests {
    use alloy_sol_types::SolCall as _;

    use super::*;

    #[test]
    fn masks_name_the_batch_tokens_and_the_deploy_bit() {
        let (usdc, usdt) = (Address::repeat_byte(1), Address::repeat_byte(2));
        let mut batch = SweepBatch::new(Address::repeat_byte(9));
        batch.add(B256::repeat_byte(1), true, &[]).unwrap();
        batch.add(B256::repeat_byte(2), false, &[usdt]).unwrap();
        batch.add(B256::repeat_byte(3), true, &[usdc, usdt]).unwrap();
        assert_eq!(batch.add(B256::repeat_byte(3), true, &[]), Err(SweepError::Duplicate(B256::repeat_byte(3))));
        assert_eq!(batch.len(), 3);
        let call = DepositFactory::sweepCall::abi_decode(&batch.calldata()).unwrap();
        assert_eq!(call.parent, Address::repeat_byte(9));
        assert_eq!(call.tokens, [usdt, usdc]);
        let deploy = U256::from(1) << 255;
        assert_eq!(call.masks, [deploy, U256::from(1), deploy | U256::from(3)]);
    }

    #[test]
    fn a_batch_names_at_most_255_tokens() {
        let mut batch = SweepBatch::new(Address::ZERO);
        let tokens: Vec<Address> = (0..255_u32).map(|i| Address::left_padding_from(&i.to_be_bytes())).collect();
        batch.add(B256::repeat_byte(1), false, &tokens).unwrap();
        let before = batch.clone();
        assert_eq!(
            batch.add(B256::repeat_byte(2), false, &[Address::repeat_byte(0xee)]),
            Err(SweepError::TooManyTokens)
        );
        assert_eq!(batch, before, "unchanged");
        batch.add(B256::repeat_byte(2), false, &tokens[..3]).unwrap();
    }

    #[test]
    fn a_holding_is_worth_sweeping_for_a_token_or_enough_ether_and_joins_as_it_is() {
        let costs = SweepCosts::default();
        let usdc = Address::repeat_byte(1);
        let dust = Holding {
            address: Address::ZERO,
            salt: B256::repeat_byte(7),
            deployed: false,
            ether: U256::from(1),
            tokens: vec![],
        };
        assert!(!costs.worth_sweeping(&dust, 1_000_000_000, 200));
        let with_token = Holding { tokens: vec![(usdc, U256::from(5))], deployed: true, ..dust };
        assert!(costs.worth_sweeping(&with_token, 1_000_000_000, 200));
        let mut batch = SweepBatch::new(Address::ZERO);
        batch.add_holding(&dust).unwrap();
        batch.add_holding(&Holding { salt: B256::repeat_byte(8), ..with_token }).unwrap();
        let call = DepositFactory::sweepCall::abi_decode(&batch.calldata()).unwrap();
        assert_eq!((call.masks, call.tokens), (vec![U256::from(1) << 255, U256::from(1)], vec![usdc]));
    }

    #[test]
    fn ether_is_swept_only_above_its_cost_and_margin() {
        let costs = SweepCosts::default();
        let gwei = 1_000_000_000_u128;
        let cost = u128::from(costs.gas(true, true, 0)) * 10 * gwei;
        assert!(!costs.worth_sweeping_ether(U256::from(cost), true, 10 * gwei, 100));
        assert!(costs.worth_sweeping_ether(U256::from(cost + 1), true, 10 * gwei, 100));
        assert!(!costs.worth_sweeping_ether(U256::from(cost * 2), true, 10 * gwei, 200));
        assert!(costs.worth_sweeping_ether(U256::from(cost * 2), false, 10 * gwei, 200), "cheaper once deployed");
    }
}
