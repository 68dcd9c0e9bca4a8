//! Identities and sessions (DESIGN.md §4, issue 3): who may call the platform and how they prove
//! it.
//!
//! - **Residents** are real-name accounts: a name and a GB 11643 ID number (checked), a phone,
//!   and a password or a one-time code sent by SMS. They act for their own Patient records and
//!   their dependants' (guardians).
//! - **Staff** (doctors, nurses, pharmacists, CDC officers, insurers, regulators, operators,
//!   auditors) log in with a password **and** a TOTP code (two factors, one cryptographic: 等保
//!   level 3); their account names their Practitioner, organization and region.
//! - **System clients** (hospital systems, other platform nodes) use the OAuth2
//!   client-credentials grant and get `system/` scopes up to their ceiling. They authenticate
//!   with a secret, or with a signed JWT assertion (RFC 7523, SMART Backend Services
//!   `private_key_jwt`) checked against the SM2 or P-384 public key they registered
//!   ([`jwt`]); each assertion's `jti` is remembered until it expires, so none is replayed.
//!
//! Tokens are opaque random strings (256 bits); the store keeps only their SM3 hash, so a
//! database dump yields no usable token. Access tokens live [`AuthConfig::access_ttl`] and die
//! after [`AuthConfig::idle_timeout`] without use; refresh tokens rotate on use, a session
//! idle longer than the idle timeout cannot be refreshed, and a refresh token presented a second
//! time revokes every token that descends from it (stolen-token detection, OAuth 2.0 Security
//! BCP §4.14). Revocation is immediate in the process that revokes and within [`CACHE_TTL`] in
//! others. Repeated failed logins lock an account for [`AuthConfig::lockout`]. All of these read
//! the time from [`AuthConfig::clock`], so tests step through them without waiting.
//!
//! Sensitive identifiers (ID number, phone, TOTP secret) are stored SM4-encrypted with a keyed
//! blind index for exact lookup (`crypto::KeyRing`). Every authentication attempt, grant,
//! refresh and revocation is written to the audit log.

pub mod audit;
pub mod jwt;
pub mod sms;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use access::{Principal, Role, Scopes};
use crypto::KeyRing;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use store::{AuditRecord, Ctx, ResourceStore, StoreError};

pub use sms::{FileSms, SmsSender};

/// How long a validated token is trusted from the in-process cache before the store is asked
/// again (bounds how late another process sees a revocation).
pub const CACHE_TTL: Duration = Duration::from_secs(15);

/// Where the identity service reads the time: seconds since the Unix epoch. The system clock
/// by default; tests give a clock they move by hand, so expiry, idle timeout and lockout are
/// checked without waiting.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Clock(Arc::new(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
        }))
    }

    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        Clock(Arc::new(now))
    }

    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Session and lockout settings (defaults follow 等保 level 3 practice). Times in seconds.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub access_ttl: i64,
    pub refresh_ttl: i64,
    /// A session unused this long ends: its access token stops working and it cannot be
    /// refreshed.
    pub idle_timeout: i64,
    pub max_failures: u32,
    pub lockout: i64,
    /// One-time SMS codes: lifetime and attempts.
    pub sms_code_ttl: i64,
    pub clock: Clock,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_ttl: 15 * 60,
            refresh_ttl: 8 * 3600,
            idle_timeout: 30 * 60,
            max_failures: 5,
            lockout: 15 * 60,
            sms_code_ttl: 5 * 60,
            clock: Clock::system(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// RFC 6749 error code and a description a person can act on; `status` is the HTTP status.
    #[error("{code}: {description}")]
    OAuth { status: u16, code: &'static str, description: String },
    /// A bad or unusable bearer token: 401.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn oauth(status: u16, code: &'static str, description: impl Into<String>) -> AuthError {
    AuthError::OAuth { status, code, description: description.into() }
}

pub type AuthResult<T> = Result<T, AuthError>;

/// A user account as stored (kind `user`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
    pub display: String,
    pub role: Role,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub practitioner: Option<String>,
    #[serde(default)]
    pub patients: Vec<String>,
    pub password_hash: String,
    /// SM4-encrypted base32 TOTP secret (staff).
    #[serde(default)]
    pub totp_secret: Option<String>,
    /// SM4-encrypted phone number.
    #[serde(default)]
    pub phone: Option<String>,
    /// SM4-encrypted GB 11643 ID number (residents: real name).
    #[serde(default)]
    pub id_number: Option<String>,
    #[serde(default)]
    pub failed_logins: u32,
    #[serde(default)]
    pub locked_until: i64,
    pub active: bool,
    pub created: i64,
}

/// A system client as stored (kind `client`): it authenticates with a secret (argon2id hash
/// kept) or with JWT assertions signed by the key of `public_key`, never both.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    pub id: String,
    pub name: String,
    /// Empty for a client with a public key.
    #[serde(default)]
    pub secret_hash: String,
    /// SPKI PEM of an SM2 or P-384 key (`private_key_jwt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The most this client may be granted.
    pub scopes: String,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub active: bool,
    pub created: i64,
}

/// A token as stored (kinds `access`, `refresh`), keyed by the SM3 hash of the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    principal: Principal,
    scopes: String,
    client_id: String,
    issued: i64,
    expires: i64,
    last_used: i64,
    /// Refresh tokens: the hash of the access token issued with it, whose `last_used` tells
    /// how long the session has been idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    access_key: Option<String>,
    /// Refresh tokens already used: the hash of the refresh token that replaced it. Kept until
    /// it expires so that a second use is recognised (and revokes its descendants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rotated_to: Option<String>,
}

/// What a valid bearer token stands for.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Arc<Principal>,
    pub expires: i64,
}

/// A new account's details (`hutong admin create-user`, demo accounts, the registration API).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewUser {
    pub username: String,
    #[serde(default)]
    pub display: String,
    pub role: String,
    /// Generated (and returned once) when absent.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub organization: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub practitioner: Option<String>,
    #[serde(default)]
    pub patients: Vec<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub id_number: Option<String>,
    /// A fixed base32 TOTP secret (demo accounts); generated for staff when absent.
    #[serde(default)]
    pub totp_secret: Option<String>,
}

