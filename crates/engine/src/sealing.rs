//! Sensitive identifiers sealed at rest: a [`ResourceStore`] wrapper that encrypts ID numbers
//! and phone numbers inside person resources before they reach the database, makes them
//! searchable through a keyed blind index, and opens them again on the way out, so every
//! interaction above it (reads, searches, includes, history, `$everything`, `$export`,
//! conditional writes, `$match`) sees clear values and the database never holds them.
//!
//! What is sealed, in Patient, RelatedPerson, Person and Practitioner: an `identifier` whose
//! value is a valid GB 11643 ID number (whatever its system), and a `telecom` of system `phone`
//! or `sms`. In the stored JSON the value becomes a mask (`110***********0038`) and the element
//! gets the extension [`SEALED_EXTENSION`] holding the SM4-GCM ciphertext (the key ring's active
//! SM4 key, its id in the text, so rotated keys keep opening old data). Their token index rows
//! hold `bi:` + the HMAC-SM3 blind index of the normalized value instead of the value, and a
//! search for such a value (plain or `system|value`, also through chains and `_has`) is
//! rewritten to the same blind token. Partial matches (`:contains`, `:text`, sorting) on sealed
//! values cannot work and find nothing.

use std::sync::Arc;

use async_trait::async_trait;
use crypto::KeyRing;
use fhir::index::{IndexEntry, IndexValue};
use fhir::search::{Criterion, ParamValue, SearchQuery};
use serde_json::{Value, json};
use store::{
    AuditCheckpoint, AuditEntry, AuditRecord, Ctx, HistoryQuery, OutboxEvent, Page, ResourceStore, StoreError,
    StoreResult, StoredResource, WriteOp,
};

/// The extension on a sealed `Identifier` or `ContactPoint` carrying the ciphertext.
pub const SEALED_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/sealed-value";

const SEALED_TYPES: &[&str] = &["Patient", "RelatedPerson", "Person", "Practitioner"];

/// The key ring in use (a function, so a server that reloads rotated keys seals with the new
/// ones at once).
pub type Keys = Arc<dyn Fn() -> Arc<KeyRing> + Send + Sync>;

pub struct SealingStore {
    inner: Arc<dyn ResourceStore>,
    keys: Keys,
}

impl SealingStore {
    pub fn new(inner: Arc<dyn ResourceStore>, keys: Keys) -> Self {
        SealingStore { inner, keys }
    }
}

/// The canonical form of an ID number, if `value` is a valid one.
fn id_number(value: &str) -> Option<String> {
    let v = value.trim();
    if v.len() != 18 && v.len() != 15 {
        return None;
    }
    crypto::idnum::normalize(v).ok().map(|n| n.as_str().to_string())
}

/// The digits of a phone number (a mainland mobile number without its country code).
fn phone_digits(value: &str) -> Option<String> {
    let d: String = value.chars().filter(char::is_ascii_digit).collect();
    let d = match d.strip_prefix("86") {
        Some(rest) if rest.len() == 11 => rest.to_string(),
        _ => d,
    };
    (d.len() >= 5).then_some(d)
}

fn blind(keys: &KeyRing, domain: &str, normalized: &str) -> String {
    format!("bi:{}", keys.blind_index(domain, normalized))
}

fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 7 {
        return "*".repeat(chars.len());
    }
    let keep = if chars.len() >= 15 { 3 } else { 3.min(chars.len() / 4) };
    let head: String = chars[..keep].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - keep - 4))
}

/// What sealing one element yields: the blind token its index rows get.
enum Sealed {
    Id { clear: String, token: String },
    Phone { clear: String, token: String },
}

