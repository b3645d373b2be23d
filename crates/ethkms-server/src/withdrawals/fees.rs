//! Fees within bounds: per-key caps checked at the first signature and at every bump, and the bump rule.
//!
//! A key's [`FeeCaps`] bound the max fee per gas, the priority fee per gas, and the whole transaction's
//! worst case (`gas × max fee`, in wei). The effective cap on the max fee is the lower of
//! `max_fee_per_gas` and `max_fee_per_tx / gas`.
//!
//! - First signature ([`initial`]): the market's fees, lowered to the caps (the transaction may then wait
//!   until the market comes down — that is what a cap is for).
//! - A bump ([`bump`]): `max(previous × 1.125 rounded up, market)` for both the max fee and the priority
//!   fee, computed from the newest transaction the node *accepted* (never compounding from one it
//!   refused), then lowered to the caps. If the result is not at least 10% above the previous on both
//!   fees — what nodes require of a replacement — the bump stops at the cap ([`Bump::AtCap`]) and the
//!   stored transaction is broadcast again as it is.
//!
//! ```
//! use ethkms_server::withdrawals::fees::{Bump, FeeCaps, bump};
//! use ethkms::eth::chain::Fees;
//!
//! let caps = FeeCaps { max_fee_per_gas: 100, max_priority_fee_per_gas: 10, max_fee_per_tx: u128::MAX };
//! let first = Fees::Eip1559 { max_fee_per_gas: 80, max_priority_fee_per_gas: 8 };
//! assert_eq!(bump(first, None, 21_000, &caps), Bump::To(Fees::Eip1559 { max_fee_per_gas: 90, max_priority_fee_per_gas: 9 }));
//! let near_cap = Fees::Eip1559 { max_fee_per_gas: 95, max_priority_fee_per_gas: 9 };
//! assert_eq!(bump(near_cap, None, 21_000, &caps), Bump::AtCap);
//! ```

use ethkms::eth::chain::Fees;

pub use crate::config::FeeCaps;

impl FeeCaps {
    /// Whether `fees` with `gas` are within the caps.
    #[must_use]
    pub fn allow(&self, fees: Fees, gas: u64) -> bool {
        let (max_fee, priority) = fees.max_and_priority();
        max_fee <= self.max_fee_for(gas) && priority <= self.max_priority_fee_per_gas.min(max_fee)
    }

    /// `fees` lowered to the caps for `gas`; the flag says whether anything was lowered.
    #[must_use]
    pub fn clamp(&self, fees: Fees, gas: u64) -> (Fees, bool) {
        let limit = self.max_fee_for(gas);
        match fees {
            Fees::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas } => {
                let max_fee = max_fee_per_gas.min(limit);
                let priority = max_priority_fee_per_gas.min(self.max_priority_fee_per_gas).min(max_fee);
                let clamped = Fees::Eip1559 { max_fee_per_gas: max_fee, max_priority_fee_per_gas: priority };
                (clamped, clamped != fees)
            }
            Fees::Legacy { gas_price } => {
                let price = gas_price.min(limit);
                (Fees::Legacy { gas_price: price }, price != gas_price)
            }
        }
    }
}

/// The fees of a first signature: the market's, within the caps (and whether the caps lowered them).
#[must_use]
pub fn initial(market: Fees, gas: u64, caps: &FeeCaps) -> (Fees, bool) {
    caps.clamp(market, gas)
}

/// What a bump does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bump {
    /// Sign again with these fees.
    To(Fees),
    /// The caps leave no room for a replacement the node would take: broadcast the stored one again.
    AtCap,
}

/// `fee × 1.125`, rounded up, and at least `fee + 1`.
const fn raise(fee: u128) -> u128 {
    let raised = fee.saturating_add(fee.div_ceil(8));
    if raised > fee { raised } else { fee.saturating_add(1) }
}

/// The least a replacement of `fee` must pay: 10% more, rounded up.
const fn replacement_floor(fee: u128) -> u128 {
    fee.saturating_add(fee.div_ceil(10))
}

