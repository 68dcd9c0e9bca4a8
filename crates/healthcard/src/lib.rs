//! The electronic health card (电子健康卡) core: card ids, the static and dynamic QR payloads
//! (the dynamic one SM2-signed by the platform and carrying the 三码融合 references to an
//! insurance e-voucher and a payment token), offline verification and QR rendering.
//!
//! Pure: no IO, no clock (callers pass `now`), no storage. The engine (`engine/src/healthcard.rs`)
//! stores cards, rejects replays and audits; this crate only says what a code is and whether
//! its signature and lifetime hold. The byte layout is documented in `docs/HEALTHCARD.md`.

mod base32;
pub mod payload;
pub mod qr;

pub use payload::{Claims, CodeError, DynamicCode, Payload, StaticCode};

/// How long a dynamic code lives by default (seconds).
pub const DEFAULT_CODE_LIFETIME: u16 = 60;

/// How far a verifier's clock may run behind the issuer's before a code counts as not yet
/// valid (seconds).
pub const CLOCK_SKEW_SECONDS: i64 = 30;

/// A card id: 64 lower-case hex characters (256 bits), as the public integrations use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CardId(String);

/// Domain separation of card-id derivation, so the digest is never equal to another use of
/// the same keyed MAC.
const CARD_ID_DOMAIN: &[u8] = b"hutong/health-card-id/v1";

impl CardId {
    /// Derives a card id from a platform-secret keyed MAC of the holder's ID number and the
    /// issue counter (the engine passes `KeyRing::blind_index("health-card", "<id>#<n>")`):
    /// `hex(SM3(domain ‖ mac))`. Without the platform secret the ID number cannot be derived
    /// from, or tested against, a card id; re-issuing (counter + 1) gives an unrelated id.
    pub fn derive(keyed_mac: &[u8]) -> CardId {
        let mut input = CARD_ID_DOMAIN.to_vec();
        input.extend_from_slice(keyed_mac);
        CardId(crypto::sm3::sm3_hex(&input))
    }

    /// Accepts 64 hex characters (either case; kept lower-case).
    pub fn parse(text: &str) -> Result<CardId, CodeError> {
        if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(CardId(text.to_ascii_lowercase()))
        } else {
            Err(CodeError::Malformed(format!("a card id is 64 hex characters, got {} characters", text.len())))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn to_bytes(&self) -> [u8; 32] {
        let bytes = crypto::unhex(&self.0).expect("a CardId holds 64 hex characters");
        bytes.try_into().expect("a CardId is 32 bytes")
    }

    fn from_bytes(bytes: &[u8]) -> CardId {
        CardId(crypto::hex(bytes))
    }
}

impl std::fmt::Display for CardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_ids_are_64_hex_and_depend_on_the_mac() {
        let a = CardId::derive(b"mac-one");
        let b = CardId::derive(b"mac-two");
        assert_eq!(a.as_str().len(), 64);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert_eq!(CardId::parse(&a.as_str().to_uppercase()).unwrap(), a);
        assert!(CardId::parse("abc").is_err());
        assert!(CardId::parse(&"g".repeat(64)).is_err());
        assert_eq!(CardId::from_bytes(&a.to_bytes()), a);
    }
}
