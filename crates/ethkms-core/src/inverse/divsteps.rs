//! Modular inversion by Bernstein and Yang's divsteps in variable time, as libsecp256k1 does it
//! (`secp256k1_modinv64_var`, Wuille's "safegcd implementation" notes): numbers as five signed 62-bit
//! limbs; each outer step makes 62 divsteps on the low limbs alone — a run of trailing zeros of `g` in one
//! shift, up to 6 bits of `g` cancelled by one multiplication — and applies their 2×2 matrix to the
//! whole of `f`, `g` (exactly) and `d`, `e` (modulo the modulus, with a correction that keeps them
//! divisible by 2⁶²); `f` and `g` shrink, so their top limbs are dropped as they become zero.
//!
//! Only for public values: how long it takes depends on the value. The caller checks every result by one
//! multiplication ([`super`]), so a wrong inverse could never leave this module unnoticed.

// Limbs move between i64, u64 and i128 by design: the low 62 bits are cut off, signs reinterpreted.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    reason = "two's-complement limb arithmetic, as in libsecp256k1"
)]

/// A number as five signed limbs of 62 bits: `v[0] + v[1]·2⁶² + … + v[4]·2²⁴⁸`.
type Limbs = [i64; 5];

const M62: u64 = u64::MAX >> 2;

/// An odd modulus below 2²⁵⁶ and its inverse modulo 2⁶².
pub(super) struct Modulus {
    limbs: Limbs,
    inverse_62: u64,
}

impl Modulus {
    /// The odd modulus whose big-endian bytes are `bytes`.
    pub(super) const fn new(bytes: &[u8; 32]) -> Self {
        let limbs = from_bytes(bytes);
        let low = u64::from_le_bytes(take8(bytes, 24));
        // Newton's iteration: `x = low` is right to 3 bits for any odd `low`; each step doubles that.
        let mut x = low;
        let mut step = 0;
        while step < 5 {
            x = x.wrapping_mul(2u64.wrapping_sub(low.wrapping_mul(x)));
            step += 1;
        }
        Self { limbs, inverse_62: x & M62 }
    }

    /// The modulus's inverse modulo 2⁶².
    #[cfg(test)]
    pub(super) fn inverse_62(&self) -> u64 {
        self.inverse_62
    }
}

/// The eight bytes of `bytes` from `at`, reversed (bytes are big-endian, words little-endian).
const fn take8(bytes: &[u8; 32], at: usize) -> [u8; 8] {
    let mut word = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        word[i] = bytes[at + 7 - i];
        i += 1;
    }
    word
}

/// The limbs of the 256-bit big-endian `bytes`, each in `[0, 2⁶²)`.
const fn from_bytes(bytes: &[u8; 32]) -> Limbs {
    let a0 = u64::from_le_bytes(take8(bytes, 24));
    let a1 = u64::from_le_bytes(take8(bytes, 16));
    let a2 = u64::from_le_bytes(take8(bytes, 8));
    let a3 = u64::from_le_bytes(take8(bytes, 0));
    [
        (a0 & M62) as i64,
        ((a0 >> 62 | a1 << 2) & M62) as i64,
        ((a1 >> 60 | a2 << 4) & M62) as i64,
        ((a2 >> 58 | a3 << 6) & M62) as i64,
        (a3 >> 56) as i64,
    ]
}

/// The big-endian bytes of `limbs`, each in `[0, 2⁶²)` and the top one below 2⁸.
fn to_bytes(limbs: &Limbs) -> [u8; 32] {
    let v = limbs.map(|limb| limb as u64);
    let words = [v[0] | v[1] << 62, v[1] >> 2 | v[2] << 60, v[2] >> 4 | v[3] << 58, v[3] >> 6 | v[4] << 56];
    let mut bytes = [0u8; 32];
    for (chunk, word) in bytes.rchunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    bytes
}

/// The 2×2 matrix of 62 divsteps, scaled by 2⁶²: `[u v; q r]`.
#[derive(Clone, Copy)]
struct Transition {
    u: i64,
    v: i64,
    q: i64,
    r: i64,
}

