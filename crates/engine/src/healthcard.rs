//! The electronic health card service (issue 6): registration for real-name-verified residents,
//! dynamic codes, online verification with single use, query, suspension and closing, and
//! use events by care-step code. The payloads themselves are the `healthcard` crate's.
//!
//! Storage: a card is a security object of kind [`CARD_KIND`] (id = the card id, JSON
//! [`HealthCard`]) with the unique lookup `patient:<Patient id>` while it is not closed, so a
//! patient holds at most one open card and the store arbitrates concurrent registrations. A
//! card is an identity credential, not clinical content, like the accounts beside it; it never
//! carries the ID number. Each accepted code id is a security object of kind [`USED_CODE_KIND`]
//! with the unique lookup `code:<code id>`: the insert is the atomic "first use" test, so a
//! replay fails even when two terminals race. Used code ids are kept until their code expires
//! (plus the clock skew) and pruned oldest-first in batches, at most once a second while
//! there is no backlog.
//!
//! Every call, allowed or refused, accepted or rejected, is appended to the audit log before
//! it is answered (action `healthcard-*`, entity `HealthCard/<card id>`, the Patient named so
//! it shows in "who accessed my record"; care-step code and terminal in the reason).

use crate::audit;
use crate::mpi::ID_NUMBER_SYSTEM;
use crate::{Engine, EngineError, EngineResult};
use access::Role;
use crypto::KeyRing;
use fhir::{Issue, IssueType};
use healthcard::{CardId, Claims, CodeError, DynamicCode, StaticCode};
use serde::{Deserialize, Serialize};
use store::{Ctx, StoreError};

pub const CARD_KIND: &str = "healthcard";
pub const USED_CODE_KIND: &str = "healthcard-code";
/// A child below this age gets a card through a guardian.
const GUARDIAN_AGE: i32 = 14;

/// Settings of the card service (`EngineConfig::health_card`).
#[derive(Debug, Clone)]
pub struct HealthCardConfig {
    /// The issuer code written into codes (the platform's division or institution code).
    pub issuer: String,
    /// Lifetime of a dynamic code, seconds.
    pub code_lifetime: u16,
}

impl Default for HealthCardConfig {
    fn default() -> Self {
        HealthCardConfig { issuer: "350000".into(), code_lifetime: healthcard::DEFAULT_CODE_LIFETIME }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CardStatus {
    Active,
    Suspended,
    Closed,
}

impl CardStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CardStatus::Active => "active",
            CardStatus::Suspended => "suspended",
            CardStatus::Closed => "closed",
        }
    }
}

/// A card as stored and as answered (JSON members in camelCase, like the rest of the API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCard {
    pub card_id: String,
    /// The holder's Patient id.
    pub patient: String,
    pub issuer: String,
    pub status: CardStatus,
    /// `self` or `guardian` (registered by a guardian for a child under 14).
    pub registered_by: String,
    /// Unix seconds.
    pub created: i64,
    pub updated: i64,
    /// The static code `<card id>:1::<issuer>`.
    pub static_code: String,
}

/// A card as stored: the card and the keyed hash of its holder's ID number
/// (`KeyRing::blind_index("health-card-holder", …)`), the unique lookup that gives one open card
/// per person even when the person has several Patient records. Never answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredCard {
    #[serde(flatten)]
    card: HealthCard,
    holder: String,
}

/// A freshly issued dynamic code.
#[derive(Debug, Clone)]
pub struct IssuedCode {
    pub payload: String,
    pub claims: Claims,
}

/// An accepted online verification.
#[derive(Debug, Clone)]
pub struct Verification {
    pub claims: Claims,
    pub card: HealthCard,
    pub care_step: String,
    pub terminal: String,
}

/// The care-step ("scene") codes of the public integrations this platform names; any other
/// 7-digit code is accepted and recorded as given.
pub const CARE_STEPS: [(&str, &str); 5] = [
    ("0101011", "appointment"),
    ("0101012", "same-day registration"),
    ("0101051", "outpatient payment"),
    ("0101081", "lab report query"),
    ("0101082", "exam report query"),
];

/// `care step 0101011 (appointment) at terminal T-01`, for audit reasons.
fn care_step_text(care_step: &str, terminal: &str) -> String {
    let name = CARE_STEPS.iter().find(|(code, _)| *code == care_step).map_or("unlisted", |(_, name)| *name);
    format!("care step {care_step} ({name}) at terminal {terminal}")
}