/// Seals the sensitive elements of a resource in place; returns the sealed values.
fn seal_resource(keys: &KeyRing, resource: &mut Value) -> Vec<Sealed> {
    let mut sealed = Vec::new();
    if let Some(ids) = resource.get_mut("identifier").and_then(Value::as_array_mut) {
        for i in ids {
            let Some(value) = i["value"].as_str().map(str::to_string) else { continue };
            let Some(canonical) = id_number(&value) else { continue };
            let token = blind(keys, "fhir-id", &canonical);
            seal_element(keys, i, &value, "fhir.identifier");
            sealed.push(Sealed::Id { clear: value, token });
        }
    }
    if let Some(telecoms) = resource.get_mut("telecom").and_then(Value::as_array_mut) {
        for t in telecoms {
            if !matches!(t["system"].as_str(), Some("phone") | Some("sms")) {
                continue;
            }
            let Some(value) = t["value"].as_str().map(str::to_string) else { continue };
            let Some(digits) = phone_digits(&value) else { continue };
            let token = blind(keys, "fhir-phone", &digits);
            seal_element(keys, t, &value, "fhir.telecom");
            sealed.push(Sealed::Phone { clear: value, token });
        }
    }
    sealed
}

fn seal_element(keys: &KeyRing, element: &mut Value, value: &str, context: &str) {
    let cipher = keys.encrypt_field(value, context);
    element["value"] = Value::String(mask(value));
    let ext = json!({"url": SEALED_EXTENSION, "valueString": cipher});
    match element.get_mut("extension").and_then(Value::as_array_mut) {
        Some(list) => list.push(ext),
        None => element["extension"] = json!([ext]),
    }
}

/// Opens the sealed elements of a resource in place. A value that cannot be opened (a missing
/// key) stays masked and is logged: never an error that hides the rest of the record.
fn unseal_resource(keys: &KeyRing, resource: &mut Value) {
    for (field, context) in [("identifier", "fhir.identifier"), ("telecom", "fhir.telecom")] {
        let Some(list) = resource.get_mut(field).and_then(Value::as_array_mut) else { continue };
        for element in list {
            let Some(exts) = element.get_mut("extension").and_then(Value::as_array_mut) else { continue };
            let Some(pos) = exts.iter().position(|x| x["url"] == SEALED_EXTENSION) else { continue };
            let cipher = exts[pos]["valueString"].as_str().unwrap_or_default().to_string();
            match keys.decrypt_field(&cipher, context) {
                Ok(clear) => {
                    exts.remove(pos);
                    let empty = exts.is_empty();
                    element["value"] = Value::String(clear);
                    if empty && let Some(o) = element.as_object_mut() {
                        o.remove("extension");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "a sealed value could not be opened (is its SM4 key in the key ring?)")
                }
            }
        }
    }
}

impl SealingStore {
    fn seal_op(&self, keys: &KeyRing, op: &mut WriteOp) -> StoreResult<()> {
        if !SEALED_TYPES.contains(&op.resource_type.as_str()) {
            return Ok(());
        }
        let Some(text) = &op.body else { return Ok(()) };
        let mut resource: Value =
            serde_json::from_str(text).map_err(|e| StoreError::Backend(format!("sealing: stored JSON: {e}")))?;
        let sealed = seal_resource(keys, &mut resource);
        if sealed.is_empty() {
            return Ok(());
        }
        op.body = Some(resource.to_string());
        for entry in &mut op.index {
            reindex(entry, &sealed);
        }
        Ok(())
    }

    fn open(&self, keys: &KeyRing, r: &mut StoredResource) {
        if !SEALED_TYPES.contains(&r.resource_type.as_str()) {
            return;
        }
        let Some(text) = &r.body else { return };
        if !text.contains(SEALED_EXTENSION) {
            return;
        }
        let Ok(mut resource) = serde_json::from_str::<Value>(text) else { return };
        unseal_resource(keys, &mut resource);
        r.body = Some(resource.to_string());
    }

    fn open_all(&self, resources: &mut [StoredResource]) {
        if resources.iter().any(|r| SEALED_TYPES.contains(&r.resource_type.as_str())) {
            let keys = (self.keys)();
            for r in resources {
                self.open(&keys, r);
            }
        }
    }

    fn rewrite_query(&self, query: &SearchQuery) -> SearchQuery {
        let mut q = query.clone();
        let keys = (self.keys)();
        let root: Vec<String> = match &q.resource_type {
            Some(t) => vec![t.clone()],
            None => q.types.clone(),
        };
        for c in &mut q.criteria {
            rewrite_criterion(&keys, c, &root);
        }
        q
    }
}

