//! The two QR payloads and their offline verification.
//!
//! - Static code, as the public integrations print it: `<card id>:1::<issuer code>`. It proves
//!   nothing by itself (anyone can copy it), so a terminal must check a PIN or an SMS code at
//!   use; [`verify_offline`] answers [`CodeError::StaticCodeNeedsCheck`].
//! - Dynamic code (flag 0 in the integrations' terms): `HC1:` + base32 of a fixed binary layout
//!   ending in a 64-byte SM2 signature (`r ‖ s`) by the platform over `"HC1" ‖ body`. The body
//!   is versioned (first byte) and has exactly one encoding for given claims, so what is signed
//!   is what is read. Layout, byte by byte, in `docs/HEALTHCARD.md`.

use crate::{CLOCK_SKEW_SECONDS, CardId, base32};
use crypto::sm2::{Sm2SigningKey, Sm2VerifyingKey};

/// Prefix of a dynamic code: scheme and layout version 1.
pub const DYNAMIC_PREFIX: &str = "HC1:";
/// Layout version in the first body byte.
const VERSION: u8 = 1;
const SIGNATURE_DOMAIN: &[u8] = b"HC1";
const FLAG_INSURANCE: u8 = 0b01;
const FLAG_PAYMENT: u8 = 0b10;
const SIGNATURE_LEN: usize = 64;
/// Longest issuer code and 三码融合 token (bytes), so a code always fits a scannable QR.
pub const MAX_ISSUER_LEN: usize = 32;
pub const MAX_TOKEN_LEN: usize = 64;

/// Why a code is not accepted. Each message says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("the health card code is malformed: {0}")]
    Malformed(String),
    #[error(
        "the health card code was signed with key '{key_id}', which this verifier does not know: refresh the platform's public keys"
    )]
    UnknownKey { key_id: String },
    #[error("the health card code's signature does not verify: the code was altered or not issued by this platform")]
    BadSignature,
    #[error("the health card code expired at {expires_at} (now {now}): ask the holder to refresh the code")]
    Expired { expires_at: i64, now: i64 },
    #[error("the health card code is issued at {issued_at}, later than now ({now}): check the terminal's clock")]
    NotYetValid { issued_at: i64, now: i64 },
    #[error("card {card_id} shows its static code: confirm the holder with a PIN or SMS code before use")]
    StaticCodeNeedsCheck { card_id: String, issuer: String },
}

impl CodeError {
    /// A stable short name for audit records and API errors.
    pub fn reason(&self) -> &'static str {
        match self {
            CodeError::Malformed(_) => "malformed",
            CodeError::UnknownKey { .. } => "unknown-key",
            CodeError::BadSignature => "bad-signature",
            CodeError::Expired { .. } => "expired",
            CodeError::NotYetValid { .. } => "not-yet-valid",
            CodeError::StaticCodeNeedsCheck { .. } => "static-code-needs-check",
        }
    }
}

/// The static code `<card id>:1::<issuer code>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCode {
    pub card_id: CardId,
    pub issuer: String,
}

impl StaticCode {
    pub fn encode(&self) -> String {
        format!("{}:1::{}", self.card_id, self.issuer)
    }
}

/// What a dynamic code says, once its signature is checked (or before, when built to issue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub card_id: CardId,
    /// The issuing platform's code (e.g. a GB/T 2260 division or an institution code).
    pub issuer: String,
    /// 32 hex characters, random per code: the unit of single use.
    pub code_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
    /// The platform SM2 key id (16 hex characters, `KeyRing::signing_key_id`).
    pub key_id: String,
    /// 三码融合: a reference to the holder's insurance e-voucher (医保电子凭证) token.
    pub insurance_token: Option<String>,
    /// 三码融合: a reference to a payment token of the payment network.
    pub payment_token: Option<String>,
}

/// A dynamic code to issue: the claims minus what issuing assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicCode {
    pub card_id: CardId,
    pub issuer: String,
    pub issued_at: i64,
    /// Seconds, at least 1.
    pub lifetime: u16,
    pub insurance_token: Option<String>,
    pub payment_token: Option<String>,
}

impl DynamicCode {
    /// Signs the code with the platform key (whose id is `key_id`) and a fresh random code id;
    /// returns the payload text and its claims.
    pub fn issue(&self, key: &Sm2SigningKey, key_id: &str) -> Result<(String, Claims), CodeError> {
        let code_id: [u8; 16] = crypto::random_bytes(16).try_into().expect("16 random bytes");
        self.issue_with_code_id(key, key_id, code_id)
    }

