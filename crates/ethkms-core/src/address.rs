//! Ethereum addresses and their EIP-55 mixed-case checksum text.

use core::fmt;
use core::str::FromStr;

use crate::error::{Error, ErrorKind};
use crate::hash::keccak256;
use crate::hex::digit_value;

/// A 20-byte Ethereum address.
///
/// `Display` and `Debug` print the EIP-55 checksummed form. Parsing accepts all-lower-case and
/// all-upper-case hexadecimal, and mixed case only when it is the correct checksum:
///
/// ```
/// use ethkms_core::{Address, ErrorKind};
///
/// let address: Address = "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf".parse()?;
/// assert_eq!(address, "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf".parse()?);
/// let typo = "0x7E5F4552091A69125d5DfCb7b8C2659029395BDf".parse::<Address>();
/// assert_eq!(typo.unwrap_err().kind(), ErrorKind::InvalidChecksum);
/// # Ok::<(), ethkms_core::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; 20]);

impl Address {
    /// The address of a public key given as the SEC1 uncompressed point `04 ‖ x ‖ y`
    /// (or the bare 64 bytes `x ‖ y`): the last 20 bytes of `keccak256(x ‖ y)`.
    #[must_use]
    pub fn from_uncompressed_point(point: &[u8]) -> Self {
        let coordinates = match point {
            [0x04, rest @ ..] if rest.len() == 64 => rest,
            _ => point,
        };
        let hash = keccak256(coordinates);
        let mut address = [0u8; 20];
        address.copy_from_slice(&hash[12..]);
        Self(address)
    }

    /// The raw bytes.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The EIP-55 checksummed text, `0x` followed by 40 mixed-case hexadecimal digits.
    #[must_use]
    pub fn to_checksum(&self) -> ChecksumAddress {
        let mut lower = [0u8; 40];
        for (pair, byte) in lower.chunks_exact_mut(2).zip(self.0) {
            pair.copy_from_slice(&[LOWER_HEX[usize::from(byte >> 4)], LOWER_HEX[usize::from(byte & 0x0f)]]);
        }
        let hash = keccak256(&lower);
        let mut text = [0u8; 42];
        text[0] = b'0';
        text[1] = b'x';
        for (index, (out, digit)) in text[2..].iter_mut().zip(lower).enumerate() {
            let nibble = (hash[index / 2] >> (if index % 2 == 0 { 4 } else { 0 })) & 0x0f;
            *out = if digit.is_ascii_alphabetic() && nibble >= 8 { digit.to_ascii_uppercase() } else { digit };
        }
        ChecksumAddress(text)
    }

    /// Parses 40 hexadecimal digits, with or without a `0x` prefix. Mixed case must be the EIP-55
    /// checksum; all-lower or all-upper case carries no checksum and is accepted.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidAddress`] if the text is not 40 hexadecimal digits, and
    /// [`ErrorKind::InvalidChecksum`] if its mixed case is not the checksum.
    pub fn parse_checksummed(text: &str) -> Result<Self, Error> {
        let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
        let digits = digits.as_bytes();
        if digits.len() != 40 {
            return Err(Error::new(ErrorKind::InvalidAddress));
        }
        let mut address = [0u8; 20];
        for (index, (byte, pair)) in address.iter_mut().zip(digits.chunks_exact(2)).enumerate() {
            let offset = text.len() - digits.len() + 2 * index;
            let high = digit_value(pair[0]).ok_or(Error::at(ErrorKind::InvalidAddress, offset))?;
            let low = digit_value(pair[1]).ok_or(Error::at(ErrorKind::InvalidAddress, offset + 1))?;
            *byte = (high << 4) | low;
        }
        let address = Self(address);
        let has_lower = digits.iter().any(u8::is_ascii_lowercase);
        let has_upper = digits.iter().any(u8::is_ascii_uppercase);
        if has_lower && has_upper && address.to_checksum().as_str().as_bytes()[2..] != *digits {
            return Err(Error::new(ErrorKind::InvalidChecksum));
        }
        Ok(address)
    }
}

const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

impl FromStr for Address {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse_checksummed(text)
    }
}

impl From<[u8; 20]> for Address {
    fn from(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }
}

impl From<Address> for [u8; 20] {
    fn from(address: Address) -> Self {
        address.0
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_checksum().as_str())
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The EIP-55 text of an [`Address`], held without allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChecksumAddress([u8; 42]);

impl ChecksumAddress {
    /// The text, `0x` followed by 40 mixed-case hexadecimal digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written into the buffer.
        core::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for ChecksumAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ChecksumAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors listed in EIP-55 itself.
    const EIP55: [&str; 8] = [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
        "0x52908400098527886E0F7030069857D2E4169EE7",
        "0x8617E340B3D01FA5F11F306F4090FD50E238070D",
        "0xde709f2102306220921060314715629080e2fb77",
        "0x27b1fdb04752bbc536007a920d24acb045561c26",
    ];

    #[test]
    fn eip55_vectors_round_trip() {
        for text in EIP55 {
            let address: Address = text.parse().unwrap();
            assert_eq!(address.to_string(), text);
        }
    }

    #[test]
    fn wrong_case_is_rejected_and_uniform_case_accepted() {
        let flipped = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD";
        assert_eq!(flipped.parse::<Address>().unwrap_err().kind(), ErrorKind::InvalidChecksum);
        let lower = EIP55[0].to_ascii_lowercase();
        let upper = format!("0x{}", &EIP55[0][2..].to_ascii_uppercase());
        assert_eq!(lower.parse::<Address>().unwrap(), upper.parse::<Address>().unwrap());
        assert_eq!(lower[2..].parse::<Address>().unwrap().to_string(), EIP55[0]);
    }

    #[test]
    fn malformed_text_names_the_offset() {
        let error = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg".parse::<Address>().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidAddress);
        assert_eq!(error.position(), Some(41));
        assert_eq!("0x1234".parse::<Address>().unwrap_err().kind(), ErrorKind::InvalidAddress);
        assert_eq!(
            "0x€5aAeb6053F3E94C9b9A09f33669435E7Ef1BeA".parse::<Address>().unwrap_err().kind(),
            ErrorKind::InvalidAddress
        );
    }
}
