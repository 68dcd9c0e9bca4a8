//! SMART on FHIR scopes, v1 (`patient/Observation.read`, `user/*.write`, `system/*.*`) and v2
//! (`patient/Observation.rs`, `user/*.cruds`). Scopes with v2 query constraints
//! (`patient/Observation.rs?category=…`) are not granted (dropped), which only narrows access.

/// The context a scope applies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeContext {
    Patient,
    User,
    System,
}

/// One interaction class, as SMART v2 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Perm {
    fn bit(self) -> u8 {
        match self {
            Perm::Create => 1,
            Perm::Read => 2,
            Perm::Update => 4,
            Perm::Delete => 8,
            Perm::Search => 16,
        }
    }

    pub fn letter(self) -> char {
        match self {
            Perm::Create => 'c',
            Perm::Read => 'r',
            Perm::Update => 'u',
            Perm::Delete => 'd',
            Perm::Search => 's',
        }
    }
}

/// A granted resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    pub context: ScopeContext,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    perms: u8,
}

/// A parsed scope string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    pub resources: Vec<ResourceScope>,
    /// Non-resource scopes kept verbatim (`openid`, `fhirUser`, `offline_access`, `launch/patient`…).
    pub other: Vec<String>,
}

/// Parses one resource scope; `None` when it is not one (or is not grantable).
fn parse_resource_scope(scope: &str) -> Option<ResourceScope> {
    let (context, rest) = scope.split_once('/')?;
    let context = match context {
        "patient" => ScopeContext::Patient,
        "user" => ScopeContext::User,
        "system" => ScopeContext::System,
        _ => return None,
    };
    if rest.contains('?') {
        return None;
    }
    let (ty, perms) = rest.rsplit_once('.')?;
    let resource_type = match ty {
        "*" => None,
        t if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()) && t.starts_with(char::is_uppercase) => {
            Some(t.to_string())
        }
        _ => return None,
    };
    let bits = match perms {
        "read" => Perm::Read.bit() | Perm::Search.bit(),
        "write" => Perm::Create.bit() | Perm::Update.bit() | Perm::Delete.bit(),
        "*" => 31,
        v2 => {
            // Letters must appear in the order c r u d s, each at most once.
            let mut bits = 0u8;
            let mut last = 0usize;
            for c in v2.chars() {
                let pos = "cruds".find(c)? + 1;
                if pos <= last {
                    return None;
                }
                last = pos;
                bits |= 1 << (pos - 1);
            }
            if bits == 0 {
                return None;
            }
            bits
        }
    };
    Some(ResourceScope { context, resource_type, perms: bits })
}

impl Scopes {
    /// Parses a space-separated scope string. Malformed resource scopes are rejected with the
    /// offending scope named, so a client learns what it asked wrongly.
    pub fn parse(text: &str) -> Result<Scopes, String> {
        let mut scopes = Scopes::default();
        for scope in text.split_whitespace() {
            if scope.starts_with("patient/") || scope.starts_with("user/") || scope.starts_with("system/") {
                if scope.contains('?') {
                    continue; // v2 query-constrained scopes are not granted
                }
                let parsed = parse_resource_scope(scope).ok_or_else(|| {
                    format!(
                        "scope '{scope}' is not a SMART scope (expected e.g. patient/Observation.read, \
                         user/*.rs, system/*.*)"
                    )
                })?;
                scopes.resources.push(parsed);
            } else if scope.len() <= 64 && scope.chars().all(|c| c.is_ascii_graphic()) {
                scopes.other.push(scope.to_string());
            } else {
                return Err(format!("scope '{}' is not valid", scope.chars().take(64).collect::<String>()));
            }
        }
        Ok(scopes)
    }

    /// Whether any scope grants `perm` on `resource_type`.
    pub fn allows(&self, resource_type: &str, perm: Perm) -> bool {
        self.resources
            .iter()
            .any(|s| s.perms & perm.bit() != 0 && s.resource_type.as_deref().is_none_or(|t| t == resource_type))
    }

