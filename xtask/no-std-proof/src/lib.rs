//! Proof that ethkms-core needs no `std`: a `#![no_std]` static library with its own panic handler.

#![no_std]

#[cfg(feature = "std-canary")]
extern crate std;

use ethkms_core::{PublicKey, Signature};

/// Parses a KMS public key and signature and returns the signer's address, touching every layer.
pub fn address_of(spki: &[u8], der: &[u8], digest: &[u8; 32]) -> Option<[u8; 20]> {
    let key = PublicKey::from_spki_der(spki).ok()?;
    let signature = Signature::from_kms_der(der, digest, &key).ok()?;
    signature.recover_address(digest).ok().map(|address| address.0)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
