//! Fast SM2 signature verification (GB/T 32918.2-2016 §7) with precomputed tables.
//!
//! Verification computes `(x1, y1) = [s]G + [t]P_A`. The `sm2` crate does it with a generic
//! two-point ladder (shared doublings, complete projective formulas): about 0.3 ms. Here both
//! multiplications are fixed-base: for a point P, a comb table holds `j·256^w·P` for every
//! window w of 8 bits (33 windows, the top one for the carry of the signed recoding) and every
//! j in 1..=128, in affine form. A scalar is recoded into 33 signed digits in [-128, 127], and
//! `[k]P` is the sum of one table entry (or its negation) per window: at most 33 mixed
//! projective + affine additions and no doubling. `[s]G + [t]P_A` is thus at most 66 mixed
//! additions and one inversion.
//!
//! Tables: 33 × 128 affine points ≈ 300 KB each. The generator's is built once per process
//! (lazily); a public key's is built when the key has verified a few signatures and is kept
//! with the key ([`super::Sm2VerifyingKey`] shares it between clones). Building one costs
//! about 4,200 projective additions and one batch inversion (a few milliseconds).
//!
//! Variable time: the table lookups and the branches on digits depend on `s`, `t` and the
//! public key, which are all public (a signature and a key are public data; verification
//! involves no secret). This code must never be used with a secret scalar (signing keeps the
//! `sm2` crate's constant-time code).

use ::sm2::elliptic_curve::Group;
use ::sm2::elliptic_curve::ops::Reduce;
use ::sm2::elliptic_curve::point::{AffineCoordinates, BatchNormalize};
use ::sm2::{AffinePoint, FieldBytes, ProjectivePoint, Scalar};
use std::sync::OnceLock;

/// Windows of 8 bits over a 256-bit scalar, plus one for the final carry of the signed recoding.
const WINDOWS: usize = 33;
/// Entries per window: multiples 1..=128 (negative digits use the negated entry).
const ENTRIES: usize = 128;

/// `j·256^w·P` for w in 0..33 and j in 1..=128, affine, at index `w·128 + j − 1`.
pub(crate) struct CombTable {
    points: Vec<AffinePoint>,
}

impl CombTable {
    /// Builds the table of `point` (which must not be the identity: public keys never are).
    pub(crate) fn new(point: &AffinePoint) -> CombTable {
        let mut projective = Vec::with_capacity(WINDOWS * ENTRIES);
        let mut base = ProjectivePoint::from(point);
        for _ in 0..WINDOWS {
            let mut multiple = base;
            projective.push(multiple);
            for _ in 1..ENTRIES {
                multiple += &base;
                projective.push(multiple);
            }
            // `multiple` is 128·base: the next window's base is 256·base.
            base = multiple.double();
        }
        let points = ProjectivePoint::batch_normalize(projective.as_slice());
        CombTable { points }
    }

