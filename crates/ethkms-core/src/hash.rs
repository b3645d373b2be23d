//! Keccak-256 and EIP-191 personal-message hashing.

use sha3::{Digest, Keccak256};

/// Keccak-256 of `data` (Ethereum's hash; not NIST SHA3-256).
#[must_use]
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    Keccak256::digest(data).into()
}

/// The EIP-191 (version `0x45`, `personal_sign`) digest of `message`:
/// `keccak256("\x19Ethereum Signed Message:\n" ‖ decimal(len(message)) ‖ message)`.
///
/// This is what `personal_sign`, `eth_sign` in modern wallets, ethers' `signMessage`, eth-account's
/// `encode_defunct` and `cast wallet sign` hash before signing.
///
/// ```
/// use ethkms_core::eip191_hash_message;
///
/// let digest = eip191_hash_message(b"hello");
/// assert_eq!(
///     digest,
///     [
///         0x50, 0xb2, 0xc4, 0x3f, 0xd3, 0x91, 0x06, 0xba, 0xfb, 0xba, 0x0d, 0xa3, 0x4f, 0xc4, 0x30, 0xe1,
///         0xf9, 0x1e, 0x3c, 0x96, 0xea, 0x2a, 0xce, 0xe2, 0xbc, 0x34, 0x11, 0x9f, 0x92, 0xb3, 0x77, 0x50,
///     ]
/// );
/// ```
#[must_use]
pub fn eip191_hash_message(message: &[u8]) -> [u8; 32] {
    const PREFIX: &[u8] = b"\x19Ethereum Signed Message:\n";
    let mut length_digits = [0u8; 20];
    let length = decimal(message.len(), &mut length_digits);
    let mut hasher = Keccak256::new();
    hasher.update(PREFIX);
    hasher.update(length);
    hasher.update(message);
    hasher.finalize().into()
}

/// Writes `value` in decimal at the end of `buffer` (20 digits hold any `u64`) and returns the digits.
fn decimal(mut value: usize, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        // `value % 10` is below 10, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let digit = (value % 10) as u8;
        buffer[start] = b'0' + digit;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buffer[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_lengths() {
        let mut buffer = [0u8; 20];
        assert_eq!(decimal(0, &mut buffer), b"0");
        assert_eq!(decimal(7, &mut buffer), b"7");
        assert_eq!(decimal(1234, &mut buffer), b"1234");
        assert_eq!(decimal(usize::MAX, &mut buffer), b"18446744073709551615");
    }

    #[test]
    fn keccak_of_empty_input() {
        // The well-known keccak256("") = c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470.
        let expected = [
            0xc5, 0xd2, 0x46, 0x01, 0x86, 0xf7, 0x23, 0x3c, 0x92, 0x7e, 0x7d, 0xb2, 0xdc, 0xc7, 0x03, 0xc0, 0xe5, 0x00,
            0xb6, 0x53, 0xca, 0x82, 0x27, 0x3b, 0x7b, 0xfa, 0xd8, 0x04, 0x5d, 0x85, 0xa4, 0x70,
        ];
        assert_eq!(keccak256(b""), expected);
    }

    #[test]
    fn eip191_equals_keccak_of_the_prefixed_message() {
        let message = b"a message of more than ten bytes";
        let mut prefixed = [0u8; 64];
        assert_eq!(message.len(), 32);
        let header = b"\x19Ethereum Signed Message:\n32";
        prefixed[..header.len()].copy_from_slice(header);
        prefixed[header.len()..header.len() + message.len()].copy_from_slice(message);
        assert_eq!(eip191_hash_message(message), keccak256(&prefixed[..header.len() + message.len()]));
    }
}
