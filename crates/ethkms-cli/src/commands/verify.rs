//! `ethkms verify`: whether a signature of a message is by an address, offline.

use alloy_primitives::Address;
use serde_json::json;

use super::{Output, address, decode_hex};
use crate::cli::VerifyArgs;
use crate::exit::{CliError, Exit};

pub(super) fn verify(output: Output, args: &VerifyArgs) -> Result<(), CliError> {
    let expected = address(&args.address)?;
    let message = if args.hex { decode_hex("message", &args.message)? } else { args.message.clone().into_bytes() };
    let bytes = decode_hex("signature", &args.signature)?;
    let signature = ethkms::core::Signature::from_bytes(&bytes)
        .map_err(|error| CliError::usage(format!("signature `{}`: {error}", args.signature)))?;
    let digest = ethkms::core::eip191_hash_message(&message);
    let recovered = signature
        .recover_address(&digest)
        .map_err(|error| CliError::new(Exit::InvalidSignature, format!("no signer can be recovered: {error}")))?;
    let recovered = Address::from(recovered.0);
    let valid = recovered == expected;
    output.emit(
        &json!({ "valid": valid, "address": expected.to_string(), "recovered": recovered.to_string() }),
        || {
            if valid {
                format!("valid: signed by {expected}")
            } else {
                format!("invalid: signed by {recovered}, not {expected}")
            }
        },
    );
    if valid {
        Ok(())
    } else {
        Err(CliError::new(Exit::InvalidSignature, format!("the signature is by {recovered}, not {expected}")))
    }
}
