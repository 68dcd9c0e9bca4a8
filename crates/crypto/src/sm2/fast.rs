//! Fast SM2 signature verification (GB/T 32918.2-2016 §7) with precomputed tables.
//!
//! Verification computes `(x1, y1) = [s]G + [t]P_A`. The `sm2` crate does it with a generic
//! two-point ladder (shared doublings, complete projective formulas): about 0.3 ms. Here both
//! multiplications are fixed-base: for a point P, a comb table holds `j·256^w·P` for every
//! window w of 8 bits (33 windows, the top one for the carry of the signed recoding) and every
//! j in 1..=128, in affine form. A scalar is recoded into 33 signed digits in [-128, 127], and
//! `[k]P` is the sum of one table entry (or its negation) per window: at most 33 mixed
//! Jacobian + affine additions (8M + 3S each, a = −3) and no doubling. `[s]G + [t]P_A` is thus
//! at most 66 mixed additions, and no inversion: step B7 compares x1 = X/Z² with the two
//! candidates r − e and r − e + n (mod n values lifted to [0, p)) as X = c·Z².
//!
//! The field arithmetic is the `sm2` crate's (its base field element, reached through
//! `elliptic_curve::hazmat`); the tables are built with its projective points and batch
//! normalization. Only the accumulation and the final comparison are ours, checked against
//! the crate's point arithmetic and verification by the tests here and in `sm2.rs`.
//!
//! Tables: 33 × 128 affine points of 64 bytes, 270 KB each. The generator's is built once per
//! process (lazily); a public key's is built when the key has verified a few signatures and is
//! kept with the key ([`super::Sm2VerifyingKey`] shares it between clones). Building one costs
//! about 4,200 projective additions and one batch inversion (a few milliseconds).
//!
//! Variable time: the table lookups and the branches on digits depend on `s`, `t` and the
//! public key, which are all public (a signature and a key are public data; verification
//! involves no secret). This code must never be used with a secret scalar (signing keeps the
//! `sm2` crate's constant-time code).

use ::sm2::elliptic_curve::Group;
use ::sm2::elliptic_curve::ff::PrimeField;
use ::sm2::elliptic_curve::hazmat::FieldArithmetic;
use ::sm2::elliptic_curve::ops::Reduce;
use ::sm2::elliptic_curve::point::{AffineCoordinates, BatchNormalize};
use ::sm2::{AffinePoint, FieldBytes, ProjectivePoint, Scalar, Sm2};
use std::sync::OnceLock;

/// An element of the base field GF(p) (the `sm2` crate's, Montgomery form, always canonical).
type Fe = <Sm2 as FieldArithmetic>::FieldElement;

/// n, the order of G, big-endian.
const ORDER: [u8; 32] = hex32("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123");
/// p − n, big-endian: x1 ∈ [0, p) may be c or c + n for c = x1 mod n only when c < p − n.
const P_MINUS_N: [u8; 32] = hex32("000000000000000000000000000000008DFC2093DE39FAD5AC440BF6C62ABEDC");

const fn hex32(text: &str) -> [u8; 32] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not an upper-case hex digit"),
        }
    }
    let text = text.as_bytes();
    assert!(text.len() == 64);
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = digit(text[2 * i]) << 4 | digit(text[2 * i + 1]);
        i += 1;
    }
    out
}

/// A point in affine coordinates, never the identity (table entries only).
#[derive(Clone, Copy, Debug)]
struct Affine {
    x: Fe,
    y: Fe,
}

impl Affine {
    fn from_point(point: &AffinePoint) -> Affine {
        assert!(!bool::from(point.is_identity()), "table entries are never the identity");
        let coordinate = |bytes| Option::<Fe>::from(Fe::from_repr(bytes)).expect("a point's coordinates lie in [0, p)");
        Affine { x: coordinate(point.x()), y: coordinate(point.y()) }
    }

    fn neg(&self) -> Affine {
        Affine { x: self.x, y: -self.y }
    }
}