pub struct Auth {
    store: Arc<dyn ResourceStore>,
    /// Swapped whole by [`Auth::replace_keys`] when the key folder changes (rotation without
    /// restart). A swap between two uses in one operation is harmless: both rings hold the
    /// same blind-index key and every SM4 key that sealed a stored value.
    keys: RwLock<Arc<KeyRing>>,
    config: AuthConfig,
    sms: Arc<dyn SmsSender>,
    /// Validated tokens by token text and when they were checked (clock seconds): the lookup
    /// on every request stays cheap.
    cache: Mutex<HashMap<String, (i64, Session)>>,
}

fn token_key(token: &str) -> String {
    crypto::sm3::sm3_hex(token.as_bytes())
}

fn normalize_phone(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect::<String>().trim_start_matches("86").to_string()
}

impl Auth {
    pub fn new(store: Arc<dyn ResourceStore>, keys: Arc<KeyRing>, config: AuthConfig, sms: Arc<dyn SmsSender>) -> Self {
        Auth { store, keys: RwLock::new(keys), config, sms, cache: Mutex::new(HashMap::new()) }
    }

    /// The key ring in use now (a reload may replace it at any time).
    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts a reloaded key ring in use (rotated SM4 or SM2 keys): new values are encrypted and
    /// checkpoints signed with it from now on. The ring must still hold every SM4 key that
    /// sealed stored values, and the same blind-index key.
    pub fn replace_keys(&self, keys: Arc<KeyRing>) {
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
    }