/// The fees of a replacement for a transaction the node accepted with `previous` fees and `gas`: see the
/// module documentation. `market` is what the node suggests now, if known.
#[must_use]
pub fn bump(previous: Fees, market: Option<Fees>, gas: u64, caps: &FeeCaps) -> Bump {
    let wanted = match previous {
        Fees::Eip1559 { max_fee_per_gas, max_priority_fee_per_gas } => {
            let (mut max_fee, mut priority) = (raise(max_fee_per_gas), raise(max_priority_fee_per_gas));
            if let Some(market) = market {
                let (market_max, market_priority) = market.max_and_priority();
                max_fee = max_fee.max(market_max);
                priority = priority.max(market_priority);
            }
            Fees::Eip1559 { max_fee_per_gas: max_fee.max(priority), max_priority_fee_per_gas: priority }
        }
        Fees::Legacy { gas_price } => {
            let market_price = market.map_or(0, |market| market.max_and_priority().0);
            Fees::Legacy { gas_price: raise(gas_price).max(market_price) }
        }
    };
    let (capped, _) = caps.clamp(wanted, gas);
    let (old_max, old_priority) = previous.max_and_priority();
    let (new_max, new_priority) = capped.max_and_priority();
    if new_max < replacement_floor(old_max) || new_priority < replacement_floor(old_priority) {
        Bump::AtCap
    } else {
        Bump::To(capped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNCAPPED: FeeCaps =
        FeeCaps { max_fee_per_gas: u128::MAX, max_priority_fee_per_gas: u128::MAX, max_fee_per_tx: u128::MAX };

    fn eip1559(max_fee: u128, priority: u128) -> Fees {
        Fees::Eip1559 { max_fee_per_gas: max_fee, max_priority_fee_per_gas: priority }
    }

    #[test]
    fn a_bump_is_twelve_and_a_half_percent_rounded_up_or_the_market() {
        assert_eq!(bump(eip1559(1000, 16), None, 21_000, &UNCAPPED), Bump::To(eip1559(1125, 18)));
        // Tiny fees still go up by at least one wei, and enough for a replacement.
        assert_eq!(bump(eip1559(1, 1), None, 21_000, &UNCAPPED), Bump::To(eip1559(2, 2)));
        assert_eq!(bump(eip1559(1000, 16), Some(eip1559(5000, 100)), 21_000, &UNCAPPED), Bump::To(eip1559(5000, 100)));
        assert_eq!(
            bump(Fees::Legacy { gas_price: 2_000_000_001 }, None, 21_000, &UNCAPPED),
            Bump::To(Fees::Legacy { gas_price: 2_250_000_002 })
        );
    }

    #[test]
    fn bumps_stop_exactly_at_the_caps() {
        let caps = FeeCaps { max_fee_per_gas: 1_300, max_priority_fee_per_gas: 1_000, max_fee_per_tx: u128::MAX };
        let mut fees = eip1559(1000, 100);
        let mut steps = 0;
        while let Bump::To(next) = bump(fees, None, 21_000, &caps) {
            assert!(caps.allow(next, 21_000), "{next:?} is above the caps");
            fees = next;
            steps += 1;
            assert!(steps < 10, "bumps never stop");
        }
        // 1000 → 1125 → 1266 (the next, 1425, is capped at 1300: less than 10% more, so it stops).
        assert_eq!((steps, fees.max_and_priority().0), (2, 1266));
        // The per-transaction cap: at most 21,000 × 1,000 wei in fees.
        let per_tx = FeeCaps { max_fee_per_tx: 21_000 * 1_000, ..UNCAPPED };
        assert_eq!(per_tx.max_fee_for(21_000), 1_000);
        assert_eq!(initial(eip1559(5_000, 100), 21_000, &per_tx), (eip1559(1_000, 100), true));
        assert_eq!(initial(eip1559(900, 2_000), 21_000, &per_tx), (eip1559(900, 900), true));
        assert_eq!(initial(eip1559(900, 20), 21_000, &per_tx), (eip1559(900, 20), false));
        assert_eq!(bump(eip1559(950, 20), None, 21_000, &per_tx), Bump::AtCap);
    }

    const GWEI: u128 = 1_000_000_000;

    #[test]
    fn the_default_caps_allow_an_ordinary_mainnet_day_and_stop_a_runaway() {
        let caps = FeeCaps::default();
        assert!(caps.allow(eip1559(60 * GWEI, 2 * GWEI), 65_000));
        assert!(!caps.allow(eip1559(5_000 * GWEI, 2 * GWEI), 21_000));
        // 180 bumps from 1 gwei never leave the caps.
        let mut fees = eip1559(GWEI, GWEI / 10);
        for _ in 0..180 {
            if let Bump::To(next) = bump(fees, None, 100_000, &caps) {
                fees = next;
            }
        }
        assert!(caps.allow(fees, 100_000));
        assert!(fees.max_and_priority().0 * 100_000 <= caps.max_fee_per_tx);
    }
}