/// Index rows of sealed values: the clear code becomes the blind token.
fn reindex(entry: &mut IndexEntry, sealed: &[Sealed]) {
    let IndexValue::Token { code: Some(code), text, .. } = &mut entry.value else { return };
    for s in sealed {
        let (clear, token, is_phone) = match s {
            Sealed::Id { clear, token } => (clear, token, false),
            Sealed::Phone { clear, token } => (clear, token, true),
        };
        let same = if is_phone {
            phone_digits(code).is_some() && phone_digits(code) == phone_digits(clear)
        } else {
            code.eq_ignore_ascii_case(clear) || id_number(code).is_some() && id_number(code) == id_number(clear)
        };
        if same {
            *code = token.clone();
            *text = None;
            return;
        }
    }
}

const SEALED_PARAMS: &[&str] = &["identifier", "phone", "telecom"];

fn rewrite_criterion(keys: &KeyRing, c: &mut Criterion, types: &[String]) {
    let sealed_type = types.is_empty() || types.iter().any(|t| SEALED_TYPES.contains(&t.as_str()));
    match c {
        Criterion::Param { param, modifier, values } => {
            if !sealed_type || modifier.is_some() || !SEALED_PARAMS.contains(&param.code.as_str()) {
                return;
            }
            let mut extra = Vec::new();
            for v in values.iter_mut() {
                let ParamValue::Token { system, code: Some(code) } = v else { continue };
                let system_text = system.as_ref().and_then(|s| s.as_deref()).unwrap_or("");
                let token = if param.code == "identifier" {
                    id_number(code).map(|n| blind(keys, "fhir-id", &n))
                } else if param.code == "phone" || matches!(system_text, "phone" | "sms") {
                    phone_digits(code).map(|d| blind(keys, "fhir-phone", &d))
                } else if system_text.is_empty() {
                    // `telecom=value` without a system: the value may be a phone (sealed) or an
                    // e-mail address (clear); look for both.
                    if let Some(d) = phone_digits(code) {
                        extra.push(ParamValue::Token {
                            system: system.clone(),
                            code: Some(blind(keys, "fhir-phone", &d)),
                        });
                    }
                    None
                } else {
                    None
                };
                if let Some(t) = token {
                    *code = t;
                }
            }
            values.extend(extra);
        }
        Criterion::Missing { .. } => {}
        Criterion::Chain { target_types, criterion, .. } => rewrite_criterion(keys, criterion, target_types),
        Criterion::Has { source_type, criterion, .. } => {
            rewrite_criterion(keys, criterion, std::slice::from_ref(source_type))
        }
    }
}

