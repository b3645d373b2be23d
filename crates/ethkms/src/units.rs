//! Amounts and addresses as people type them, the way foundry's cast reads them: `0.1ether`,
//! `20gwei`, `1000` (wei); EIP-55 checked addresses.

use alloy_primitives::utils::parse_units;
use alloy_primitives::{Address, U256};

/// Parses an amount of ether: a number of wei (`1000`), or a decimal number with a unit (`0.1ether`,
/// `20gwei`, `5wei`, also with a space before the unit). Returns wei.
///
/// ```
/// use ethkms::units::parse_value;
/// use alloy_primitives::U256;
///
/// assert_eq!(parse_value("0.1ether")?, U256::from(100_000_000_000_000_000u128));
/// assert_eq!(parse_value("20gwei")?, U256::from(20_000_000_000u64));
/// assert_eq!(parse_value("1000")?, U256::from(1000));
/// assert!(parse_value("1.5").is_err()); // wei have no fractions
/// # Ok::<(), String>(())
/// ```
///
/// # Errors
/// A message naming the text and the accepted forms.
pub fn parse_value(text: &str) -> Result<U256, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(trimmed.len());
    let (number, unit) = (trimmed[..split].trim(), trimmed[split..].trim().to_ascii_lowercase());
    let decimals = match unit.as_str() {
        "" | "wei" => 0,
        "gwei" => 9,
        "ether" | "eth" => 18,
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}`; use wei, gwei or ether (e.g. 0.1ether, 20gwei, 1000)"
            ));
        }
    };
    if number.is_empty() {
        return Err(format!("`{text}` is not an amount: expected e.g. 0.1ether, 20gwei or 1000 (wei)"));
    }
    // parse_units would silently drop digits beyond the unit's decimals.
    let fraction_digits = number.split_once('.').map_or(0, |(_, fraction)| fraction.len());
    if fraction_digits > usize::from(decimals) {
        let unit = if unit.is_empty() { "wei" } else { unit.as_str() };
        return Err(format!(
            "`{text}` has {fraction_digits} decimals, more than {unit} allows ({decimals}); add a unit (0.1ether, 20gwei) or use whole wei"
        ));
    }
    parse_units(number, decimals)
        .map(Into::into)
        .map_err(|error| format!("`{text}` is not an amount ({error}); expected e.g. 0.1ether, 20gwei or 1000 (wei)"))
}

/// Parses an address of 40 hexadecimal digits with `0x`; mixed case must be its EIP-55 checksum.
///
/// ```
/// use ethkms::units::parse_address;
///
/// assert!(parse_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed").is_ok());
/// assert!(parse_address("0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed").is_ok());
/// assert!(parse_address("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD").unwrap_err().contains("checksum"));
/// ```
///
/// # Errors
/// A message saying what is wrong: not an address, or a wrong checksum.
pub fn parse_address(text: &str) -> Result<Address, String> {
    ethkms_core::Address::parse_checksummed(text.trim())
        .map(|address| Address::from(address.0))
        .map_err(|error| format!("`{text}`: {error}"))
}
