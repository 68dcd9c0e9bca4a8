//! The canonical form of a prescription and its SM2 signatures.
//!
//! The signed content is a JSON object (built by the engine from the stored MedicationRequests:
//! prescription number, patient, encounter, prescriber, date, validity, every drug line, the
//! override reasons). Its canonical form is that JSON with object members sorted by key,
//! recursively, no insignificant whitespace, strings and numbers exactly as serde_json writes
//! them (so verification anywhere re-creates the same bytes from the same content). The doctor
//! signs the canonical bytes; the pharmacist signs the canonical bytes of
//! `{"prescription": <content>, "doctorSignature": <signature>, "decision": "approve"}`, so an
//! approval covers exactly the signed prescription. Signatures are SM2 with the default
//! distinguishing id (GB/T 35276), 64 bytes `r ‖ s`, base64url.

use crypto::sm2::{Sm2SigningKey, Sm2VerifyingKey};
use serde_json::Value;

/// Canonical bytes of `value` (sorted keys, compact).
pub fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(Value::String((*k).clone()).to_string().into_bytes());
                out.push(b':');
                write(&map[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(v, out);
            }
            out.push(b']');
        }
        other => out.extend(other.to_string().into_bytes()),
    }
}

/// SM3 of the canonical form, hex (shown to people and stored next to the signature).
pub fn digest(value: &Value) -> String {
    crypto::sm3::sm3_hex(&canonical(value))
}

/// Signs the canonical form; base64url of `r ‖ s`.
pub fn sign(key: &Sm2SigningKey, value: &Value) -> String {
    crypto::base64url(&key.sign(&canonical(value)))
}

/// Verifies a signature made by [`sign`] over the same content.
pub fn verify(key: &Sm2VerifyingKey, value: &Value, signature: &str) -> Result<(), String> {
    let bytes = crypto::unbase64url(signature).map_err(|_| "the signature is not base64url".to_string())?;
    key.verify(&canonical(value), &bytes).map_err(|_| "the signature does not match the prescription".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn member_order_does_not_change_the_canonical_form() {
        let a = json!({"b": 1, "a": {"y": [1, "二"], "x": null}});
        let b = json!({"a": {"x": null, "y": [1, "二"]}, "b": 1});
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(String::from_utf8(canonical(&a)).unwrap(), r#"{"a":{"x":null,"y":[1,"二"]},"b":1}"#);
    }

    #[test]
    fn a_signature_covers_every_byte_of_the_content() {
        let key = Sm2SigningKey::generate();
        let rx = json!({"number": "RX1", "items": [{"drug": "D0001", "doseMg": 30, "timesPerDay": 1, "days": 7}]});
        let signature = sign(&key, &rx);
        assert!(verify(&key.public(), &rx, &signature).is_ok());
        let mut altered = rx.clone();
        altered["items"][0]["days"] = json!(8);
        assert!(verify(&key.public(), &altered, &signature).is_err());
        let other = Sm2SigningKey::generate();
        assert!(verify(&other.public(), &rx, &signature).is_err());
        assert!(verify(&key.public(), &rx, "!!").is_err());
    }
}