    fn issue_with_code_id(
        &self,
        key: &Sm2SigningKey,
        key_id: &str,
        code_id: [u8; 16],
    ) -> Result<(String, Claims), CodeError> {
        if self.lifetime == 0 {
            return Err(CodeError::Malformed("a dynamic code's lifetime is at least one second".into()));
        }
        let claims = Claims {
            card_id: self.card_id.clone(),
            issuer: self.issuer.clone(),
            code_id: crypto::hex(&code_id),
            issued_at: self.issued_at,
            expires_at: self.issued_at + i64::from(self.lifetime),
            key_id: key_id.to_string(),
            insurance_token: self.insurance_token.clone(),
            payment_token: self.payment_token.clone(),
        };
        let mut body = encode_body(&claims, self.lifetime)?;
        let signature = key.sign(&signed_message(&body));
        body.extend_from_slice(&signature);
        Ok((format!("{DYNAMIC_PREFIX}{}", base32::encode(&body)), claims))
    }
}

/// A payload as read from a QR code, before any check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Static(StaticCode),
    /// The claims as written, the signed bytes and the signature.
    Dynamic {
        claims: Claims,
        signed: Vec<u8>,
        signature: Vec<u8>,
    },
}

impl Payload {
    pub fn parse(text: &str) -> Result<Payload, CodeError> {
        let text = text.trim();
        if let Some(encoded) = text.strip_prefix(DYNAMIC_PREFIX) {
            return parse_dynamic(encoded);
        }
        let Some((card, rest)) = text.split_once(':') else {
            return Err(CodeError::Malformed(format!("expected '{DYNAMIC_PREFIX}…' or '<card id>:1::<issuer code>'")));
        };
        let card_id = CardId::parse(card)?;
        match rest.split_once("::") {
            Some(("1", issuer)) => Ok(Payload::Static(StaticCode { card_id, issuer: check_issuer(issuer)?.into() })),
            Some(("0", _)) => Err(CodeError::Malformed(format!(
                "an unsigned dynamic code is not accepted: dynamic codes of this platform start with '{DYNAMIC_PREFIX}'"
            ))),
            _ => Err(CodeError::Malformed("a static code is '<card id>:1::<issuer code>'".into())),
        }
    }
}

/// Checks a payload without the network: its form, the signature under the key its id names
/// (`public_key` finds current and retired keys, so a code signed before a rotation verifies
/// within its lifetime), and its lifetime at `now` (Unix seconds, with
/// [`CLOCK_SKEW_SECONDS`] of tolerance for a verifier clock running behind). Replays are the
/// online verifier's business: this function cannot remember code ids.
pub fn verify_offline(
    payload: &str,
    public_key: impl Fn(&str) -> Option<Sm2VerifyingKey>,
    now: i64,
) -> Result<Claims, CodeError> {
    match Payload::parse(payload)? {
        Payload::Static(code) => {
            Err(CodeError::StaticCodeNeedsCheck { card_id: code.card_id.to_string(), issuer: code.issuer })
        }
        Payload::Dynamic { claims, signed, signature } => {
            let key =
                public_key(&claims.key_id).ok_or_else(|| CodeError::UnknownKey { key_id: claims.key_id.clone() })?;
            key.verify(&signed_message(&signed), &signature).map_err(|_| CodeError::BadSignature)?;
            if claims.issued_at > now + CLOCK_SKEW_SECONDS {
                return Err(CodeError::NotYetValid { issued_at: claims.issued_at, now });
            }
            if now >= claims.expires_at {
                return Err(CodeError::Expired { expires_at: claims.expires_at, now });
            }
            Ok(claims)
        }
    }
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = SIGNATURE_DOMAIN.to_vec();
    message.extend_from_slice(body);
    message
}

fn check_issuer(issuer: &str) -> Result<&str, CodeError> {
    if issuer.is_empty() || issuer.len() > MAX_ISSUER_LEN || !issuer.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(CodeError::Malformed(format!(
            "an issuer code is 1 to {MAX_ISSUER_LEN} ASCII letters or digits, got {issuer:?}"
        )));
    }
    Ok(issuer)
}

fn check_token<'a>(name: &str, token: &'a str) -> Result<&'a str, CodeError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CodeError::Malformed(format!(
            "the {name} token is 1 to {MAX_TOKEN_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(token)
}

