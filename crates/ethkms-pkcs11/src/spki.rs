//! From token attributes to what the backend trait speaks: `CKA_EC_PARAMS` to a key spec, `CKA_EC_POINT`
//! (a DER OCTET STRING wrapping the SEC1 point, or the bare point some tokens return) and RSA's modulus
//! and exponent to a DER SubjectPublicKeyInfo. Only encoding happens here; the secp256k1 key is parsed, strictly, by
//! `ethkms-core` when a `KeyHandle` opens it.

use der::Decode as _;
use der::asn1::{ObjectIdentifier, OctetStringRef};
use ethkms_backend::KeySpec;

/// `CKA_EC_PARAMS` of a secp256k1 key: the named curve's OID 1.3.132.0.10, DER.
pub(crate) const SECP256K1_PARAMS: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a];
/// NIST P-256 (1.2.840.10045.3.1.7).
pub(crate) const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// NIST P-384 (1.3.132.0.34).
pub(crate) const P384_PARAMS: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// NIST P-521 (1.3.132.0.35).
pub(crate) const P521_PARAMS: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

/// id-ecPublicKey (1.2.840.10045.2.1), DER.
const ID_EC_PUBLIC_KEY: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// rsaEncryption (1.2.840.113549.1.1.1), DER, and its NULL parameters.
const RSA_ENCRYPTION: [u8; 13] = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];

/// The key spec of an EC key with these `CKA_EC_PARAMS`: the curves KMS names by their KMS names, any
/// other named curve as `EC_<OID>`, explicit parameters as such.
pub(crate) fn ec_key_spec(params: &[u8]) -> KeySpec {
    match params {
        p if p == SECP256K1_PARAMS => KeySpec::EccSecgP256k1,
        p if p == P256_PARAMS => KeySpec::EccNistP256,
        p if p == P384_PARAMS => KeySpec::EccNistP384,
        p if p == P521_PARAMS => KeySpec::EccNistP521,
        other => match ObjectIdentifier::from_der(other) {
            Ok(oid) => KeySpec::Other(format!("EC_{oid}")),
            Err(_) => KeySpec::Other("EC_EXPLICIT_PARAMETERS".into()),
        },
    }
}

/// The `CKA_EC_PARAMS` to create a key of `spec` with, if it is an EC spec this backend creates.
pub(crate) fn ec_params(spec: &KeySpec) -> Option<&'static [u8]> {
    match spec {
        KeySpec::EccSecgP256k1 => Some(&SECP256K1_PARAMS),
        KeySpec::EccNistP256 => Some(&P256_PARAMS),
        KeySpec::EccNistP384 => Some(&P384_PARAMS),
        KeySpec::EccNistP521 => Some(&P521_PARAMS),
        _ => None,
    }
}

/// The RSA modulus size in bits of a spec this backend creates.
pub(crate) fn rsa_bits(spec: &KeySpec) -> Option<u64> {
    match spec {
        KeySpec::Rsa2048 => Some(2048),
        KeySpec::Rsa3072 => Some(3072),
        KeySpec::Rsa4096 => Some(4096),
        _ => None,
    }
}

/// The key spec of an RSA key whose modulus has `bits` bits.
pub(crate) fn rsa_key_spec(bits: usize) -> KeySpec {
    match bits {
        2048 => KeySpec::Rsa2048,
        3072 => KeySpec::Rsa3072,
        4096 => KeySpec::Rsa4096,
        other => KeySpec::Other(format!("RSA_{other}")),
    }
}

/// The size in bytes of a coordinate of the curve `params` names, for the curves named here.
fn coordinate_bytes(params: &[u8]) -> Option<usize> {
    match ec_key_spec(params) {
        KeySpec::EccSecgP256k1 | KeySpec::EccNistP256 => Some(32),
        KeySpec::EccNistP384 => Some(48),
        KeySpec::EccNistP521 => Some(66),
        _ => None,
    }
}

/// Whether `point` has the length and first byte of a SEC1 point whose coordinates are `coordinate`
/// bytes: `04 ‖ x ‖ y`, or `02`/`03 ‖ x`.
fn is_sec1_point(point: &[u8], coordinate: usize) -> bool {
    match point.first() {
        Some(0x04) => point.len() == 1 + 2 * coordinate,
        Some(0x02 | 0x03) => point.len() == 1 + coordinate,
        _ => false,
    }
}