    pub fn store(&self) -> &Arc<dyn ResourceStore> {
        &self.store
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    fn now(&self) -> i64 {
        self.config.clock.now()
    }

    async fn audit(&self, record: AuditRecord) -> AuthResult<()> {
        Ok(self.store.commit_audited(&Ctx::system(), Vec::new(), vec![record]).await?)
    }

    fn record(&self, actor: &str, role: &str, action: &str, outcome: &str, detail: Value) -> AuditRecord {
        AuditRecord {
            recorded: self.now() * 1000,
            action: action.into(),
            outcome: outcome.into(),
            actor: actor.into(),
            role: role.into(),
            organization: String::new(),
            purpose: "HOPERAT".into(),
            entity: "session".into(),
            patients: Vec::new(),
            detail: detail.to_string(),
        }
    }

    // ---- accounts -------------------------------------------------------------------------

    /// Creates a system client; returns `(client_id, client_secret)`. The secret is shown once.
    pub async fn create_client(
        &self,
        name: &str,
        scopes: &str,
        organization: Option<String>,
        region: Option<String>,
    ) -> AuthResult<(String, String)> {
        let secret = crypto::random_token(32);
        let secret_hash = crypto::password::hash_password(&secret).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let id = self.save_new_client(name, scopes, organization, region, secret_hash, None).await?;
        Ok((id, secret))
    }

    /// Creates a system client that authenticates with JWT assertions signed by the private
    /// half of `public_key_pem` (an SM2 or P-384 SPKI PEM); returns the client id and the
    /// JOSE `alg` its assertions use.
    pub async fn create_client_with_key(
        &self,
        name: &str,
        scopes: &str,
        organization: Option<String>,
        region: Option<String>,
        public_key_pem: &str,
    ) -> AuthResult<(String, &'static str)> {
        let key = jwt::PublicKey::from_pem(public_key_pem).map_err(AuthError::Invalid)?;
        let pem = public_key_pem.trim().to_string();
        let id = self.save_new_client(name, scopes, organization, region, String::new(), Some(pem)).await?;
        Ok((id, key.alg()))
    }

    async fn save_new_client(
        &self,
        name: &str,
        scopes: &str,
        organization: Option<String>,
        region: Option<String>,
        secret_hash: String,
        public_key: Option<String>,
    ) -> AuthResult<String> {
        let parsed = Scopes::parse(scopes).map_err(AuthError::Invalid)?;
        if parsed.resources.is_empty() || parsed.resources.iter().any(|s| s.context != access::ScopeContext::System) {
            return Err(AuthError::Invalid(format!(
                "a system client gets system/ scopes (e.g. 'system/*.read'), not '{scopes}'"
            )));
        }
        let id = format!("client-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let method = if public_key.is_some() { "private_key_jwt" } else { "client_secret" };
        let client = Client {
            id: id.clone(),
            name: name.to_string(),
            secret_hash,
            public_key,
            scopes: parsed.to_text(),
            organization,
            region,
            active: true,
            created: self.now(),
        };
        let body = serde_json::to_string(&client).map_err(|e| AuthError::Invalid(e.to_string()))?;
        self.store.kv_put("client", &id, &body, &[]).await?;
        self.audit(self.record(
            "platform",
            "operator",
            "admin",
            "success",
            json!({"created": format!("client/{id}"), "authentication": method}),
        ))
        .await?;
        Ok(id)
    }

    /// Creates a staff or resident account. Returns the stored user, the password if it was
    /// generated, and the TOTP secret (base32) for staff.
    pub async fn create_user(&self, new: NewUser) -> AuthResult<(User, Option<String>, Option<String>)> {
        let role = Role::parse(&new.role).filter(|r| *r != Role::System).ok_or_else(|| {
            AuthError::Invalid(format!(
                "role '{}' is not a user role (resident, doctor, nurse, family-doctor, pharmacist, cdc-officer, \
                 insurer, regulator, operator, auditor)",
                new.role
            ))
        })?;
        let username = new.username.trim().to_string();
        if username.is_empty()
            || username.len() > 64
            || !username.chars().all(|c| c.is_alphanumeric() || "-_.@".contains(c))
        {
            return Err(AuthError::Invalid("a user name has 1-64 letters, digits and - _ . @ (no spaces)".to_string()));
        }
        let generated = new.password.is_none().then(|| format!("Ht-{}", crypto::random_token(12)));
        let password = new.password.clone().or_else(|| generated.clone()).unwrap_or_default();
        crypto::password::check_password_policy(&password).map_err(AuthError::Invalid)?;
        let mut lookups = vec![format!("name:{}", username.to_lowercase())];
        let id_number = match &new.id_number {
            Some(n) => {
                let valid = crypto::idnum::normalize(n).map_err(|e| AuthError::Invalid(e.to_string()))?;
                lookups.push(format!("idn:{}", self.keys().blind_index("id-number", valid.as_str())));
                Some(self.keys().encrypt_field(valid.as_str(), "user.id_number"))
            }
            None if role == Role::Resident => {
                return Err(AuthError::Invalid(
                    "a resident account is real-name: give the resident's GB 11643 ID number".into(),
                ));
            }
            None => None,
        };
        let phone = match &new.phone {
            Some(p) => {
                let p = normalize_phone(p);
                if p.len() != 11 || !p.starts_with('1') {
                    return Err(AuthError::Invalid("a mobile number has 11 digits and starts with 1".into()));
                }
                lookups.push(format!("phone:{}", self.keys().blind_index("phone", &p)));
                Some(self.keys().encrypt_field(&p, "user.phone"))
            }
            None => None,
        };
        if role == Role::Resident && new.patients.is_empty() {
            return Err(AuthError::Invalid("a resident account names the resident's Patient id".into()));
        }
        let totp = if role == Role::Resident {
            None
        } else {
            let secret = match &new.totp_secret {
                Some(s) => crypto::totp::base32_decode(s)
                    .filter(|b| b.len() >= 10)
                    .ok_or_else(|| AuthError::Invalid("the TOTP secret is not base32 of at least 10 bytes".into()))?,
                None => crypto::totp::new_secret(),
            };
            Some(crypto::totp::base32_encode(&secret))
        };
        let user = User {
            id: format!("u-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            username: username.clone(),
            display: if new.display.is_empty() { username.clone() } else { new.display.clone() },
            role,
            organization: new.organization.clone(),
            region: new.region.clone(),
            practitioner: new.practitioner.clone(),
            patients: new.patients.clone(),
            password_hash: crypto::password::hash_password(&password).map_err(|e| AuthError::Invalid(e.to_string()))?,
            totp_secret: totp.as_ref().map(|t| self.keys().encrypt_field(t, "user.totp")),
            phone,
            id_number,
            failed_logins: 0,
            locked_until: 0,
            active: true,
            created: self.now(),
        };
        let body = serde_json::to_string(&user).map_err(|e| AuthError::Invalid(e.to_string()))?;
        match self.store.kv_put("user", &user.id, &body, &lookups).await {
            Err(StoreError::Duplicate { lookup, .. }) => {
                let what = match lookup.split(':').next() {
                    Some("name") => "the user name",
                    Some("idn") => "an account with this ID number",
                    _ => "an account with this phone number",
                };
                return Err(AuthError::Invalid(format!("{what} already exists")));
            }
            other => other?,
        }
        self.audit(self.record(
            "platform",
            "operator",
            "admin",
            "success",
            json!({"created": format!("user/{}", user.id), "role": role.code()}),
        ))
        .await?;
        Ok((user, generated, totp))
    }

    async fn save_user(&self, user: &User) -> AuthResult<()> {
        let mut lookups = vec![format!("name:{}", user.username.to_lowercase())];
        if let Some(n) = &user.id_number
            && let Ok(n) = self.keys().decrypt_field(n, "user.id_number")
        {
            lookups.push(format!("idn:{}", self.keys().blind_index("id-number", &n)));
        }
        if let Some(p) = &user.phone
            && let Ok(p) = self.keys().decrypt_field(p, "user.phone")
        {
            lookups.push(format!("phone:{}", self.keys().blind_index("phone", &p)));
        }
        let body = serde_json::to_string(user).map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(self.store.kv_put("user", &user.id, &body, &lookups).await?)
    }

    /// Changes an account's standing: `active` (an operator disables or re-enables it) and, for
    /// residents, the `patients` it acts for (a guardian's dependants). Sessions pick the change
    /// up at their next refresh, so within the 15-minute life of an access token; a disabled
    /// account's refresh fails.
    pub async fn set_user(
        &self,
        username: &str,
        active: Option<bool>,
        patients: Option<Vec<String>>,
    ) -> AuthResult<User> {
        let mut user = self
            .find_user(username)
            .await?
            .ok_or_else(|| AuthError::Invalid(format!("there is no account '{username}'")))?;
        if let Some(patients) = patients {
            if user.role != Role::Resident {
                return Err(AuthError::Invalid("only resident accounts act for patients".into()));
            }
            if patients.is_empty() {
                return Err(AuthError::Invalid("a resident account acts for at least one patient (its own)".into()));
            }
            user.patients = patients;
        }
        if let Some(active) = active {
            user.active = active;
        }
        self.save_user(&user).await?;
        let record = self.record(
            "platform",
            "operator",
            "account-change",
            "success",
            json!({"user": user.id, "active": user.active, "patients": user.patients.len()}),
        );
        self.audit(record).await?;
        Ok(user)
    }

    /// Deletes the security objects nobody can use any more: expired access and refresh
    /// tokens (a used refresh token is kept until it expires, to recognise its reuse), expired
    /// SMS codes and `jti` records, and SMS limits whose day is over. Returns how many went.
    pub async fn purge_expired(&self) -> AuthResult<u64> {
        let now = self.now();
        let mut purged = 0;
        for kind in ["access", "refresh", "sms-code", "sms-limit", "jti"] {
            let mut after = String::new();
            loop {
                let page = self.store.kv_list(kind, &after, 500).await?;
                let Some((last, _)) = page.last() else { break };
                after = last.clone();
                for (id, body) in &page {
                    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                    let until = match kind {
                        "sms-limit" => v["window"].as_i64().map(|w| w + 86_400),
                        "jti" => v["until"].as_i64(),
                        _ => v["expires"].as_i64(),
                    };
                    if until.is_none_or(|u| u < now) && self.store.kv_delete(kind, id).await? {
                        purged += 1;
                    }
                }
            }
        }
        Ok(purged)
    }

    pub async fn find_user(&self, username: &str) -> AuthResult<Option<User>> {
        Ok(match self.store.kv_find("user", &format!("name:{}", username.trim().to_lowercase())).await? {
            Some((_, body)) => serde_json::from_str(&body).ok(),
            None => None,
        })
    }

    /// The account holding this ID number (exact match through the blind index).
    pub async fn find_by_id_number(&self, id_number: &str) -> AuthResult<Option<User>> {
        let Ok(valid) = crypto::idnum::normalize(id_number) else { return Ok(None) };
        let lookup = format!("idn:{}", self.keys().blind_index("id-number", valid.as_str()));
        Ok(self.store.kv_find("user", &lookup).await?.and_then(|(_, b)| serde_json::from_str(&b).ok()))
    }

    /// The real-name-verified ID number of the account behind `subject` (`user/{id}`): the
    /// GB 11643 number checked when a resident account was made, decrypted. `None` for
    /// clients, staff and inactive accounts. The health card service asks this before issuing.
    pub async fn verified_id_number(&self, subject: &str) -> AuthResult<Option<String>> {
        let Some(user_id) = subject.strip_prefix("user/") else { return Ok(None) };
        let user: Option<User> = self.store.kv_get("user", user_id).await?.and_then(|b| serde_json::from_str(&b).ok());
        Ok(user
            .filter(|u| u.active && u.role == Role::Resident)
            .and_then(|u| u.id_number)
            .and_then(|sealed| self.keys().decrypt_field(&sealed, "user.id_number").ok()))
    }

    /// Real-name sign-in (the 12320 resident portal): the registered phone of the active
    /// resident account that holds this ID number, when `name` is the account's real name
    /// (`User::display`), so that a login code can be sent to it. `None` otherwise; callers
    /// answer alike either way, so the form does not reveal which accounts exist.
    pub async fn resident_phone_for(&self, name: &str, id_number: &str) -> AuthResult<Option<String>> {
        let Some(user) = self.find_by_id_number(id_number).await? else { return Ok(None) };
        if !user.active || user.role != Role::Resident || user.display.trim() != name.trim() {
            return Ok(None);
        }
        Ok(user.phone.and_then(|sealed| self.keys().decrypt_field(&sealed, "user.phone").ok()))
    }

    fn principal_of(&self, user: &User, scopes: Scopes) -> Principal {
        Principal {
            subject: format!("user/{}", user.id),
            role: user.role,
            organization: user.organization.clone(),
            region: user.region.clone(),
            practitioner: user.practitioner.clone(),
            patients: user.patients.clone(),
            scopes,
            purpose: user.role.default_purpose().to_string(),
            break_glass: None,
        }
    }

    /// The scopes a user role may hold (its ceiling).
    fn user_ceiling(role: Role) -> Scopes {
        let text = match role {
            Role::Resident => "patient/*.cruds openid fhirUser offline_access launch/patient",
            _ => "user/*.cruds openid fhirUser offline_access",
        };
        Scopes::parse(text).expect("static scopes parse")
    }

    // ---- grants --------------------------------------------------------------------------

    /// The token endpoint (RFC 6749 §4.3, §4.4, §6 and an SMS-code grant for residents).
    /// `form` is the request body; `basic` the HTTP Basic client credentials, if any. Without
    /// the endpoint's public URL, JWT client assertions are refused (see [`Auth::token_at`]).
    pub async fn token(
        &self,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
        source: Option<&str>,
    ) -> AuthResult<Value> {
        self.token_at(None, form, basic, source).await
    }

    /// The token endpoint reached at `endpoint`, its public URL: the audience a JWT client
    /// assertion must name (RFC 7523 §3).
    pub async fn token_at(
        &self,
        endpoint: Option<&str>,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
        source: Option<&str>,
    ) -> AuthResult<Value> {
        let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
        let result = match grant {
            "client_credentials" => self.client_credentials(form, basic, endpoint).await,
            "password" => self.password_grant(form).await,
            "refresh_token" => self.refresh_grant(form).await,
            SMS_GRANT => self.sms_grant(form).await,
            "" => Err(oauth(400, "invalid_request", "grant_type is required")),
            other => Err(oauth(
                400,
                "unsupported_grant_type",
                format!(
                    "grant_type '{}' is not supported (client_credentials, password, refresh_token, {SMS_GRANT})",
                    other.chars().take(64).collect::<String>()
                ),
            )),
        };
        let (actor, role, outcome, reason) = match &result {
            Ok((session, _)) => (session.principal.subject.clone(), session.principal.role.code(), "success", None),
            Err(e) => ("anonymous".to_string(), "", "failure", Some(e.to_string())),
        };
        let mut detail = json!({"grant": grant.chars().take(64).collect::<String>()});
        if let Some(r) = reason {
            detail["reason"] = json!(r);
        }
        if let Some(s) = source {
            detail["source"] = json!(s);
        }
        self.audit(self.record(&actor, role, "login", outcome, detail)).await?;
        result.map(|(_, body)| body)
    }

    async fn issue(&self, principal: Principal, client_id: &str, refresh: bool) -> AuthResult<(Session, Value)> {
        let token = crypto::random_token(32);
        let issued = self.now();
        let scopes = principal.scopes.to_text();
        let record = TokenRecord {
            principal: principal.clone(),
            scopes: scopes.clone(),
            client_id: client_id.to_string(),
            issued,
            expires: issued + self.config.access_ttl,
            last_used: issued,
            access_key: None,
            rotated_to: None,
        };
        let text = serde_json::to_string(&record).map_err(|e| AuthError::Invalid(e.to_string()))?;
        self.store.kv_put("access", &token_key(&token), &text, &[]).await?;
        let mut body = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.config.access_ttl,
            "scope": scopes,
        });
        if principal.role == Role::Resident
            && let Some(p) = principal.patients.first()
        {
            body["patient"] = json!(p);
        }
        if refresh {
            let refresh_token = crypto::random_token(32);
            let r = TokenRecord {
                expires: issued + self.config.refresh_ttl,
                access_key: Some(token_key(&token)),
                ..record
            };
            let text = serde_json::to_string(&r).map_err(|e| AuthError::Invalid(e.to_string()))?;
            self.store.kv_put("refresh", &token_key(&refresh_token), &text, &[]).await?;
            body["refresh_token"] = json!(refresh_token);
        }
        Ok((Session { principal: Arc::new(principal), expires: issued + self.config.access_ttl }, body))
    }

    fn requested_scopes(form: &HashMap<String, String>, ceiling: &Scopes) -> AuthResult<Scopes> {
        match form.get("scope").map(String::as_str).filter(|s| !s.trim().is_empty()) {
            None => Ok(ceiling.clone()),
            Some(text) => {
                let asked = Scopes::parse(text).map_err(|e| oauth(400, "invalid_scope", e))?;
                let granted = asked.intersect(ceiling);
                if granted.resources.is_empty() {
                    return Err(oauth(400, "invalid_scope", format!("none of the scopes '{text}' may be granted")));
                }
                Ok(granted)
            }
        }
    }

    async fn client_credentials(
        &self,
        form: &HashMap<String, String>,
        basic: Option<(String, String)>,
        endpoint: Option<&str>,
    ) -> AuthResult<(Session, Value)> {
        let client = if form.contains_key("client_assertion") || form.contains_key("client_assertion_type") {
            if basic.is_some() || form.contains_key("client_secret") {
                return Err(oauth(
                    401,
                    "invalid_client",
                    "use one client authentication method: a client_assertion or a client secret, not both",
                ));
            }
            self.assertion_client(form, endpoint).await?
        } else {
            let (id, secret) = basic
                .or_else(|| Some((form.get("client_id")?.clone(), form.get("client_secret")?.clone())))
                .ok_or_else(|| {
                    oauth(
                        401,
                        "invalid_client",
                        "send client_id and client_secret (HTTP Basic or form), or a signed client_assertion",
                    )
                })?;
            let client: Option<Client> =
                self.store.kv_get("client", &id).await?.and_then(|b| serde_json::from_str(&b).ok());
            match client {
                Some(c) if c.active && crypto::password::verify_password(&secret, &c.secret_hash) => c,
                _ => return Err(oauth(401, "invalid_client", "unknown client or wrong secret")),
            }
        };
        let ceiling = Scopes::parse(&client.scopes).unwrap_or_default();
        let scopes = Self::requested_scopes(form, &ceiling)?;
        let principal = Principal {
            subject: format!("client/{}", client.id),
            role: Role::System,
            organization: client.organization.clone(),
            region: client.region.clone(),
            practitioner: None,
            patients: Vec::new(),
            scopes,
            purpose: Role::System.default_purpose().into(),
            break_glass: None,
        };
        self.issue(principal, &client.id, false).await
    }

    /// Authenticates a client by its signed JWT assertion (RFC 7523 §2.2, §3): the client it
    /// names must have registered a public key, the signature must verify with it, the claims
    /// must hold at this time for this endpoint, and the `jti` must be new.
    async fn assertion_client(&self, form: &HashMap<String, String>, endpoint: Option<&str>) -> AuthResult<Client> {
        let invalid = |d: String| oauth(401, "invalid_client", d);
        match form.get("client_assertion_type").map(String::as_str) {
            Some(jwt::ASSERTION_TYPE) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "client_assertion_type '{}' is not supported; use {}",
                    other.chars().take(80).collect::<String>(),
                    jwt::ASSERTION_TYPE
                )));
            }
            None => return Err(invalid(format!("client_assertion_type {} is required", jwt::ASSERTION_TYPE))),
        }
        let Some(text) = form.get("client_assertion") else {
            return Err(invalid("client_assertion (a signed JWT) is required".into()));
        };
        let assertion = jwt::Assertion::parse(text)?;
        let id = assertion.client_id()?;
        if let Some(named) = form.get("client_id")
            && named != id
        {
            return Err(invalid("client_id differs from the assertion's iss and sub".into()));
        }
        let client: Option<Client> = self.store.kv_get("client", id).await?.and_then(|b| serde_json::from_str(&b).ok());
        let Some(client) = client.filter(|c| c.active) else {
            return Err(invalid("the assertion names an unknown or disabled client".into()));
        };
        let Some(pem) = &client.public_key else {
            return Err(invalid(format!(
                "client {} authenticates with a secret; it has no public key for a client_assertion",
                client.id
            )));
        };
        let key = jwt::PublicKey::from_pem(pem)
            .map_err(|e| invalid(format!("client {}'s registered key is unusable: {e}", client.id)))?;
        let Some(endpoint) = endpoint else {
            return Err(invalid("this server does not know its token endpoint URL, so it cannot check aud".into()));
        };
        let now = self.now();
        let verified = assertion.verify(&key, endpoint, now)?;
        self.remember_jti(&verified, now).await?;
        Ok(client)
    }

    /// Records an assertion's `jti` until it can no longer be accepted (`exp` plus the clock
    /// skew); a second use in that time is refused. The unique lookup makes the check and
    /// the insert one atomic step in the store. Object ids start with that time, so the
    /// oldest come first in [`ResourceStore::kv_list`] and expired ones are pruned as we go.
    async fn remember_jti(&self, verified: &jwt::Verified, now: i64) -> AuthResult<()> {
        let until = verified.expires + jwt::CLOCK_SKEW_SECONDS;
        let lookup =
            format!("jti:{}", crypto::sm3::sm3_hex(format!("{}\n{}", verified.client_id, verified.jti).as_bytes()));
        let id = format!("{until:012}-{}", crypto::random_token(9));
        let expired = |body: &str| {
            serde_json::from_str::<Value>(body).ok().and_then(|v| v["until"].as_i64()).is_none_or(|u| u <= now)
        };
        if let Some((old, body)) = self.store.kv_find("jti", &lookup).await?
            && expired(&body)
        {
            self.store.kv_delete("jti", &old).await?;
        }
        let body = json!({"client": verified.client_id, "until": until}).to_string();
        match self.store.kv_put("jti", &id, &body, &[lookup]).await {
            Err(StoreError::Duplicate { .. }) => {
                return Err(oauth(
                    401,
                    "invalid_client",
                    "this assertion's jti was already used: sign a new assertion with a new jti for every request",
                ));
            }
            other => other?,
        }
        for (old, body) in self.store.kv_list("jti", "", 32).await? {
            if !expired(&body) {
                break;
            }
            self.store.kv_delete("jti", &old).await?;
        }
        Ok(())
    }

    /// Checks and counts a login attempt; `Ok(user)` when the password (and TOTP) are right.
    async fn check_login(&self, username: &str, password: &str, totp: Option<&str>) -> AuthResult<User> {
        // One message for every wrong credential, so a reply never confirms that a password was
        // right (or that an account exists).
        let bad = || {
            oauth(
                400,
                "invalid_grant",
                "wrong user name, password or TOTP code (staff also send the code of their authenticator in \
                 parameter totp)",
            )
        };
        let Some(mut user) = self.find_user(username).await? else {
            // Spend the same time as a real check, so timing does not reveal accounts.
            let _ = crypto::password::verify_password(password, dummy_hash());
            return Err(bad());
        };
        let t = self.now();
        if !user.active {
            return Err(oauth(400, "invalid_grant", "this account is disabled"));
        }
        if user.locked_until > t {
            return Err(oauth(
                400,
                "invalid_grant",
                format!(
                    "too many failed logins: the account is locked for {} more minutes",
                    (user.locked_until - t + 59) / 60
                ),
            ));
        }
        let mut ok = crypto::password::verify_password(password, &user.password_hash);
        if ok && user.role != Role::Resident {
            let secret = user
                .totp_secret
                .as_deref()
                .and_then(|s| self.keys().decrypt_field(s, "user.totp").ok())
                .and_then(|s| crypto::totp::base32_decode(&s));
            match (totp, secret) {
                (Some(code), Some(secret)) => ok = crypto::totp::verify(&secret, code, t as u64, 1),
                _ => ok = false,
            }
        }
        if !ok {
            user.failed_logins += 1;
            if user.failed_logins >= self.config.max_failures {
                user.locked_until = t + self.config.lockout;
                user.failed_logins = 0;
            }
            self.save_user(&user).await?;
            return Err(bad());
        }
        if user.failed_logins > 0 {
            user.failed_logins = 0;
            self.save_user(&user).await?;
        }
        Ok(user)
    }

    /// A staff member's fresh second factor: whether `code` is a current code of the
    /// authenticator registered with the account `subject` (`user/{id}`), which must be active
    /// and not locked. A wrong code counts as a failed login towards the lockout, so the codes
    /// cannot be guessed here either.
    pub async fn check_second_factor(&self, subject: &str, code: &str) -> AuthResult<bool> {
        let Some(user_id) = subject.strip_prefix("user/") else { return Ok(false) };
        let user: Option<User> = self.store.kv_get("user", user_id).await?.and_then(|b| serde_json::from_str(&b).ok());
        let t = self.now();
        let Some(mut user) = user.filter(|u| u.active && u.locked_until <= t) else { return Ok(false) };
        let secret = user
            .totp_secret
            .as_deref()
            .and_then(|s| self.keys().decrypt_field(s, "user.totp").ok())
            .and_then(|s| crypto::totp::base32_decode(&s));
        let ok = code.len() <= 16 && secret.is_some_and(|secret| crypto::totp::verify(&secret, code, t as u64, 1));
        if ok && user.failed_logins > 0 {
            user.failed_logins = 0;
            self.save_user(&user).await?;
        } else if !ok {
            user.failed_logins += 1;
            if user.failed_logins >= self.config.max_failures {
                user.locked_until = t + self.config.lockout;
                user.failed_logins = 0;
            }
            self.save_user(&user).await?;
        }
        Ok(ok)
    }

    async fn password_grant(&self, form: &HashMap<String, String>) -> AuthResult<(Session, Value)> {
        let username = form.get("username").ok_or_else(|| oauth(400, "invalid_request", "username is required"))?;
        let password = form.get("password").ok_or_else(|| oauth(400, "invalid_request", "password is required"))?;
        if username.len() > 256 || password.len() > 256 {
            return Err(oauth(400, "invalid_request", "user name or password too long"));
        }
        let user = self.check_login(username, password, form.get("totp").map(String::as_str)).await?;
        let scopes = Self::requested_scopes(form, &Self::user_ceiling(user.role))?;
        let principal = self.principal_of(&user, scopes);
        self.issue(principal, "password", true).await
    }

    async fn refresh_grant(&self, form: &HashMap<String, String>) -> AuthResult<(Session, Value)> {
        let token =
            form.get("refresh_token").ok_or_else(|| oauth(400, "invalid_request", "refresh_token is required"))?;
        let key = token_key(token);
        let record: Option<TokenRecord> =
            self.store.kv_get("refresh", &key).await?.and_then(|b| serde_json::from_str(&b).ok());
        let t = self.now();
        let Some(record) = record.filter(|r| r.expires > t) else {
            return Err(oauth(400, "invalid_grant", "the refresh token is unknown, expired or revoked; log in again"));
        };
        if record.rotated_to.is_some() {
            // Used before: either the client or a thief holds a copy. Ending the whole line of
            // tokens stops the thief; the client logs in again.
            self.revoke_descendants(&key, &record).await?;
            return Err(oauth(
                400,
                "invalid_grant",
                "the refresh token was already used; every token of this session is now revoked; log in again",
            ));
        }
        // Rotation: a refresh token is used once. Of two concurrent uses only one deletes it.
        if !self.store.kv_delete("refresh", &key).await? {
            return Err(oauth(400, "invalid_grant", "the refresh token was already used; log in again"));
        }
        let mut last_activity = record.issued;
        if let Some(access_key) = &record.access_key
            && let Some(access) = self.store.kv_get("access", access_key).await?
            && let Ok(access) = serde_json::from_str::<TokenRecord>(&access)
        {
            last_activity = last_activity.max(access.last_used);
        }
        if t - last_activity > self.config.idle_timeout {
            return Err(oauth(
                400,
                "invalid_grant",
                format!(
                    "the session timed out after {} minutes without activity; log in again",
                    self.config.idle_timeout / 60
                ),
            ));
        }
        let mut principal = record.principal.clone();
        principal.scopes = Scopes::parse(&record.scopes).unwrap_or_default();
        if let Some(user_id) = principal.subject.strip_prefix("user/").map(str::to_string) {
            let user: Option<User> =
                self.store.kv_get("user", &user_id).await?.and_then(|b| serde_json::from_str(&b).ok());
            let Some(user) = user.filter(|u| u.active && u.locked_until <= t) else {
                return Err(oauth(400, "invalid_grant", "the account is disabled or locked"));
            };
            // The account as it is now, not as it was at login: a changed role, organization,
            // region or set of patients (a guardian's child come of age) takes effect at the
            // next refresh, and the scopes never exceed what the current role allows.
            let scopes = principal.scopes.intersect(&Self::user_ceiling(user.role));
            principal = self.principal_of(&user, scopes);
        }
        let (session, body) = self.issue(principal, &record.client_id, true).await?;
        // Keep the used token, marked with its successor, so that a second use is detected.
        let successor = body["refresh_token"].as_str().map(token_key);
        let used = TokenRecord { rotated_to: successor, ..record };
        let text = serde_json::to_string(&used).map_err(|e| AuthError::Invalid(e.to_string()))?;
        self.store.kv_put("refresh", &key, &text, &[]).await?;
        Ok((session, body))
    }

    /// Revokes the refresh tokens that replaced a used one (following `rotated_to`) and the
    /// access tokens issued with each, and the used token itself.
    async fn revoke_descendants(&self, key: &str, record: &TokenRecord) -> AuthResult<()> {
        self.store.kv_delete("refresh", key).await?;
        if let Some(access) = &record.access_key {
            self.store.kv_delete("access", access).await?;
        }
        let mut next = record.rotated_to.clone();
        let mut revoked = 0usize;
        // Bounded: a line of tokens is at most refresh_ttl long, but a loop must not be endless.
        while let Some(refresh_key) = next.take()
            && revoked < 10_000
        {
            let body = self.store.kv_get("refresh", &refresh_key).await?;
            self.store.kv_delete("refresh", &refresh_key).await?;
            if let Some(r) = body.and_then(|b| serde_json::from_str::<TokenRecord>(&b).ok()) {
                if let Some(access) = &r.access_key {
                    self.store.kv_delete("access", access).await?;
                }
                next = r.rotated_to;
            }
            revoked += 1;
        }
        // The cache is keyed by token text, which is not stored; clearing it all is rare
        // (only on a reuse) and makes the revocation immediate in this process.
        if let Ok(mut cache) = self.cache.lock() {
            cache.clear();
        }
        self.audit(self.record(
            &record.principal.subject,
            record.principal.role.code(),
            "revoke",
            "success",
            json!({"token": "refresh", "reason": "refresh token reused", "revoked": revoked + 1}),
        ))
        .await
    }

    /// Sends a one-time login code to a resident's registered phone. Answers the same whether
    /// or not the phone is registered (no account enumeration).
    pub async fn send_sms_code(&self, phone: &str) -> AuthResult<()> {
        let p = normalize_phone(phone);
        if p.len() != 11 {
            return Err(AuthError::Invalid("a mobile number has 11 digits".into()));
        }
        let index = self.keys().blind_index("phone", &p);
        // Limits per number, known or not (the reply must not tell which): one code a minute,
        // SMS_CODES_PER_DAY a day, and no new code after SMS_FAILURES_PER_DAY wrong codes a day,
        // so a new code does not give a guesser five fresh tries.
        let now = self.now();
        let mut limit: Value = self
            .store
            .kv_get("sms-limit", &index)
            .await?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        if limit["window"].as_i64().is_none_or(|w| now - w >= 86_400) {
            limit = json!({"window": now, "sent": 0, "failures": 0, "last": 0});
        }
        if now - limit["last"].as_i64().unwrap_or(0) < 60 {
            return Err(oauth(
                429,
                "slow_down",
                "a code was sent to this number less than a minute ago: wait a minute",
            ));
        }
        if limit["sent"].as_i64().unwrap_or(0) >= SMS_CODES_PER_DAY
            || limit["failures"].as_i64().unwrap_or(0) >= SMS_FAILURES_PER_DAY
        {
            return Err(oauth(
                429,
                "slow_down",
                "too many codes or wrong codes for this number today: try again tomorrow",
            ));
        }
        limit["sent"] = json!(limit["sent"].as_i64().unwrap_or(0) + 1);
        limit["last"] = json!(now);
        self.store.kv_put("sms-limit", &index, &limit.to_string(), &[]).await?;
        let lookup = format!("phone:{index}");
        if self.store.kv_find("user", &lookup).await?.is_none() {
            return Ok(());
        }
        let code: String = crypto::random_bytes(6).iter().map(|b| char::from(b'0' + b % 10)).collect();
        let record = json!({"code": crypto::sm3::sm3_hex(code.as_bytes()), "expires": self.now() + self.config.sms_code_ttl, "attempts": 0});
        self.store.kv_put("sms-code", &self.keys().blind_index("phone", &p), &record.to_string(), &[]).await?;
        self.sms
            .send(&p, &format!("【互通健康】您的登录验证码为 {code}，5分钟内有效。如非本人操作，请忽略。"))
            .map_err(|e| AuthError::Invalid(format!("the SMS could not be sent: {e}")))?;
        Ok(())
    }

    async fn sms_grant(&self, form: &HashMap<String, String>) -> AuthResult<(Session, Value)> {
        let phone = normalize_phone(form.get("phone").map(String::as_str).unwrap_or(""));
        let code = form.get("code").map(String::as_str).unwrap_or("");
        let bad = || oauth(400, "invalid_grant", "wrong or expired code; request a new one");
        let key = self.keys().blind_index("phone", &phone);
        let Some(text) = self.store.kv_get("sms-code", &key).await? else { return Err(bad()) };
        let mut record: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let attempts = record["attempts"].as_i64().unwrap_or(99);
        if record["expires"].as_i64().unwrap_or(0) < self.now() || attempts >= 5 {
            self.store.kv_delete("sms-code", &key).await?;
            return Err(bad());
        }
        let expected = record["code"].as_str().unwrap_or("");
        if !crypto::constant_time_eq(crypto::sm3::sm3_hex(code.as_bytes()).as_bytes(), expected.as_bytes()) {
            record["attempts"] = json!(attempts + 1);
            self.store.kv_put("sms-code", &key, &record.to_string(), &[]).await?;
            if let Some(mut limit) =
                self.store.kv_get("sms-limit", &key).await?.and_then(|t| serde_json::from_str::<Value>(&t).ok())
            {
                limit["failures"] = json!(limit["failures"].as_i64().unwrap_or(0) + 1);
                self.store.kv_put("sms-limit", &key, &limit.to_string(), &[]).await?;
            }
            return Err(bad());
        }
        self.store.kv_delete("sms-code", &key).await?;
        let user: Option<User> =
            self.store.kv_find("user", &format!("phone:{key}")).await?.and_then(|(_, b)| serde_json::from_str(&b).ok());
        let user = user.filter(|u| u.active && u.role == Role::Resident).ok_or_else(bad)?;
        let scopes = Self::requested_scopes(form, &Self::user_ceiling(user.role))?;
        let principal = self.principal_of(&user, scopes);
        self.issue(principal, "sms", true).await
    }

    // ---- bearer tokens -------------------------------------------------------------------

    /// Validates a bearer token: the session it stands for.
    pub async fn authenticate(&self, token: &str) -> AuthResult<Session> {
        self.check_token(token, true).await
    }

    /// [`authenticate`](Self::authenticate); `touch` records the use (a request does, an
    /// introspection by another server does not, so it cannot keep an idle session alive).
    async fn check_token(&self, token: &str, touch: bool) -> AuthResult<Session> {
        if token.is_empty() || token.len() > 512 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AuthError::Unauthenticated("the bearer token is malformed".into()));
        }
        let t = self.now();
        let cache_ttl = CACHE_TTL.as_secs() as i64;
        if let Ok(cache) = self.cache.lock()
            && let Some((at, session)) = cache.get(token)
            && (*at..*at + cache_ttl).contains(&t)
            && session.expires > t
        {
            return Ok(session.clone());
        }
        let key = token_key(token);
        let record: Option<TokenRecord> =
            self.store.kv_get("access", &key).await?.and_then(|b| serde_json::from_str(&b).ok());
        let Some(mut record) = record else {
            return Err(AuthError::Unauthenticated("the access token is unknown or revoked".into()));
        };
        if record.expires <= t {
            return Err(AuthError::Unauthenticated("the access token has expired; get a new one".into()));
        }
        if t - record.last_used > self.config.idle_timeout {
            self.store.kv_delete("access", &key).await?;
            return Err(AuthError::Unauthenticated("the session timed out after inactivity; log in again".into()));
        }
        if touch && t - record.last_used > 60 {
            record.last_used = t;
            let text = serde_json::to_string(&record).map_err(|e| AuthError::Invalid(e.to_string()))?;
            self.store.kv_put("access", &key, &text, &[]).await?;
        }
        let mut principal = record.principal;
        principal.scopes = Scopes::parse(&record.scopes).unwrap_or_default();
        let session = Session { principal: Arc::new(principal), expires: record.expires };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 100_000 {
                cache.retain(|_, (at, s)| t - *at < cache_ttl && s.expires > t);
            }
            cache.insert(token.to_string(), (t, session.clone()));
        }
        Ok(session)
    }

    /// RFC 7662 introspection.
    pub async fn introspect(&self, token: &str) -> AuthResult<Value> {
        Ok(match self.check_token(token, false).await {
            Ok(s) => json!({
                "active": true,
                "scope": s.principal.scopes.to_text(),
                "sub": s.principal.subject,
                "exp": s.expires,
                "token_type": "Bearer",
                "role": s.principal.role.code(),
                "organization": s.principal.organization,
            }),
            Err(AuthError::Unauthenticated(_)) => json!({"active": false}),
            Err(e) => return Err(e),
        })
    }

    /// RFC 7009 revocation (access or refresh token; unknown tokens are not an error).
    pub async fn revoke(&self, token: &str) -> AuthResult<()> {
        let key = token_key(token);
        let a = self.store.kv_delete("access", &key).await?;
        let r = self.store.kv_delete("refresh", &key).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(token);
        }
        if a || r {
            self.audit(self.record(
                "anonymous",
                "",
                "revoke",
                "success",
                json!({"token": if a { "access" } else { "refresh" }}),
            ))
            .await?;
        }
        Ok(())
    }

    /// Authenticates a client for introspection (HTTP Basic or form credentials).
    pub async fn client_ok(&self, id: &str, secret: &str) -> AuthResult<bool> {
        let client: Option<Client> = self.store.kv_get("client", id).await?.and_then(|b| serde_json::from_str(&b).ok());
        Ok(client.is_some_and(|c| c.active && crypto::password::verify_password(secret, &c.secret_hash)))
    }
}