fn encode_body(claims: &Claims, lifetime: u16) -> Result<Vec<u8>, CodeError> {
    let issued_at = u32::try_from(claims.issued_at)
        .map_err(|_| CodeError::Malformed("issued-at must lie between 1970 and 2106".into()))?;
    let key_id: [u8; 8] = crypto::unhex(&claims.key_id)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| CodeError::Malformed(format!("a key id is 16 hex characters, got {:?}", claims.key_id)))?;
    let issuer = check_issuer(&claims.issuer)?;
    let insurance = claims.insurance_token.as_deref().map(|t| check_token("insurance e-voucher", t)).transpose()?;
    let payment = claims.payment_token.as_deref().map(|t| check_token("payment", t)).transpose()?;
    let flags = if insurance.is_some() { FLAG_INSURANCE } else { 0 } | if payment.is_some() { FLAG_PAYMENT } else { 0 };

    let mut body = Vec::with_capacity(128);
    body.push(VERSION);
    body.push(flags);
    body.extend_from_slice(&claims.card_id.to_bytes());
    body.extend_from_slice(&crypto::unhex(&claims.code_id).expect("code ids are hex"));
    body.extend_from_slice(&issued_at.to_be_bytes());
    body.extend_from_slice(&lifetime.to_be_bytes());
    body.extend_from_slice(&key_id);
    for text in [Some(issuer), insurance, payment].into_iter().flatten() {
        body.push(text.len() as u8);
        body.extend_from_slice(text.as_bytes());
    }
    Ok(body)
}

/// Reads the fixed layout; every length is checked before use.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodeError> {
        if self.0.len() < n {
            return Err(CodeError::Malformed(format!("the code ends inside its {what}")));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn text(&mut self, what: &str) -> Result<&'a str, CodeError> {
        let len = self.take(1, what)?[0] as usize;
        std::str::from_utf8(self.take(len, what)?).map_err(|_| CodeError::Malformed(format!("the {what} is not text")))
    }
}

fn parse_dynamic(encoded: &str) -> Result<Payload, CodeError> {
    let bytes = base32::decode(encoded)
        .ok_or_else(|| CodeError::Malformed(format!("after '{DYNAMIC_PREFIX}' comes base32 (A–Z, 2–7)")))?;
    if bytes.len() < SIGNATURE_LEN {
        return Err(CodeError::Malformed("the code is too short to carry a signature".into()));
    }
    let (signed, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    let mut reader = Reader(signed);
    let version = reader.take(1, "version")?[0];
    if version != VERSION {
        return Err(CodeError::Malformed(format!("layout version {version} is not supported (expected {VERSION})")));
    }
    let flags = reader.take(1, "flags")?[0];
    if flags & !(FLAG_INSURANCE | FLAG_PAYMENT) != 0 {
        return Err(CodeError::Malformed(format!("unknown flags {flags:#04x}")));
    }
    let card_id = CardId::from_bytes(reader.take(32, "card id")?);
    let code_id = crypto::hex(reader.take(16, "code id")?);
    let issued_at = i64::from(u32::from_be_bytes(reader.take(4, "issued-at")?.try_into().expect("4 bytes")));
    let lifetime = u16::from_be_bytes(reader.take(2, "lifetime")?.try_into().expect("2 bytes"));
    let key_id = crypto::hex(reader.take(8, "key id")?);
    let issuer = check_issuer(reader.text("issuer code")?)?.to_string();
    let mut token = |flag: u8, name: &str| -> Result<Option<String>, CodeError> {
        if flags & flag == 0 {
            return Ok(None);
        }
        Ok(Some(check_token(name, reader.text(name)?)?.to_string()))
    };
    let insurance_token = token(FLAG_INSURANCE, "insurance e-voucher")?;
    let payment_token = token(FLAG_PAYMENT, "payment")?;
    if !reader.0.is_empty() {
        return Err(CodeError::Malformed(format!("{} unexpected bytes before the signature", reader.0.len())));
    }
    if lifetime == 0 {
        return Err(CodeError::Malformed("a dynamic code's lifetime is at least one second".into()));
    }
    let claims = Claims {
        card_id,
        issuer,
        code_id,
        issued_at,
        expires_at: issued_at + i64::from(lifetime),
        key_id,
        insurance_token,
        payment_token,
    };
    Ok(Payload::Dynamic { claims, signed: signed.to_vec(), signature: signature.to_vec() })
}

#[cfg(test)]
mod tests;