fn now_seconds() -> i64 {
    crate::crud::now_ms() / 1000
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::Unprocessable(vec![Issue::error(IssueType::Invalid, message)])
}

fn conflict(message: impl Into<String>) -> EngineError {
    EngineError::Conflict { message: message.into(), precondition: false }
}

fn check_care_step(code: &str) -> EngineResult<()> {
    if code.len() == 7 && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(EngineError::BadRequest(vec![Issue::error(
            IssueType::Value,
            format!("a care-step code is 7 digits (e.g. 0101011 appointment), got {code:?}"),
        )]))
    }
}

fn check_terminal(terminal: &str) -> EngineResult<()> {
    if terminal.is_empty() || terminal.len() > 64 || !terminal.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(EngineError::BadRequest(vec![Issue::error(
            IssueType::Value,
            "a terminal id is 1 to 64 printable ASCII characters without spaces",
        )]));
    }
    Ok(())
}

/// Age in whole years on `today` of someone born on `birth` (both `YYYY-MM-DD`).
fn age_on(birth: &str, today: &str) -> i32 {
    let year = |d: &str| d[..4].parse::<i32>().unwrap_or(0);
    let had_birthday = today[5..] >= birth[5..];
    year(today) - year(birth) - i32::from(!had_birthday)
}

impl Engine {
    /// Appends the audit record of a card call before it is answered.
    async fn card_audit(
        &self,
        ctx: &Ctx,
        action: &str,
        outcome: &str,
        card: &str,
        patient: Option<&str>,
        reason: &str,
    ) -> EngineResult<()> {
        let patients = patient.map(|p| vec![p.to_string()]).unwrap_or_default();
        let record = audit::record(ctx, action, outcome, format!("HealthCard/{card}"), patients, Some(reason));
        Ok(self.audit.append(record).await?)
    }

    /// Audits a refusal of `error` and returns it.
    async fn card_refused(
        &self,
        ctx: &Ctx,
        action: &str,
        card: &str,
        patient: Option<&str>,
        error: EngineError,
    ) -> EngineError {
        let outcome = if matches!(error, EngineError::Forbidden(_)) { "denied" } else { "failure" };
        match self.card_audit(ctx, action, outcome, card, patient, &error.to_string()).await {
            Ok(()) => error,
            Err(audit_error) => audit_error,
        }
    }

    /// The holder (Patient id) of a card, for other services that identify a resident by a
    /// verified code (check-in). Not found for an unknown card id.
    pub(crate) async fn healthcard_holder(&self, card_id: &str) -> EngineResult<String> {
        Ok(self.load_card(card_id).await?.patient)
    }

    async fn load_card(&self, card_id: &str) -> EngineResult<HealthCard> {
        Ok(self.load_stored(card_id).await?.card)
    }

