//! A sum of precomputed multiples in projective coordinates of our own, so that making it affine takes
//! the variable-time inversion of `Z` ([`invert_field_public`]) rather than k256's constant-time exponentiation:
//! k256 keeps a point's coordinates private. The addition is k256's own, Renes, Costello and Batina's
//! complete mixed addition (<https://eprint.iacr.org/2015/1060>, algorithm 8, `a = 0`), written with the
//! same field operations in the same order (so the same magnitudes); tests hold every sum to k256's
//! `lincomb`. Complete: any two points add up right, doublings and opposite points included — except an
//! affine identity, which no table holds (see `Multiples::new`).

use k256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use k256::{AffinePoint, EncodedPoint, FieldElement};

use crate::inverse::invert_field_public;

/// `b = 7` of `y² = x³ + 7`.
const B: u32 = 7;

/// An affine point that is not the identity, as two field elements (80 bytes in release builds).
#[derive(Clone, Copy, Debug)]
pub(super) struct Affine {
    x: FieldElement,
    y: FieldElement,
}

impl Affine {
    /// `point`'s coordinates; `None` for the identity.
    pub(super) fn new(point: &AffinePoint) -> Option<Self> {
        let encoded = point.to_encoded_point(false);
        let x: Option<FieldElement> = FieldElement::from_bytes(encoded.x()?).into();
        let y: Option<FieldElement> = FieldElement::from_bytes(encoded.y()?).into();
        let (x, y) = (x?, y?);
        Some(Self { x, y })
    }
}

/// `(X : Y : Z)` with `x = X/Z`, `y = Y/Z`; the identity is `(0 : 1 : 0)`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sum {
    x: FieldElement,
    y: FieldElement,
    z: FieldElement,
}

impl Sum {
    /// The identity.
    pub(super) const IDENTITY: Self = Self { x: FieldElement::ZERO, y: FieldElement::ONE, z: FieldElement::ZERO };

    /// Adds `point`.
    pub(super) fn add(&mut self, point: &Affine) {
        self.add_xy(&point.x, &point.y);
    }

    /// Subtracts `point`.
    pub(super) fn sub(&mut self, point: &Affine) {
        self.add_xy(&point.x, &point.y.negate(1).normalize_weak());
    }

    /// Adds the affine point `(x2, y2)` (not the identity), as k256's `ProjectivePoint::add_mixed`.
    fn add_xy(&mut self, x2: &FieldElement, y2: &FieldElement) {
        let (x1, y1, z1, x2, y2) = (self.x, self.y, self.z, *x2, *y2);
        let xx = x1 * x2;
        let yy = y1 * y2;
        let xy_pairs = ((x1 + y1) * (x2 + y2)) + (xx + yy).negate(2);
        let yz_pairs = (y2 * z1) + y1;
        let xz_pairs = (x2 * z1) + x1;

        let bzz = z1.mul_single(B);
        let bzz3 = (bzz.double() + bzz).normalize_weak();
        let yy_m_bzz3 = yy + bzz3.negate(1);
        let yy_p_bzz3 = yy + bzz3;

        let byz = yz_pairs.mul_single(B).normalize_weak();
        let byz3 = (byz.double() + byz).normalize_weak();

        let xx3 = xx.double() + xx;
        let bxx9 = (xx3.double() + xx3).normalize_weak().mul_single(B).normalize_weak();

        self.x = ((xy_pairs * yy_m_bzz3) + (byz3 * xz_pairs).negate(1)).normalize_weak();
        self.y = ((yy_p_bzz3 * yy_m_bzz3) + (bxx9 * xz_pairs)).normalize_weak();
        self.z = ((yz_pairs * yy_p_bzz3) + (xx3 * xy_pairs)).normalize_weak();
    }

    /// The sum as an affine point (the identity when `Z = 0`).
    pub(super) fn to_affine(self) -> AffinePoint {
        let Some(z_inverse) = invert_field_public(&self.z) else { return AffinePoint::IDENTITY };
        let x = (self.x * z_inverse).normalize();
        let y = (self.y * z_inverse).normalize();
        let encoded = EncodedPoint::from_affine_coordinates(&x.to_bytes(), &y.to_bytes(), false);
        // On the curve by construction; the check costs two multiplications.
        Option::from(AffinePoint::from_encoded_point(&encoded)).unwrap_or(AffinePoint::IDENTITY)
    }
}