/// The SEC1 point in `CKA_EC_POINT` of a key on the curve `params`. PKCS#11 defines the attribute as a
/// DER OCTET STRING holding the point; some tokens return the bare point, which is accepted too for the
/// curves named here, whose point sizes tell the two forms apart (a bare point can parse as an OCTET
/// STRING, but never as one holding a point of its curve's size).
///
/// # Errors
/// A description of what is wrong when the value is neither form (for other curves: when it is not
/// exactly one DER OCTET STRING).
pub(crate) fn ec_point<'a>(attribute: &'a [u8], params: &[u8]) -> Result<&'a [u8], String> {
    let wrapped = OctetStringRef::from_der(attribute).map(|octets| octets.as_bytes());
    let Some(coordinate) = coordinate_bytes(params) else {
        return wrapped.map_err(|error| format!("CKA_EC_POINT is not a DER OCTET STRING ({error})"));
    };
    match wrapped {
        Ok(point) if is_sec1_point(point, coordinate) => Ok(point),
        _ if is_sec1_point(attribute, coordinate) => Ok(attribute),
        Ok(point) => Err(format!(
            "CKA_EC_POINT holds {} bytes, not a SEC1 point of its curve ({} or {} bytes starting 04, 02 or 03)",
            point.len(),
            1 + 2 * coordinate,
            1 + coordinate
        )),
        Err(error) => Err(format!(
            "CKA_EC_POINT ({} bytes) is neither a DER OCTET STRING holding a SEC1 point nor such a point ({error})",
            attribute.len()
        )),
    }
}

/// The SubjectPublicKeyInfo of an EC key: id-ecPublicKey with `params`, and the SEC1 `point`.
pub(crate) fn ec_spki(params: &[u8], point: &[u8]) -> Vec<u8> {
    let algorithm = tlv(0x30, &[&ID_EC_PUBLIC_KEY, params]);
    tlv(0x30, &[&algorithm, &bit_string(point)])
}

/// The SubjectPublicKeyInfo of an RSA key: rsaEncryption and `RSAPublicKey { modulus, exponent }`.
pub(crate) fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let algorithm = tlv(0x30, &[&RSA_ENCRYPTION]);
    let key = tlv(0x30, &[&integer(modulus), &integer(exponent)]);
    tlv(0x30, &[&algorithm, &bit_string(&key)])
}

/// A BIT STRING with no unused bits.
fn bit_string(content: &[u8]) -> Vec<u8> {
    tlv(0x03, &[&[0], content])
}

/// A non-negative INTEGER from big-endian bytes: leading zeros dropped, one added if the top bit is set.
fn integer(magnitude: &[u8]) -> Vec<u8> {
    let first = magnitude.iter().position(|&byte| byte != 0).unwrap_or(magnitude.len());
    let trimmed = &magnitude[first..];
    let pad: &[u8] = if trimmed.first().is_none_or(|&byte| byte & 0x80 != 0) { &[0] } else { &[] };
    tlv(0x02, &[pad, trimmed])
}