    async fn load_stored(&self, card_id: &str) -> EngineResult<StoredCard> {
        let Ok(card_id) = CardId::parse(card_id) else {
            return Err(EngineError::NotFound(format!("HealthCard/{card_id}: a card id is 64 hex characters")));
        };
        let body = self
            .store
            .kv_get(CARD_KIND, card_id.as_str())
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("HealthCard/{card_id} is not known")))?;
        serde_json::from_str(&body).map_err(|e| EngineError::Store(StoreError::Backend(format!("health card: {e}"))))
    }

    async fn save_card(&self, stored: &StoredCard) -> EngineResult<()> {
        let card = &stored.card;
        let lookups = if card.status == CardStatus::Closed {
            Vec::new()
        } else {
            vec![format!("patient:{}", card.patient), format!("holder:{}", stored.holder)]
        };
        let body = serde_json::to_string(stored).expect("a card serialises");
        match self.store.kv_put(CARD_KIND, &card.card_id, &body, &lookups).await {
            Err(StoreError::Duplicate { .. }) => Err(conflict(format!(
                "Patient/{} or the person it records already holds an open health card (one person, one card): query it, or close it before registering anew",
                card.patient
            ))),
            other => Ok(other?),
        }
    }

    /// `POST /healthcard/register`: a card for `patient`, asked by a resident whose account is
    /// real-name verified (`verified_id_number`: the GB 11643 number checked when the account
    /// was made, from `auth`). The Patient must carry a valid ID number in
    /// `urn:oid:2.16.156.10011.1.3`: the account holder's own, or, for a guardian acting for a
    /// dependant, a child's under 14.
    pub async fn healthcard_register(
        &self,
        ctx: &Ctx,
        keys: &KeyRing,
        patient: &str,
        verified_id_number: Option<&str>,
    ) -> EngineResult<HealthCard> {
        const ACTION: &str = "healthcard-register";
        let card = match self.register_checked(ctx, keys, patient, verified_id_number).await {
            Ok(card) => card,
            Err(e) => return Err(self.card_refused(ctx, ACTION, "-", Some(patient), e).await),
        };
        self.card_audit(ctx, ACTION, "success", &card.card_id, Some(patient), &card.registered_by).await?;
        Ok(card)
    }

    async fn register_checked(
        &self,
        ctx: &Ctx,
        keys: &KeyRing,
        patient: &str,
        verified_id_number: Option<&str>,
    ) -> EngineResult<HealthCard> {
        let principal = ctx.principal.as_deref();
        if !principal.is_some_and(|p| p.role == Role::Resident && p.patients.iter().any(|x| x == patient)) {
            return Err(EngineError::Forbidden(format!(
                "a health card is registered by the resident for their own Patient record or a dependant's, and Patient/{patient} is not one of the caller's"
            )));
        }
        let account = verified_id_number.and_then(|n| crypto::idnum::normalize(n).ok()).ok_or_else(|| {
            EngineError::Forbidden(
                "a health card is issued only to a real-name-verified resident: verify the account's ID number first"
                    .into(),
            )
        })?;
        let stored = self.store.read(ctx, "Patient", patient).await?.filter(|r| !r.deleted);
        let body = stored
            .as_ref()
            .map(crate::crud::body_json)
            .ok_or_else(|| EngineError::NotFound(format!("Patient/{patient} is not known")))?;
        let written = body["identifier"]
            .as_array()
            .and_then(|ids| ids.iter().find(|i| i["system"] == ID_NUMBER_SYSTEM))
            .and_then(|i| i["value"].as_str())
            .ok_or_else(|| {
                invalid(format!(
                    "Patient/{patient} carries no national ID number (identifier with system {ID_NUMBER_SYSTEM}): add it before registering a card"
                ))
            })?;
        let holder = crypto::idnum::normalize(written)
            .map_err(|e| invalid(format!("Patient/{patient} has an invalid national ID number: {e}")))?;
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let registered_by = if holder.as_str() == account.as_str() {
            "self"
        } else if age_on(&holder.birth_date(), &today) < GUARDIAN_AGE {
            "guardian"
        } else {
            return Err(EngineError::Forbidden(format!(
                "Patient/{patient}'s ID number is not the caller's verified one, and a guardian registers a card only for a child under {GUARDIAN_AGE}"
            )));
        };
        let issuer = self.config.health_card.issuer.clone();
        let now = now_seconds();
        // The n-th card ever issued to this ID number: a closed card keeps its id, so the next
        // counter gives a new, unrelated one.
        for counter in 1u32.. {
            let mac = keys.blind_index("health-card", &format!("{}#{counter}", holder.as_str()));
            let card_id = CardId::derive(mac.as_bytes());
            if self.store.kv_get(CARD_KIND, card_id.as_str()).await?.is_some() {
                continue;
            }
            let card = HealthCard {
                static_code: StaticCode { card_id: card_id.clone(), issuer: issuer.clone() }.encode(),
                card_id: card_id.to_string(),
                patient: patient.to_string(),
                issuer,
                status: CardStatus::Active,
                registered_by: registered_by.to_string(),
                created: now,
                updated: now,
            };
            let holder = keys.blind_index("health-card-holder", holder.as_str());
            self.save_card(&StoredCard { card: card.clone(), holder }).await?;
            return Ok(card);
        }
        unreachable!("the counter space is not exhausted")
    }

    /// May the caller see or use this card as its holder (the resident or a guardian)?
    fn holds(ctx: &Ctx, card: &HealthCard) -> bool {
        ctx.principal.as_deref().is_some_and(|p| p.role == Role::Resident && p.patients.contains(&card.patient))
    }

    /// `GET /healthcard/{card id}`: the holder (or guardian) and operators.
    pub async fn healthcard_read(&self, ctx: &Ctx, card_id: &str) -> EngineResult<HealthCard> {
        const ACTION: &str = "healthcard-read";
        let card = match self.load_card(card_id).await {
            Ok(card) => card,
            Err(e) => return Err(self.card_refused(ctx, ACTION, card_id, None, e).await),
        };
        let operator = ctx.principal.as_deref().is_some_and(|p| p.role == Role::Operator);
        if !(operator || Self::holds(ctx, &card)) {
            // Like a forbidden FHIR read: indistinguishable from a missing card.
            let error = EngineError::NotFound(format!("HealthCard/{card_id} is not known"));
            self.card_audit(
                ctx,
                ACTION,
                "denied",
                card_id,
                Some(&card.patient),
                "not the holder, a guardian or an operator",
            )
            .await?;
            return Err(error);
        }
        self.card_audit(ctx, ACTION, "success", card_id, Some(&card.patient), "read").await?;
        Ok(card)
    }

    /// `GET /healthcard?patient=<id>`: the open card of a Patient, for the same callers.
    pub async fn healthcard_for_patient(&self, ctx: &Ctx, patient: &str) -> EngineResult<HealthCard> {
        match self.store.kv_find(CARD_KIND, &format!("patient:{patient}")).await? {
            Some((card_id, _)) => self.healthcard_read(ctx, &card_id).await,
            None => {
                let error = EngineError::NotFound(format!("Patient/{patient} holds no open health card"));
                Err(self.card_refused(ctx, "healthcard-read", "-", Some(patient), error).await)
            }
        }
    }

    /// `POST /healthcard/{card id}/code`: a dynamic code for the holder (or a guardian) of an
    /// active card, signed with the current platform key; the 三码融合 tokens are optional.
    pub async fn healthcard_code(
        &self,
        ctx: &Ctx,
        keys: &KeyRing,
        card_id: &str,
        insurance_token: Option<String>,
        payment_token: Option<String>,
    ) -> EngineResult<IssuedCode> {
        const ACTION: &str = "healthcard-code";
        let card = match self.load_card(card_id).await {
            Ok(card) => card,
            Err(e) => return Err(self.card_refused(ctx, ACTION, card_id, None, e).await),
        };
        let checked = if !Self::holds(ctx, &card) {
            Err(EngineError::Forbidden("codes are generated by the card's holder or their guardian".into()))
        } else if card.status != CardStatus::Active {
            Err(conflict(format!("the card is {}: no code is issued for it", card.status.as_str())))
        } else {
            let code = DynamicCode {
                card_id: CardId::parse(&card.card_id).expect("stored card ids are valid"),
                issuer: card.issuer.clone(),
                issued_at: now_seconds(),
                lifetime: self.config.health_card.code_lifetime,
                insurance_token,
                payment_token,
            };
            code.issue(keys.signing_key(), &keys.signing_key_id()).map_err(|e| invalid(e.to_string()))
        };
        match checked {
            Ok((payload, claims)) => {
                let reason = format!("code {} until {}", claims.code_id, claims.expires_at);
                self.card_audit(ctx, ACTION, "success", card_id, Some(&card.patient), &reason).await?;
                Ok(IssuedCode { payload, claims })
            }
            Err(e) => Err(self.card_refused(ctx, ACTION, card_id, Some(&card.patient), e).await),
        }
    }

    fn may_verify(ctx: &Ctx) -> bool {
        ctx.principal.as_deref().is_some_and(|p| {
            matches!(p.role, Role::System | Role::Doctor | Role::Nurse | Role::FamilyDoctor | Role::Pharmacist)
        })
    }

    /// `POST /healthcard/verify`: checks a scanned dynamic code online at a care step and
    /// terminal: signature (current or retired key), lifetime, single use, and that the card
    /// was active when the code was issued (a later suspension or closure does not revoke it). Hospital system clients and clinical staff only. Accepted or not, the attempt is
    /// audited as a use event (`healthcard-verify`).
    pub async fn healthcard_verify(
        &self,
        ctx: &Ctx,
        keys: &KeyRing,
        payload: &str,
        care_step: &str,
        terminal: &str,
    ) -> EngineResult<Verification> {
        const ACTION: &str = "healthcard-verify";
        let mut card_for_audit = (String::from("-"), None::<String>);
        let checked = self.verify_checked(ctx, keys, payload, care_step, terminal, &mut card_for_audit).await;
        let (card_id, patient) = card_for_audit;
        let step = care_step_text(care_step, terminal);
        // An accepted code is recorded as used and its acceptance audited in one transaction
        // (the store's group commit), so neither exists without the other, even after a crash.
        let result = match checked {
            Ok((claims, card)) => {
                let reason = format!("{step}: accepted code {}", claims.code_id);
                let patients = vec![card.patient.clone()];
                let record =
                    audit::record(ctx, ACTION, "success", format!("HealthCard/{card_id}"), patients, Some(&reason));
                match self.use_code(&claims, record).await {
                    Ok(()) => {
                        return Ok(Verification {
                            claims,
                            card,
                            care_step: care_step.to_string(),
                            terminal: terminal.to_string(),
                        });
                    }
                    Err(refused) => refused,
                }
            }
            Err(refused) => refused,
        };
        let (why, error) = result;
        let outcome = if matches!(error, EngineError::Forbidden(_)) { "denied" } else { "failure" };
        let reason = format!("{step}: rejected ({why}): {error}");
        self.card_audit(ctx, ACTION, outcome, &card_id, patient.as_deref(), &reason).await?;
        Err(error)
    }

    /// The checks before a code is consumed: who verifies, care step and terminal, signature
    /// and lifetime, the card and its status when the code was issued.
    async fn verify_checked(
        &self,
        ctx: &Ctx,
        keys: &KeyRing,
        payload: &str,
        care_step: &str,
        terminal: &str,
        card_for_audit: &mut (String, Option<String>),
    ) -> Result<(Claims, HealthCard), (&'static str, EngineError)> {
        if !Self::may_verify(ctx) {
            return Err((
                "forbidden",
                EngineError::Forbidden("codes are verified by hospital system clients and clinical staff".into()),
            ));
        }
        check_care_step(care_step).map_err(|e| ("bad-request", e))?;
        check_terminal(terminal).map_err(|e| ("bad-request", e))?;
        let now = now_seconds();
        let claims = healthcard::payload::verify_offline(payload, |id| keys.verifying_key_for(id), now)
            .map_err(|e: CodeError| (e.reason(), invalid(e.to_string())))?;
        card_for_audit.0 = claims.card_id.to_string();
        let card = self.load_card(claims.card_id.as_str()).await.map_err(|e| ("unknown-card", e))?;
        card_for_audit.1 = Some(card.patient.clone());
        // A code issued while the card was active stays good for its lifetime (issue 6: card
        // status never invalidates codes already issued). No code is issued for a card that is
        // not active, so one dated after the last status change (whole seconds) cannot be legitimate.
        if card.status != CardStatus::Active && claims.issued_at > card.updated {
            let message = format!("the card is {}: no code issued after that is accepted", card.status.as_str());
            return Err(("card-not-active", conflict(message)));
        }
        Ok((claims, card))
    }

    /// Records the code id as used, with the audit record of its acceptance; the unique lookup
    /// refuses a second use (and then nothing is written: the caller audits the refusal).
    async fn use_code(&self, claims: &Claims, accepted: store::AuditRecord) -> Result<(), (&'static str, EngineError)> {
        let store_error = |e: StoreError| ("store", EngineError::from(e));
        let now = now_seconds();
        let until = claims.expires_at + healthcard::CLOCK_SKEW_SECONDS;
        // A fresh object id per attempt: the lookup, not the id, must collide on a replay.
        let id = format!("{until:012}-{}", crypto::random_token(9));
        let body = serde_json::json!({"card": claims.card_id.as_str(), "until": until}).to_string();
        let lookups = [format!("code:{}", claims.code_id)];
        match self.store.kv_put_audited(USED_CODE_KIND, &id, &body, &lookups, vec![accepted]).await {
            Err(StoreError::Duplicate { .. }) => {
                return Err((
                    "replay",
                    conflict("this code was already used: ask the holder to show a fresh code".to_string()),
                ));
            }
            other => other.map_err(store_error)?,
        }
        // The code is consumed and its acceptance audited: a failed prune (retried at the next
        // one) must not turn that into a refusal.
        if let Err(e) = self.prune_used_codes(now).await {
            tracing::warn!(error = %e, "used health card codes could not be pruned");
        }
        Ok(())
    }

    /// Deletes used code ids whose codes can no longer verify (ids sort by expiry; such a code
    /// is refused as expired before its id is looked at). Not on every verification: at most
    /// once a second, by one caller, a batch of the oldest; again at the next call while a
    /// full batch was due (a backlog), so deletions keep pace with insertions.
    async fn prune_used_codes(&self, now: i64) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        const BATCH: usize = 128;
        let due = self.codes_prune_due.load(Relaxed);
        if now < due || self.codes_prune_due.compare_exchange(due, now + 1, Relaxed, Relaxed).is_err() {
            return Ok(());
        }
        let expired = format!("{now:012}");
        let oldest = self.store.kv_list(USED_CODE_KIND, "", BATCH).await?;
        let mut deleted = 0;
        for (old, _) in &oldest {
            if old.as_str() >= expired.as_str() {
                break;
            }
            self.store.kv_delete(USED_CODE_KIND, old).await?;
            deleted += 1;
        }
        if deleted == BATCH {
            self.codes_prune_due.store(now, Relaxed);
        }
        Ok(())
    }

    /// `POST /healthcard/{card id}/use`: reports a use of a card at a care step whose holder
    /// was checked otherwise (a static code with PIN or SMS); system clients and clinical
    /// staff, active cards only. Audited as `healthcard-use`.
    pub async fn healthcard_report_use(
        &self,
        ctx: &Ctx,
        card_id: &str,
        care_step: &str,
        terminal: &str,
    ) -> EngineResult<HealthCard> {
        const ACTION: &str = "healthcard-use";
        let step = care_step_text(care_step, terminal);
        let card = match self.load_card(card_id).await {
            Ok(card) => card,
            Err(e) => return Err(self.card_refused(ctx, ACTION, card_id, None, e).await),
        };
        let checked = if !Self::may_verify(ctx) {
            Err(EngineError::Forbidden("uses are reported by hospital system clients and clinical staff".into()))
        } else if let Err(e) = check_care_step(care_step).and_then(|()| check_terminal(terminal)) {
            Err(e)
        } else if card.status != CardStatus::Active {
            Err(conflict("the card is not active: no use is recorded"))
        } else {
            Ok(())
        };
        match checked {
            Ok(()) => {
                self.card_audit(ctx, ACTION, "success", card_id, Some(&card.patient), &step).await?;
                Ok(card)
            }
            Err(e) => Err(self.card_refused(ctx, ACTION, card_id, Some(&card.patient), e).await),
        }
    }

    /// `POST /healthcard/{card id}/suspend`, `/resume`, `/close`: operators only. A closed card
    /// stays closed; its patient may register a new card (a new id).
    pub async fn healthcard_set_status(
        &self,
        ctx: &Ctx,
        card_id: &str,
        status: CardStatus,
        reason: &str,
    ) -> EngineResult<HealthCard> {
        let action = match status {
            CardStatus::Active => "healthcard-resume",
            CardStatus::Suspended => "healthcard-suspend",
            CardStatus::Closed => "healthcard-close",
        };
        let mut stored = match self.load_stored(card_id).await {
            Ok(stored) => stored,
            Err(e) => return Err(self.card_refused(ctx, action, card_id, None, e).await),
        };
        let card = &mut stored.card;
        let checked = if !ctx.principal.as_deref().is_some_and(|p| p.role == Role::Operator) {
            Err(EngineError::Forbidden("cards are suspended, resumed and closed by operators".into()))
        } else if card.status == CardStatus::Closed {
            Err(conflict("the card is closed for good: register a new card instead"))
        } else {
            card.status = status;
            card.updated = now_seconds();
            self.save_card(&stored).await
        };
        let card = stored.card;
        match checked {
            Ok(()) => {
                self.card_audit(ctx, action, "success", card_id, Some(&card.patient), reason).await?;
                Ok(card)
            }
            Err(e) => Err(self.card_refused(ctx, action, card_id, Some(&card.patient), e).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_count_whole_years() {
        assert_eq!(age_on("2012-06-15", "2026-06-14"), 13);
        assert_eq!(age_on("2012-06-15", "2026-06-15"), 14);
        assert_eq!(age_on("1990-01-01", "2026-12-01"), 36);
    }

    #[test]
    fn care_steps_are_seven_digits() {
        assert!(check_care_step("0101011").is_ok());
        assert!(check_care_step("9999999").is_ok());
        for bad in ["", "010101", "01010111", "010101a"] {
            assert!(check_care_step(bad).is_err(), "{bad}");
        }
        assert!(check_terminal("T-01").is_ok());
        assert!(check_terminal("with space").is_err());
    }
}