    /// Whether any resource scope has this context.
    pub fn has_context(&self, context: ScopeContext) -> bool {
        self.resources.iter().any(|s| s.context == context)
    }

    /// Keeps only the scopes that `ceiling` also grants (a client asks for a subset of what it
    /// is allowed). Non-resource scopes are kept if the ceiling lists them.
    pub fn intersect(&self, ceiling: &Scopes) -> Scopes {
        let resources = self
            .resources
            .iter()
            .filter_map(|s| {
                let allowed: u8 = ceiling
                    .resources
                    .iter()
                    .filter(|c| {
                        c.context == s.context && (c.resource_type.is_none() || c.resource_type == s.resource_type)
                    })
                    .fold(0, |acc, c| acc | c.perms);
                let perms = s.perms & allowed;
                (perms != 0).then(|| ResourceScope { perms, ..s.clone() })
            })
            .collect();
        let other = self.other.iter().filter(|o| ceiling.other.contains(o)).cloned().collect();
        Scopes { resources, other }
    }

    /// The canonical text (v2 letters), e.g. `patient/Observation.rs system/*.cruds`.
    pub fn to_text(&self) -> String {
        let mut parts: Vec<String> = self
            .resources
            .iter()
            .map(|s| {
                let context = match s.context {
                    ScopeContext::Patient => "patient",
                    ScopeContext::User => "user",
                    ScopeContext::System => "system",
                };
                let letters: String = [Perm::Create, Perm::Read, Perm::Update, Perm::Delete, Perm::Search]
                    .into_iter()
                    .filter(|p| s.perms & p.bit() != 0)
                    .map(Perm::letter)
                    .collect();
                format!("{context}/{}.{letters}", s.resource_type.as_deref().unwrap_or("*"))
            })
            .collect();
        parts.extend(self.other.iter().cloned());
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_scopes() {
        let s = Scopes::parse("openid fhirUser patient/Observation.read user/*.write system/Patient.*").unwrap();
        assert!(s.allows("Observation", Perm::Read) && s.allows("Observation", Perm::Search));
        assert!(!s.allows("Condition", Perm::Read));
        assert!(s.allows("Condition", Perm::Create) && s.allows("Encounter", Perm::Delete));
        assert!(s.allows("Patient", Perm::Search));
        assert_eq!(s.other, ["openid", "fhirUser"]);
        let v2 = Scopes::parse("patient/Observation.rs user/Encounter.cud").unwrap();
        assert!(v2.allows("Observation", Perm::Search) && !v2.allows("Observation", Perm::Create));
        assert!(v2.allows("Encounter", Perm::Update) && !v2.allows("Encounter", Perm::Read));
        assert_eq!(v2.to_text(), "patient/Observation.rs user/Encounter.cud");
    }

    #[test]
    fn malformed_scopes_are_refused_and_constrained_ones_dropped() {
        for bad in ["patient/Observation.rx", "user/*.sr", "system/observation.read", "patient/.read", "user/*.cc"] {
            assert!(Scopes::parse(bad).is_err(), "{bad}");
        }
        let s = Scopes::parse("patient/Observation.rs?category=laboratory").unwrap();
        assert!(s.resources.is_empty());
        assert!(Scopes::parse(&"x".repeat(1000)).is_err());
    }

    #[test]
    fn intersection_never_widens() {
        let ceiling = Scopes::parse("system/Patient.rs system/Observation.read").unwrap();
        let asked = Scopes::parse("system/*.* system/Patient.cruds").unwrap();
        let granted = asked.intersect(&ceiling);
        assert!(!granted.allows("Patient", Perm::Create));
        assert!(!granted.allows("Encounter", Perm::Read), "a wildcard request gets no more than the ceiling");
        assert!(granted.allows("Patient", Perm::Read));
        let asked = Scopes::parse("system/Observation.rs").unwrap();
        assert!(asked.intersect(&ceiling).allows("Observation", Perm::Search));
    }
}