/// The grant type of the resident SMS-code login.
/// Login codes one mobile number can be sent in 24 hours.
pub const SMS_CODES_PER_DAY: i64 = 10;
/// Wrong codes after which a number gets no new code for the rest of its 24 hours.
pub const SMS_FAILURES_PER_DAY: i64 = 10;

pub const SMS_GRANT: &str = "urn:hutong:params:oauth:grant-type:sms-code";

/// An argon2id hash of a random string, checked when the user does not exist.
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| crypto::password::hash_password(&crypto::random_token(16)).unwrap_or_default())
}

/// The SMART configuration document (`/.well-known/smart-configuration`).
pub fn smart_configuration(base: &str) -> Value {
    json!({
        "issuer": base,
        "token_endpoint": format!("{base}/oauth2/token"),
        "introspection_endpoint": format!("{base}/oauth2/introspect"),
        "revocation_endpoint": format!("{base}/oauth2/revoke"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": [jwt::ALG_ES384, jwt::ALG_SM2],
        "grant_types_supported": ["client_credentials", "password", "refresh_token", SMS_GRANT],
        "scopes_supported": ["openid", "fhirUser", "offline_access", "launch/patient", "patient/*.rs", "patient/*.cruds",
                             "user/*.rs", "user/*.cruds", "system/*.rs", "system/*.cruds", "patient/*.read", "user/*.read",
                             "system/*.read", "system/*.*"],
        "capabilities": ["client-confidential-symmetric", "client-confidential-asymmetric", "permission-v1", "permission-v2", "context-standalone-patient"],
        "code_challenge_methods_supported": []
    })
}