/// 62 divsteps on the low 64 bits of `f` (odd) and `g`, from `eta` (minus delta): the new `eta` and the
/// matrix. libsecp256k1's `secp256k1_modinv64_divsteps_62_var`.
fn divsteps_62(mut eta: i64, f0: u64, g0: u64) -> (i64, Transition) {
    let (mut u, mut v, mut q, mut r) = (1u64, 0u64, 0u64, 1u64);
    let (mut f, mut g) = (f0, g0);
    let mut left: u32 = 62;
    loop {
        // A sentinel bit above the steps left: no more zeros than that are counted.
        let zeros = (g | (u64::MAX << left)).trailing_zeros();
        // That many divsteps only halve g.
        g >>= zeros;
        u <<= zeros;
        v <<= zeros;
        eta -= i64::from(zeros);
        left -= zeros;
        if left == 0 {
            break;
        }
        // f and g are odd now.
        let (limit, mask, w);
        if eta < 0 {
            // Swap: (f, g) becomes (g, −f).
            eta = -eta;
            (f, g) = (g, f.wrapping_neg());
            (u, q) = (q, u.wrapping_neg());
            (v, r) = (r, v.wrapping_neg());
            // Cancel up to 6 bits of g (no more than the steps left, nor than eta + 1, after which eta's
            // sign flips again): w·f + g ≡ 0 modulo 2^bits, with f·(f² − 2) an inverse of −f modulo 64.
            limit = eta.saturating_add(1).min(i64::from(left)) as u32;
            mask = (u64::MAX >> (64 - limit)) & 63;
            w = f.wrapping_mul(g).wrapping_mul(f.wrapping_mul(f).wrapping_sub(2)) & mask;
        } else {
            // Up to 4 bits (eta tends to be small here): f + ((f + 1) & 4)·2 inverts f modulo 16.
            limit = eta.saturating_add(1).min(i64::from(left)) as u32;
            mask = (u64::MAX >> (64 - limit)) & 15;
            let inverse = f.wrapping_add((f.wrapping_add(1) & 4) << 1);
            w = inverse.wrapping_neg().wrapping_mul(g) & mask;
        }
        g = g.wrapping_add(f.wrapping_mul(w));
        q = q.wrapping_add(u.wrapping_mul(w));
        r = r.wrapping_add(v.wrapping_mul(w));
        debug_assert_eq!(g & mask, 0, "the low bits of g were cancelled");
    }
    (eta, Transition { u: u as i64, v: v as i64, q: q as i64, r: r as i64 })
}

/// `[d, e] = t·[d, e] / 2⁶²` modulo the modulus: a multiple of the modulus is added first so that the
/// division is exact. `d` and `e` stay in `(−2·modulus, modulus)`.
fn update_de(d: &mut Limbs, e: &mut Limbs, t: Transition, modulus: &Modulus) {
    let Transition { u, v, q, r } = t;
    let m = &modulus.limbs;
    // Add [u, q] if d is negative and [v, r] if e is: the result stays in range.
    let (sd, se) = (d[4] >> 63, e[4] >> 63);
    let mut md = (u & sd).wrapping_add(v & se);
    let mut me = (q & sd).wrapping_add(r & se);
    let mut cd = i128::from(u) * i128::from(d[0]) + i128::from(v) * i128::from(e[0]);
    let mut ce = i128::from(q) * i128::from(d[0]) + i128::from(r) * i128::from(e[0]);
    // md, me such that t·[d, e] + modulus·[md, me] has 62 zero low bits.
    md = md.wrapping_sub((modulus.inverse_62.wrapping_mul(cd as u64).wrapping_add(md as u64) & M62) as i64);
    me = me.wrapping_sub((modulus.inverse_62.wrapping_mul(ce as u64).wrapping_add(me as u64) & M62) as i64);
    cd += i128::from(m[0]) * i128::from(md);
    ce += i128::from(m[0]) * i128::from(me);
    debug_assert_eq!((cd as u64) & M62, 0);
    debug_assert_eq!((ce as u64) & M62, 0);
    cd >>= 62;
    ce >>= 62;
    for i in 1..5 {
        cd += i128::from(u) * i128::from(d[i]) + i128::from(v) * i128::from(e[i]) + i128::from(m[i]) * i128::from(md);
        ce += i128::from(q) * i128::from(d[i]) + i128::from(r) * i128::from(e[i]) + i128::from(m[i]) * i128::from(me);
        d[i - 1] = (cd as u64 & M62) as i64;
        e[i - 1] = (ce as u64 & M62) as i64;
        cd >>= 62;
        ce >>= 62;
    }
    d[4] = cd as i64;
    e[4] = ce as i64;
}