#[async_trait]
impl ResourceStore for SealingStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn commit_audited(&self, ctx: &Ctx, mut ops: Vec<WriteOp>, audit: Vec<AuditRecord>) -> StoreResult<()> {
        if ops.iter().any(|op| SEALED_TYPES.contains(&op.resource_type.as_str())) {
            let keys = (self.keys)();
            for op in &mut ops {
                self.seal_op(&keys, op)?;
            }
        }
        self.inner.commit_audited(ctx, ops, audit).await
    }

    async fn audit_read(&self, after: i64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        self.inner.audit_read(after, limit).await
    }

    async fn audit_for_patient(&self, patient_id: &str, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        self.inner.audit_for_patient(patient_id, limit).await
    }

    async fn audit_head(&self) -> StoreResult<(i64, String)> {
        self.inner.audit_head().await
    }

    async fn audit_checkpoint_put(&self, checkpoint: &AuditCheckpoint) -> StoreResult<()> {
        self.inner.audit_checkpoint_put(checkpoint).await
    }

    async fn audit_checkpoints(&self) -> StoreResult<Vec<AuditCheckpoint>> {
        self.inner.audit_checkpoints().await
    }

    async fn audit_prune(&self, through_seq: i64) -> StoreResult<u64> {
        self.inner.audit_prune(through_seq).await
    }

    async fn kv_put(&self, kind: &str, id: &str, body: &str, lookups: &[String]) -> StoreResult<()> {
        self.inner.kv_put(kind, id, body, lookups).await
    }

    async fn kv_put_audited(
        &self,
        kind: &str,
        id: &str,
        body: &str,
        lookups: &[String],
        audit: Vec<AuditRecord>,
    ) -> StoreResult<()> {
        self.inner.kv_put_audited(kind, id, body, lookups, audit).await
    }

    async fn kv_get(&self, kind: &str, id: &str) -> StoreResult<Option<String>> {
        self.inner.kv_get(kind, id).await
    }

    async fn kv_find(&self, kind: &str, lookup: &str) -> StoreResult<Option<(String, String)>> {
        self.inner.kv_find(kind, lookup).await
    }

    async fn kv_delete(&self, kind: &str, id: &str) -> StoreResult<bool> {
        self.inner.kv_delete(kind, id).await
    }

    async fn kv_list(&self, kind: &str, after: &str, limit: usize) -> StoreResult<Vec<(String, String)>> {
        self.inner.kv_list(kind, after, limit).await
    }

    async fn current_versions(&self, ctx: &Ctx, keys: &[(String, String)]) -> StoreResult<Vec<Option<(i64, bool)>>> {
        self.inner.current_versions(ctx, keys).await
    }

    async fn read(&self, ctx: &Ctx, resource_type: &str, id: &str) -> StoreResult<Option<StoredResource>> {
        let mut r = self.inner.read(ctx, resource_type, id).await?;
        if let Some(r) = r.as_mut() {
            self.open_all(std::slice::from_mut(r));
        }
        Ok(r)
    }

    async fn read_many(&self, ctx: &Ctx, keys: &[(String, String)]) -> StoreResult<Vec<StoredResource>> {
        let mut rs = self.inner.read_many(ctx, keys).await?;
        self.open_all(&mut rs);
        Ok(rs)
    }

    async fn vread(
        &self,
        ctx: &Ctx,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> StoreResult<Option<StoredResource>> {
        let mut r = self.inner.vread(ctx, resource_type, id, version).await?;
        if let Some(r) = r.as_mut() {
            self.open_all(std::slice::from_mut(r));
        }
        Ok(r)
    }

    async fn history(&self, ctx: &Ctx, query: &HistoryQuery) -> StoreResult<Page> {
        let mut page = self.inner.history(ctx, query).await?;
        self.open_all(&mut page.resources);
        Ok(page)
    }

    async fn search(&self, ctx: &Ctx, query: &SearchQuery) -> StoreResult<Page> {
        let query = self.rewrite_query(query);
        let mut page = self.inner.search(ctx, &query).await?;
        self.open_all(&mut page.resources);
        Ok(page)
    }

    async fn patient_compartment(
        &self,
        ctx: &Ctx,
        patient_id: &str,
        since: Option<i64>,
        types: &[String],
    ) -> StoreResult<Vec<StoredResource>> {
        let mut rs = self.inner.patient_compartment(ctx, patient_id, since, types).await?;
        self.open_all(&mut rs);
        Ok(rs)
    }

    async fn outbox_read(&self, after: i64, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        self.inner.outbox_read(after, limit).await
    }

    async fn cursor_get(&self, consumer: &str) -> StoreResult<i64> {
        self.inner.cursor_get(consumer).await
    }

    async fn cursor_set(&self, consumer: &str, position: i64) -> StoreResult<()> {
        self.inner.cursor_set(consumer, position).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips_and_masks() {
        let keys = KeyRing::ephemeral();
        let mut p = json!({"resourceType": "Patient",
            "identifier": [{"system": "urn:x:mrn", "value": "A1"}, {"system": "urn:oid:2.16.156.10011.1.3", "value": "110105198001020038"}],
            "telecom": [{"system": "email", "value": "a@b.cn"}, {"system": "phone", "value": "13800138000"}]});
        let clear = p.clone();
        let sealed = seal_resource(&keys, &mut p);
        assert_eq!(sealed.len(), 2);
        let text = p.to_string();
        assert!(!text.contains("110105198001020038") && !text.contains("13800138000"), "{text}");
        assert!(text.contains("110***********0038") && text.contains("A1") && text.contains("a@b.cn"), "{text}");
        unseal_resource(&keys, &mut p);
        assert_eq!(p, clear);
        // Another key ring cannot open it: the value stays masked.
        let mut again = clear.clone();
        seal_resource(&keys, &mut again);
        unseal_resource(&KeyRing::ephemeral(), &mut again);
        assert_eq!(again["identifier"][1]["value"], "110***********0038");
    }
}