/// A DER tag-length-value whose value is `parts` concatenated.
fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let length: usize = parts.iter().map(|part| part.len()).sum();
    let mut out = vec![tag];
    if length < 0x80 {
        out.extend_from_slice(&length.to_be_bytes()[size_of::<usize>() - 1..]);
    } else {
        let bytes = length.to_be_bytes();
        let first = bytes.iter().position(|&byte| byte != 0).unwrap_or(bytes.len() - 1);
        let count = bytes.len() - first;
        out.push(0x80 | u8::try_from(count).unwrap_or(0x7f));
        out.extend_from_slice(&bytes[first..]);
    }
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use ethkms_core::k256::AffinePoint;
    use ethkms_core::{Curve, ErrorKind, PublicKey};

    use super::*;

    #[test]
    fn a_secp256k1_point_becomes_the_spki_kms_returns() {
        let key = PublicKey::from_affine(AffinePoint::GENERATOR);
        let wrapped = [&[0x04, 65][..], &key.to_uncompressed()].concat();
        let point = ec_point(&wrapped, &SECP256K1_PARAMS).unwrap();
        let spki = ec_spki(&SECP256K1_PARAMS, point);
        assert_eq!(spki, key.to_spki_der());
        assert_eq!(PublicKey::from_spki_der(&spki).unwrap().address(), key.address());
    }

    #[test]
    fn a_bare_point_is_accepted_as_some_tokens_return_it() {
        let key = PublicKey::from_affine(AffinePoint::GENERATOR);
        let uncompressed = key.to_uncompressed();
        assert_eq!(ec_point(&uncompressed, &SECP256K1_PARAMS).unwrap(), uncompressed);
        assert_eq!(ec_spki(&SECP256K1_PARAMS, ec_point(&uncompressed, &SECP256K1_PARAMS).unwrap()), key.to_spki_der());
        // Compressed, bare and wrapped: the core reads it as the same key.
        let compressed = [&[0x02 | (uncompressed[64] & 1)][..], &uncompressed[1..33]].concat();
        for attribute in [compressed.clone(), [&[0x04, 33][..], &compressed].concat()] {
            let point = ec_point(&attribute, &SECP256K1_PARAMS).unwrap();
            assert_eq!(point, compressed);
            let spki = ec_spki(&SECP256K1_PARAMS, point);
            assert_eq!(PublicKey::from_spki_der(&spki).unwrap().address(), key.address());
        }
        // A bare point whose x starts with 0x3f also parses as an OCTET STRING (04 3f ‖ 63 bytes): not one
        // holding a point, so it is the bare point.
        let mut ambiguous = [0x11; 65];
        ambiguous[0] = 0x04;
        ambiguous[1] = 0x3f;
        assert!(OctetStringRef::from_der(&ambiguous).is_ok());
        assert_eq!(ec_point(&ambiguous, &SECP256K1_PARAMS).unwrap(), ambiguous);
        // Other named curves by their own sizes.
        let p384 = [&[0x04][..], &[0x22; 96]].concat();
        assert_eq!(ec_point(&p384, &P384_PARAMS).unwrap(), p384);
        assert!(ec_point(&uncompressed, &P384_PARAMS).is_err());
        let p521 = [&[0x03][..], &[0x01; 66]].concat();
        assert_eq!(ec_point(&p521, &P521_PARAMS).unwrap(), p521);
    }

    #[test]
    fn garbage_is_refused_in_either_form() {
        let point = PublicKey::from_affine(AffinePoint::GENERATOR).to_uncompressed();
        let refused = |attribute: &[u8]| ec_point(attribute, &SECP256K1_PARAMS).unwrap_err();
        assert!(refused(&[]).contains("neither"));
        // The wrong length or first byte, bare.
        assert!(refused(&point[..64]).contains("neither"));
        assert!(refused(&[&[0x05][..], &point[1..]].concat()).contains("neither"));
        assert!(refused(&[&[0x04][..], &point[1..33]].concat()).contains("neither"));
        assert!(refused(&[0x00]).contains("neither"));
        // Wrapped: trailing bytes after the OCTET STRING, a non-minimal long-form length, the wrong contents.
        let mut wrapped = [&[0x04, 65][..], &point].concat();
        wrapped.push(0);
        assert!(refused(&wrapped).contains("neither"));
        assert!(refused(&[&[0x04, 0x81, 65][..], &point].concat()).contains("neither"));
        let short = [&[0x04, 64][..], &point[..64]].concat();
        assert!(refused(&short).contains("holds 64 bytes"), "{}", refused(&short));
        assert!(refused(&[0x04, 0x01, 0x04]).contains("holds 1 bytes"));
        // A curve not named here: the standard form only, its contents as they are.
        let brainpool = [0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x07];
        assert!(ec_point(&point, &brainpool).unwrap_err().contains("OCTET STRING"));
        assert_eq!(ec_point(&[&[0x04, 65][..], &point].concat(), &brainpool).unwrap(), point);
    }

    #[test]
    fn other_curves_are_named_and_the_core_refuses_them() {
        assert_eq!(ec_key_spec(&P256_PARAMS), KeySpec::EccNistP256);
        assert_eq!(ec_key_spec(&SECP256K1_PARAMS), KeySpec::EccSecgP256k1);
        let brainpool = [0x06, 0x09, 0x2b, 0x24, 0x03, 0x03, 0x02, 0x08, 0x01, 0x01, 0x07];
        assert_eq!(ec_key_spec(&brainpool), KeySpec::Other("EC_1.3.36.3.3.2.8.1.1.7".into()));
        assert_eq!(ec_key_spec(&[0x30, 0x00]), KeySpec::Other("EC_EXPLICIT_PARAMETERS".into()));
        for spec in [KeySpec::EccSecgP256k1, KeySpec::EccNistP256, KeySpec::EccNistP384, KeySpec::EccNistP521] {
            assert_eq!(ec_key_spec(ec_params(&spec).unwrap()), spec);
        }
        // A P-256 key's SPKI, whatever its point, is refused by the core as the wrong curve.
        let spki = ec_spki(&P256_PARAMS, &PublicKey::from_affine(AffinePoint::GENERATOR).to_uncompressed());
        let error = PublicKey::from_spki_der(&spki).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::UnsupportedCurve(Curve::P256));
    }

    #[test]
    fn rsa_keys_encode_with_minimal_integers_and_long_lengths() {
        let modulus = [&[0x00, 0xc3][..], &[0x5a; 255]].concat();
        let spki = rsa_spki(&modulus, &[0x01, 0x00, 0x01]);
        assert_eq!(&spki[..4], &[0x30, 0x82, 0x01, 0x22]);
        assert_eq!(spki.len(), 4 + 0x122);
        assert!(spki.windows(3).any(|window| window == [0x02, 0x03, 0x01]), "exponent 65537 as 02 03 01 00 01");
        assert_eq!(rsa_key_spec(2048), KeySpec::Rsa2048);
        assert_eq!(rsa_key_spec(1024), KeySpec::Other("RSA_1024".into()));
        assert_eq!(integer(&[0, 0, 0x7f]), [0x02, 0x01, 0x7f]);
        assert_eq!(integer(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(integer(&[]), [0x02, 0x01, 0x00]);
    }
}