/// `[f, g] = t·[f, g] / 2⁶²` (exact) on their `len` low limbs.
fn update_fg(len: usize, f: &mut Limbs, g: &mut Limbs, t: Transition) {
    let Transition { u, v, q, r } = t;
    let mut cf = i128::from(u) * i128::from(f[0]) + i128::from(v) * i128::from(g[0]);
    let mut cg = i128::from(q) * i128::from(f[0]) + i128::from(r) * i128::from(g[0]);
    debug_assert_eq!((cf as u64) & M62, 0);
    debug_assert_eq!((cg as u64) & M62, 0);
    cf >>= 62;
    cg >>= 62;
    for i in 1..len {
        cf += i128::from(u) * i128::from(f[i]) + i128::from(v) * i128::from(g[i]);
        cg += i128::from(q) * i128::from(f[i]) + i128::from(r) * i128::from(g[i]);
        f[i - 1] = (cf as u64 & M62) as i64;
        g[i - 1] = (cg as u64 & M62) as i64;
        cf >>= 62;
        cg >>= 62;
    }
    f[len - 1] = cf as i64;
    g[len - 1] = cg as i64;
}

/// Carries every limb's excess into the next, leaving the low four in `[0, 2⁶²)`.
fn carry(x: &mut Limbs) {
    for i in 0..4 {
        x[i + 1] += x[i] >> 62;
        x[i] &= M62 as i64;
    }
}

/// `d` (in `(−2·modulus, modulus)`), negated if `negate`, brought into `[0, modulus)`.
///
/// With p's middle limbs at 2⁶² − 1, a limb plus the modulus's can reach 2⁶³ − 2, and with the carries
/// 2⁶³ − 1 (or −2⁶³ negated): the bound of `i64` exactly, never past it.
fn normalize(d: &mut Limbs, negate: bool, modulus: &Modulus) {
    let add_modulus = |d: &mut Limbs| {
        for (limb, m) in d.iter_mut().zip(modulus.limbs) {
            *limb += m;
        }
    };
    if d[4] < 0 {
        add_modulus(d);
    }
    if negate {
        for limb in d.iter_mut() {
            *limb = -*limb;
        }
    }
    carry(d);
    if d[4] < 0 {
        add_modulus(d);
        carry(d);
    }
}

/// The inverse of `value` (big-endian, in `[1, modulus)`) modulo the prime `modulus`; `None` if the steps
/// did not end as they must (never for such input; the caller then inverts another way).
pub(super) fn invert(value: &[u8; 32], modulus: &Modulus) -> Option<[u8; 32]> {
    let (mut d, mut e): (Limbs, Limbs) = ([0; 5], [1, 0, 0, 0, 0]);
    let (mut f, mut g) = (modulus.limbs, from_bytes(value));
    let mut len = 5;
    let mut eta = -1;
    // 256-bit input ends within 741 divsteps (Bernstein and Yang's bound; 724 by Wuille's safegcd-bounds):
    // 12 rounds of 62 at most, and one spare; more would mean a fault, not a slow input.
    for _ in 0..13 {
        let transition;
        (eta, transition) = divsteps_62(eta, f[0] as u64, g[0] as u64);
        update_de(&mut d, &mut e, transition, modulus);
        update_fg(len, &mut f, &mut g, transition);
        if g[..len].iter().all(|limb| *limb == 0) {
            // f is ±gcd(value, modulus), ±1 for a prime modulus; its sign says whether to negate d.
            normalize(&mut d, f[len - 1] < 0, modulus);
            return Some(to_bytes(&d));
        }
        // Drop the top limb when it is 0 or −1 in both f and g, folding its sign into the one below.
        let (top_f, top_g) = (f[len - 1], g[len - 1]);
        if len > 1 && (top_f == 0 || top_f == -1) && (top_g == 0 || top_g == -1) {
            f[len - 2] |= ((top_f as u64) << 62) as i64;
            g[len - 2] |= ((top_g as u64) << 62) as i64;
            len -= 1;
        }
    }
    None
}