/// A point in Jacobian coordinates (x = X/Z², y = Y/Z³); Z = 0 is the identity.
#[derive(Clone, Copy, Debug)]
struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl Jacobian {
    const IDENTITY: Jacobian = Jacobian { x: Fe::ONE, y: Fe::ONE, z: Fe::ZERO };

    fn is_identity(&self) -> bool {
        bool::from(self.z.is_zero())
    }

    /// 2P, "dbl-2001-b" for a = −3 (3M + 5S). Only reached when an addition meets its own
    /// operand, which a verification practically never does, but handled exactly.
    fn double(&self) -> Jacobian {
        if self.is_identity() || bool::from(self.y.is_zero()) {
            return Jacobian::IDENTITY;
        }
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x * gamma;
        let t = (self.x - delta) * (self.x + delta);
        let alpha = t.double() + t;
        let beta4 = beta.double().double();
        let x = alpha.square() - beta4.double();
        let z = (self.y + self.z).square() - gamma - delta;
        let y = alpha * (beta4 - x) - gamma.square().double().double().double();
        Jacobian { x, y, z }
    }

    /// P + Q for an affine Q, "madd-2004-hmv" (8M + 3S), with the exceptional cases (P the
    /// identity, P = Q, P = −Q) handled by branches: variable time, public data only.
    fn add_affine(&self, q: &Affine) -> Jacobian {
        if self.is_identity() {
            return Jacobian { x: q.x, y: q.y, z: Fe::ONE };
        }
        let z1z1 = self.z.square();
        let u2 = q.x * z1z1;
        let s2 = q.y * self.z * z1z1;
        let h = u2 - self.x;
        let r = s2 - self.y;
        if bool::from(h.is_zero()) {
            return if bool::from(r.is_zero()) { self.double() } else { Jacobian::IDENTITY };
        }
        let hh = h.square();
        let hhh = h * hh;
        let v = self.x * hh;
        let x = r.square() - hhh - v.double();
        let y = r * (v - x) - self.y * hhh;
        let z = self.z * h;
        Jacobian { x, y, z }
    }

    /// Whether the affine x-coordinate X/Z² equals `x` (false for the identity).
    fn x_equals(&self, x: &Fe) -> bool {
        !self.is_identity() && self.x == *x * self.z.square()
    }
}

/// Windows of 8 bits over a 256-bit scalar, plus one for the final carry of the signed recoding.
const WINDOWS: usize = 33;
/// Entries per window: multiples 1..=128 (negative digits use the negated entry).
const ENTRIES: usize = 128;

/// `j·256^w·P` for w in 0..33 and j in 1..=128, affine, at index `w·128 + j − 1`.
pub(crate) struct CombTable {
    points: Vec<Affine>,
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
        let points = ProjectivePoint::batch_normalize(projective.as_slice()).iter().map(Affine::from_point).collect();
        CombTable { points }
    }

    /// Appends the entries whose sum is `[k]P` (negated for negative digits), at most 33
    /// (variable time: `k` and P must be public). Gathering all of them before adding lets their
    /// loads (cache misses, often) overlap instead of each waiting behind an addition.
    fn push_terms(&self, k: &Scalar, terms: &mut Vec<Affine>) {
        for (window, digit) in signed_digits(k).into_iter().enumerate() {
            let index = window * ENTRIES + usize::from(digit.unsigned_abs());
            if digit > 0 {
                terms.push(self.points[index - 1]);
            } else if digit < 0 {
                terms.push(self.points[index - 1].neg());
            }
        }
    }

    /// `[k]P` as the `sm2` crate's point (tests).
    #[cfg(test)]
    fn mul(&self, k: &Scalar) -> ProjectivePoint {
        let mut terms = Vec::new();
        self.push_terms(k, &mut terms);
        sum(&terms).to_crate_point()
    }
}

/// The sum of affine points, accumulated in Jacobian coordinates.
fn sum(terms: &[Affine]) -> Jacobian {
    terms.iter().fold(Jacobian::IDENTITY, |acc, q| acc.add_affine(q))
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
    let mut terms = Vec::with_capacity(2 * WINDOWS);
    generator_table().push_terms(s, &mut terms);
    public_table.push_terms(&t, &mut terms);
    let point = sum(&terms);
    if point.is_identity() {
        return false;
    }
    // B7: R = (e + x1) mod n must equal r.
    x1_matches(&point, r, &e)
}

/// Whether (e + x1) mod n = r for the point's x1, without computing x1 = X/Z²: x1 ≡ c =
/// (r − e) mod n, so x1 ∈ [0, p) is c, or c + n when that is below p (c + 2n never is: 2n > p).
fn x1_matches(point: &Jacobian, r: &Scalar, e: &Scalar) -> bool {
    let c: [u8; 32] = (*r - *e).to_repr().into();
    let c_field = Option::<Fe>::from(Fe::from_repr(c.into())).expect("c < n < p");
    if point.x_equals(&c_field) {
        return true;
    }
    c < P_MINUS_N && point.x_equals(&(c_field + order_in_field()))
}

/// n as an element of GF(p) (n < p).
fn order_in_field() -> Fe {
    Option::<Fe>::from(Fe::from_repr(ORDER.into())).expect("n < p")
}