    /// Adds `[k]P` to `acc` (variable time: `k` and P must be public).
    fn add_multiple(&self, acc: &mut ProjectivePoint, k: &Scalar) {
        for (window, digit) in signed_digits(k).into_iter().enumerate() {
            let index = window * ENTRIES + usize::from(digit.unsigned_abs());
            if digit > 0 {
                *acc += &self.points[index - 1];
            } else if digit < 0 {
                *acc -= &self.points[index - 1];
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn mul(&self, k: &Scalar) -> ProjectivePoint {
        let mut acc = ProjectivePoint::IDENTITY;
        self.add_multiple(&mut acc, k);
        acc
    }
}

/// The comb table of the generator G, built on first use.
pub(crate) fn generator_table() -> &'static CombTable {
    static TABLE: OnceLock<CombTable> = OnceLock::new();
    TABLE.get_or_init(|| CombTable::new(&AffinePoint::GENERATOR))
}

/// `k` (< n < 2^256) as 33 digits d_w in [-128, 127] with `k = Σ d_w·256^w`.
fn signed_digits(k: &Scalar) -> [i8; WINDOWS] {
    let bytes = k.to_bytes(); // big-endian
    let mut digits = [0i8; WINDOWS];
    let mut carry = 0u16;
    for (w, byte) in bytes.iter().rev().enumerate() {
        let v = u16::from(*byte) + carry; // 0..=256
        if v >= 128 {
            digits[w] = (i32::from(v) - 256) as i8; // -128..=0
            carry = 1;
        } else {
            digits[w] = v as i8;
            carry = 0;
        }
    }
    digits[WINDOWS - 1] = carry as i8;
    digits
}

/// GB/T 32918.2 verification steps B1–B7 given e = SM3(Z_A ‖ M) (`digest`), the signature's
/// `r` and `s` (the caller has checked both lie in [1, n−1], B1–B2) and the tables of G and P_A.
pub(crate) fn verify_prehashed(digest: &[u8; 32], r: &Scalar, s: &Scalar, public_table: &CombTable) -> bool {
    if bool::from(r.is_zero()) || bool::from(s.is_zero()) {
        return false;
    }
    // B4: e as an integer mod n.
    let e = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*digest));
    // B5: t = (r + s) mod n, which must not be 0.
    let t = *r + *s;
    if bool::from(t.is_zero()) {
        return false;
    }
    // B6: (x1, y1) = [s]G + [t]P_A; the point at infinity is rejected (as the `sm2` crate does).
    let mut point = ProjectivePoint::IDENTITY;
    generator_table().add_multiple(&mut point, s);
    public_table.add_multiple(&mut point, &t);
    if bool::from(point.is_identity()) {
        return false;
    }
    let x1 = point.to_affine().x();
    // B7: R = (e + x1) mod n must equal r.
    *r == e + <Scalar as Reduce<FieldBytes>>::reduce(&x1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::sm2::elliptic_curve::ff::PrimeField;

    fn scalar_from_be(bytes: [u8; 32]) -> Option<Scalar> {
        Option::from(Scalar::from_repr(bytes.into()))
    }

    fn edge_scalars() -> Vec<Scalar> {
        let mut out = vec![Scalar::ZERO, Scalar::ONE, -Scalar::ONE, Scalar::ONE + Scalar::ONE];
        for byte in [0x7f, 0x80, 0x81, 0xff] {
            out.push(scalar_from_be([byte; 32]).unwrap_or(-Scalar::ONE));
            let mut low = [0u8; 32];
            low[31] = byte;
            out.push(scalar_from_be(low).unwrap());
            let mut high = [0u8; 32];
            high[0] = byte;
            if let Some(s) = scalar_from_be(high) {
                out.push(s);
            }
        }
        // n − 128, n − 129: digits near the top with carries all the way.
        out.push(-Scalar::from(128u64));
        out.push(-Scalar::from(129u64));
        out
    }

    #[test]
    fn signed_digits_recompose() {
        let mut scalars = edge_scalars();
        for _ in 0..200 {
            scalars.push(random_scalar());
        }
        let radix = Scalar::from(256u64);
        for k in scalars {
            let digits = signed_digits(&k);
            let mut sum = Scalar::ZERO;
            for d in digits.iter().rev() {
                let d_scalar = if *d >= 0 {
                    Scalar::from(u64::from(d.unsigned_abs()))
                } else {
                    -Scalar::from(u64::from(d.unsigned_abs()))
                };
                sum = sum * radix + d_scalar;
            }
            assert_eq!(sum, k);
            assert!(digits.iter().all(|d| (-128..=127).contains(d)));
            assert!((0..=1).contains(&digits[WINDOWS - 1]));
        }
    }

    #[test]
    fn comb_multiplication_matches_the_sm2_crate() {
        let g = generator_table();
        let p = (ProjectivePoint::GENERATOR * Scalar::from(0x1234_5678_9abc_def0u64)).to_affine();
        let p_table = CombTable::new(&p);
        let mut scalars = edge_scalars();
        for _ in 0..50 {
            scalars.push(random_scalar());
        }
        for k in scalars {
            assert_eq!(g.mul(&k), ProjectivePoint::GENERATOR * k, "[k]G for k = {k:?}");
            assert_eq!(p_table.mul(&k), ProjectivePoint::from(p) * k, "[k]P for k = {k:?}");
        }
    }

    fn random_scalar() -> Scalar {
        let bytes: [u8; 32] = crate::random_bytes(32).try_into().expect("32 bytes");
        <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(bytes))
    }
}