#[cfg(test)]
impl Jacobian {
    fn to_crate_point(self) -> ProjectivePoint {
        if self.is_identity() {
            return ProjectivePoint::IDENTITY;
        }
        let z_inv = self.z.invert().unwrap();
        let z_inv2 = z_inv.square();
        let x = self.x * z_inv2;
        let y = self.y * z_inv2 * z_inv;
        let point = Option::<AffinePoint>::from(AffinePoint::from_coordinates(&x.to_repr(), &y.to_repr()))
            .expect("on the curve");
        ProjectivePoint::from(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::sm2::elliptic_curve::ff::Field;
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

    fn random_field() -> Fe {
        let bytes: [u8; 32] = crate::random_bytes(32).try_into().expect("32 bytes");
        Option::from(Fe::from_repr((bytes.map(|b| b & 0x7f)).into())).unwrap()
    }

    /// The same point with another Z (λ ≠ 0): X·λ², Y·λ³, Z·λ.
    fn rescaled(p: Jacobian) -> Jacobian {
        let l = random_field();
        Jacobian { x: p.x * l.square(), y: p.y * l.square() * l, z: p.z * l }
    }

    fn jacobian(p: &ProjectivePoint) -> Jacobian {
        rescaled(Jacobian { z: Fe::ONE, ..Affine::from_point(&p.to_affine()).into_jacobian() })
    }

    impl Affine {
        fn into_jacobian(self) -> Jacobian {
            Jacobian { x: self.x, y: self.y, z: Fe::ONE }
        }
    }

    #[test]
    fn constants() {
        assert_eq!(Option::<Fe>::from(Fe::from_repr(P_MINUS_N.into())).unwrap() + order_in_field(), Fe::ZERO);
        assert_eq!(Scalar::from_repr(ORDER.into()).is_none().unwrap_u8(), 1, "n itself is not a scalar");
        assert_eq!(
            -Scalar::ONE,
            Scalar::from_repr(hex32("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54122").into())
                .unwrap()
        );
    }

    /// The exceptional cases of the addition and the doubling, against the crate's arithmetic.
    #[test]
    fn jacobian_arithmetic_matches_the_sm2_crate() {
        for _ in 0..20 {
            let p = ProjectivePoint::GENERATOR * random_scalar();
            let q = ProjectivePoint::GENERATOR * random_scalar();
            let (pj, qa) = (jacobian(&p), Affine::from_point(&q.to_affine()));
            assert_eq!(pj.add_affine(&qa).to_crate_point(), p + q, "P + Q");
            assert_eq!(pj.add_affine(&qa.neg()).to_crate_point(), p - q, "P - Q");
            assert_eq!(pj.double().to_crate_point(), p.double(), "2P");
            let pa = Affine::from_point(&p.to_affine());
            assert_eq!(pj.add_affine(&pa).to_crate_point(), p.double(), "P + P doubles");
            assert!(pj.add_affine(&pa.neg()).is_identity(), "P + (-P) is the identity");
            assert_eq!(Jacobian::IDENTITY.add_affine(&qa).to_crate_point(), q, "O + Q");
            assert!(Jacobian::IDENTITY.double().is_identity());
        }
    }

    /// B7 when x1 ≥ n (probability about 2^-128 for a real signature, so built here): a point
    /// with x1 = n + k, any Z; accepted exactly when r = (e + x1) mod n, as the crate computes it.
    #[test]
    fn x1_above_the_order() {
        let b =
            Fe::from_repr(hex32("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93").into()).unwrap();
        let mut found = 0;
        for k in 0u64..64 {
            let x = order_in_field() + Fe::from(k);
            let rhs = x.square() * x - x.double() - x + b;
            let Some(y) = Option::<Fe>::from(rhs.sqrt()) else { continue };
            found += 1;
            let point = rescaled(Jacobian { x, y, z: Fe::ONE });
            let x_reduced = <Scalar as Reduce<FieldBytes>>::reduce(&x.to_repr());
            assert_eq!(x_reduced, Scalar::from(k), "the crate reduces x1 mod n");
            let e = random_scalar();
            let r = e + x_reduced;
            assert!(x1_matches(&point, &r, &e), "x1 = n + {k}");
            assert!(!x1_matches(&point, &(r + Scalar::ONE), &e));
            assert!(!x1_matches(&point, &(r - Scalar::ONE), &e));
            assert!(!x1_matches(&Jacobian::IDENTITY, &r, &e), "the identity never matches");
        }
        assert!(found > 10, "about half of the x have a point");
    }

    fn random_scalar() -> Scalar {
        let bytes: [u8; 32] = crate::random_bytes(32).try_into().expect("32 bytes");
        <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(bytes))
    }
}
