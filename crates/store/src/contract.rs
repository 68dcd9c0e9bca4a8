//! The contract test suite every [`ResourceStore`] backend must pass.
//!
//! A backend's integration tests invoke [`contract_suite!`](crate::contract_suite) with an async
//! expression that yields a fresh, empty store; the macro expands to one `#[tokio::test]` per
//! case, so a failure names the behaviour that broke. Index entries are built by hand here (not
//! by the extractor) so that the suite tests storage and search semantics alone; queries are
//! parsed with `fhir::search::parse`, whose own tests pin the parsed form.

use std::sync::Arc;

use fhir::{IndexEntry, IndexValue};

use crate::{Ctx, HistoryQuery, ResourceStore, StoreError, WriteMethod, WriteOp};

/// Expands to one `#[tokio::test]` per contract case. `$make` is an async expression giving a
/// fresh, empty `Arc<dyn ResourceStore>` (or an `Option` of one; `None` skips the case).
#[macro_export]
macro_rules! contract_suite {
    ($make:expr) => {
        $crate::contract_suite!(@cases $make;
            create_read_vread, update_replaces_index, delete_leaves_tombstone, conflict_rolls_back_everything,
            history_scopes_and_paging, read_many_and_current_versions, compartments, outbox_and_cursors,
            search_strings, search_tokens, search_references_chains_has, search_dates, search_numbers_quantities,
            search_uri_composite_missing, search_sort_paging_total, search_system_level,
            audit_chain_in_the_write_transaction, audit_concurrent_appends_chain, audit_prune_keeps_an_anchored_tail,
            security_objects_and_lookups, concurrent_commits_fail_alone, concurrent_creates_of_one_id_fail_alone,
            single_use_lookup_with_audit
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let made = $make.await;
                // A backend whose server is not configured yields `None` and skips.
                if let Some(store) = $crate::contract::MaybeStore::into_store(made) {
                    $crate::contract::$case(store).await;
                }
            }
        )*
    };
}

/// What a contract factory may yield: a store, or `None` when the backend's server is not
/// configured on this machine (the backend's tests decide whether that is allowed).
pub trait MaybeStore {
    fn into_store(self) -> Option<Arc<dyn ResourceStore>>;
}

impl MaybeStore for Arc<dyn ResourceStore> {
    fn into_store(self) -> Option<Arc<dyn ResourceStore>> {
        Some(self)
    }
}

impl MaybeStore for Option<Arc<dyn ResourceStore>> {
    fn into_store(self) -> Option<Arc<dyn ResourceStore>> {
        self
    }
}

fn ctx() -> Ctx {
    Ctx::system()
}

/// A write op for `type/id` at `version` with a minimal body.
pub fn op(resource_type: &str, id: &str, version: i64, index: Vec<IndexEntry>, compartments: &[&str]) -> WriteOp {
    WriteOp {
        resource_type: resource_type.into(),
        id: id.into(),
        version,
        last_updated: 1_700_000_000_000 + version * 1000,
        method: if version == 1 { WriteMethod::Create } else { WriteMethod::Update },
        body: Some(format!(r#"{{"resourceType":"{resource_type}","id":"{id}","meta":{{"versionId":"{version}"}}}}"#)),
        index,
        compartments: compartments.iter().map(|s| s.to_string()).collect(),
        parsed: None,
    }
}

fn delete_op(resource_type: &str, id: &str, version: i64) -> WriteOp {
    WriteOp {
        method: WriteMethod::Delete,
        body: None,
        index: vec![],
        compartments: vec![],
        ..op(resource_type, id, version, vec![], &[])
    }
}

pub fn string(param: &str, s: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::String { normalized: fhir::normalize::normalize_string(s), exact: s.into() },
    }
}

pub fn token(param: &str, system: Option<&str>, code: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Token {
            system: system.map(Into::into),
            code: Some(code.into()),
            text: Some(format!("text {code}")),
        },
    }
}

pub fn reference(param: &str, target_type: &str, target_id: &str) -> IndexEntry {
    IndexEntry {
        param: param.into(),
        value: IndexValue::Reference {
            target_type: Some(target_type.into()),
            target_id: Some(target_id.into()),
            version: None,
            url: None,
            identifier_system: None,
            identifier_value: None,
        },
    }
}

pub fn date(param: &str, text: &str) -> IndexEntry {
    let (low, high) = fhir::normalize::date_range(text).expect("valid test date");
    IndexEntry { param: param.into(), value: IndexValue::Date { low, high } }
}

pub fn quantity(param: &str, text: &str, code: &str) -> IndexEntry {
    let (value, low, high) = fhir::normalize::decimal_range(text).expect("valid test number");
    IndexEntry {
        param: param.into(),
        value: IndexValue::Quantity {
            value,
            low,
            high,
            system: Some("http://unitsofmeasure.org".into()),
            code: Some(code.into()),
            unit: Some(code.into()),
        },
    }
}

async fn ids(store: &Arc<dyn ResourceStore>, resource_type: Option<&str>, query: &[(&str, &str)]) -> Vec<String> {
    let pairs: Vec<(String, String)> = query.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let parsed = fhir::search::parse(fhir::Definitions::r4(), resource_type, &pairs, &Default::default())
        .unwrap_or_else(|e| panic!("test query {query:?} must parse: {e:?}"));
    let page = store.search(&ctx(), &parsed.query).await.expect("search");
    page.resources.into_iter().map(|r| r.id).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

pub async fn create_read_vread(store: Arc<dyn ResourceStore>) {
    store.commit(&ctx(), vec![op("Patient", "p1", 1, vec![], &["p1"])]).await.unwrap();
    store.commit(&ctx(), vec![op("Patient", "p1", 2, vec![], &["p1"])]).await.unwrap();
    let current = store.read(&ctx(), "Patient", "p1").await.unwrap().expect("exists");
    assert_eq!((current.version, current.deleted, current.method), (2, false, WriteMethod::Update));
    assert!(current.body.as_deref().unwrap().contains(r#""versionId":"2""#));
    let v1 = store.vread(&ctx(), "Patient", "p1", 1).await.unwrap().expect("version 1");
    assert_eq!((v1.version, v1.method, v1.last_updated), (1, WriteMethod::Create, 1_700_000_001_000));
    assert!(v1.body.as_deref().unwrap().contains(r#""versionId":"1""#), "an old version keeps its own JSON");
    let v2 = store.vread(&ctx(), "Patient", "p1", 2).await.unwrap().expect("version 2");
    assert_eq!(v2.body, current.body, "the current version read through history");
    assert!(store.vread(&ctx(), "Patient", "p1", 3).await.unwrap().is_none());
    assert!(store.read(&ctx(), "Patient", "nope").await.unwrap().is_none());
    assert!(store.read(&ctx(), "Observation", "p1").await.unwrap().is_none(), "ids are per type");
}

pub async fn update_replaces_index(store: Arc<dyn ResourceStore>) {
    store.commit(&ctx(), vec![op("Patient", "p1", 1, vec![string("name", "Wang")], &["p1"])]).await.unwrap();
    assert_eq!(ids(&store, Some("Patient"), &[("name", "wang")]).await, ["p1"]);
    store.commit(&ctx(), vec![op("Patient", "p1", 2, vec![string("name", "Li")], &["p1"])]).await.unwrap();
    assert!(ids(&store, Some("Patient"), &[("name", "wang")]).await.is_empty(), "old version's index is gone");
    assert_eq!(ids(&store, Some("Patient"), &[("name", "li")]).await, ["p1"]);
}

pub async fn delete_leaves_tombstone(store: Arc<dyn ResourceStore>) {
    store.commit(&ctx(), vec![op("Patient", "p1", 1, vec![string("name", "Wang")], &["p1"])]).await.unwrap();
    store.commit(&ctx(), vec![delete_op("Patient", "p1", 2)]).await.unwrap();
    let tomb = store.read(&ctx(), "Patient", "p1").await.unwrap().expect("tombstone");
    assert!(tomb.deleted && tomb.body.is_none());
    assert_eq!(tomb.method, WriteMethod::Delete);
    assert!(ids(&store, Some("Patient"), &[("name", "wang")]).await.is_empty());
    assert!(store.read_many(&ctx(), &[("Patient".into(), "p1".into())]).await.unwrap().is_empty());
    // Re-creating after a delete continues the version sequence.
    store.commit(&ctx(), vec![op("Patient", "p1", 3, vec![], &["p1"])]).await.unwrap();
    assert_eq!(store.read(&ctx(), "Patient", "p1").await.unwrap().unwrap().version, 3);
}

pub async fn conflict_rolls_back_everything(store: Arc<dyn ResourceStore>) {
    store.commit(&ctx(), vec![op("Patient", "p1", 1, vec![], &["p1"])]).await.unwrap();
    let before = store.outbox_read(0, 100).await.unwrap().len();
    let err = store
        .commit(
            &ctx(),
            vec![
                op("Patient", "p2", 1, vec![string("name", "Zhao")], &["p2"]),
                op("Patient", "p1", 1, vec![], &["p1"]), // p1 is at version 1 already
            ],
        )
        .await
        .expect_err("conflict");
    assert!(matches!(err, StoreError::VersionConflict { expected: 0, actual: 1, .. }), "{err:?}");
    assert!(store.read(&ctx(), "Patient", "p2").await.unwrap().is_none(), "p2 was rolled back");
    assert!(ids(&store, Some("Patient"), &[("name", "zhao")]).await.is_empty(), "no index rows left");
    assert_eq!(store.outbox_read(0, 100).await.unwrap().len(), before, "no outbox events left");
    let skip = store.commit(&ctx(), vec![op("Patient", "p3", 2, vec![], &[])]).await;
    assert!(matches!(skip, Err(StoreError::VersionConflict { .. })), "cannot skip versions");
}

pub async fn history_scopes_and_paging(store: Arc<dyn ResourceStore>) {
    store.commit(&ctx(), vec![op("Patient", "p1", 1, vec![], &["p1"])]).await.unwrap();
    store.commit(&ctx(), vec![op("Patient", "p1", 2, vec![], &["p1"])]).await.unwrap();
    store.commit(&ctx(), vec![op("Observation", "o1", 1, vec![], &["p1"])]).await.unwrap();
    store.commit(&ctx(), vec![delete_op("Observation", "o1", 2)]).await.unwrap();
    let instance =
        HistoryQuery { resource_type: Some("Patient".into()), id: Some("p1".into()), count: 10, ..Default::default() };
    let page = store.history(&ctx(), &instance).await.unwrap();
    assert_eq!(page.total, Some(2));
    assert_eq!(page.resources.iter().map(|r| r.version).collect::<Vec<_>>(), [2, 1], "newest first");
    for r in &page.resources {
        let body = r.body.as_deref().expect("every non-deleted version has its JSON");
        assert!(body.contains(&format!(r#""versionId":"{}""#, r.version)));
    }
    let typed = HistoryQuery { resource_type: Some("Observation".into()), count: 10, ..Default::default() };
    let page = store.history(&ctx(), &typed).await.unwrap();
    assert_eq!(page.total, Some(2));
    assert!(page.resources[0].deleted);
    let system = HistoryQuery { count: 2, offset: 2, ..Default::default() };
    let page = store.history(&ctx(), &system).await.unwrap();
    assert_eq!(page.total, Some(4));
    assert_eq!(page.resources.len(), 2);
    let since = HistoryQuery { since: Some(1_700_000_002_000), count: 10, ..Default::default() };
    assert_eq!(store.history(&ctx(), &since).await.unwrap().total, Some(2), "only version-2 writes are that recent");
}

pub async fn read_many_and_current_versions(store: Arc<dyn ResourceStore>) {
    store
        .commit(&ctx(), vec![op("Patient", "a", 1, vec![], &["a"]), op("Patient", "b", 1, vec![], &["b"])])
        .await
        .unwrap();
    store.commit(&ctx(), vec![delete_op("Patient", "b", 2)]).await.unwrap();
    let keys =
        vec![("Patient".to_string(), "a".to_string()), ("Patient".into(), "b".into()), ("Patient".into(), "c".into())];
    assert_eq!(store.current_versions(&ctx(), &keys).await.unwrap(), [Some((1, false)), Some((2, true)), None]);
    let many = store.read_many(&ctx(), &keys).await.unwrap();
    assert_eq!(many.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a"]);
}

pub async fn compartments(store: Arc<dyn ResourceStore>) {
    store
        .commit(
            &ctx(),
            vec![
                op("Patient", "p1", 1, vec![], &["p1"]),
                op("Observation", "o1", 1, vec![], &["p1"]),
                op("Encounter", "e1", 1, vec![], &["p1", "p2"]),
                op("Observation", "o2", 1, vec![], &["p2"]),
                op("Organization", "h1", 1, vec![], &[]),
            ],
        )
        .await
        .unwrap();
    let all = store.patient_compartment(&ctx(), "p1", None, &[]).await.unwrap();
    let mut got: Vec<String> = all.iter().map(|r| format!("{}/{}", r.resource_type, r.id)).collect();
    got.sort();
    assert_eq!(got, ["Encounter/e1", "Observation/o1", "Patient/p1"]);
    let obs = store.patient_compartment(&ctx(), "p1", None, &["Observation".into()]).await.unwrap();
    assert_eq!(obs.len(), 1);
    store.commit(&ctx(), vec![delete_op("Observation", "o1", 2)]).await.unwrap();
    assert_eq!(store.patient_compartment(&ctx(), "p1", None, &[]).await.unwrap().len(), 2, "deleted ones leave");
    let recent = store.patient_compartment(&ctx(), "p2", Some(1_700_000_001_500), &[]).await.unwrap();
    assert!(recent.is_empty());
}

pub async fn outbox_and_cursors(store: Arc<dyn ResourceStore>) {
    store
        .commit(&ctx(), vec![op("Patient", "a", 1, vec![], &["a"]), op("Patient", "b", 1, vec![], &["b"])])
        .await
        .unwrap();
    store.commit(&ctx(), vec![delete_op("Patient", "a", 2)]).await.unwrap();
    let events = store.outbox_read(0, 10).await.unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!((events[2].id.as_str(), events[2].method, events[2].version), ("a", WriteMethod::Delete, 2));
    assert_eq!(store.outbox_read(events[0].seq, 10).await.unwrap().len(), 2);
    assert_eq!(store.outbox_read(0, 1).await.unwrap().len(), 1);
    assert_eq!(store.cursor_get("subscriptions").await.unwrap(), 0);
    store.cursor_set("subscriptions", events[1].seq).await.unwrap();
    store.cursor_set("subscriptions", events[0].seq).await.unwrap();
    assert_eq!(store.cursor_get("subscriptions").await.unwrap(), events[1].seq, "cursors never move back");
    assert_eq!(store.cursor_get("federation").await.unwrap(), 0, "cursors are per consumer");
}

async fn seed_people(store: &Arc<dyn ResourceStore>) {
    store
        .commit(
            &ctx(),
            vec![
                op(
                    "Patient",
                    "p1",
                    1,
                    vec![
                        string("name", "张三"),
                        string("family", "Zhāng"),
                        token("gender", None, "male"),
                        token("identifier", Some("urn:oid:2.16.156.10011.1.3"), "110105194912310021"),
                        date("birthdate", "1949-12-31"),
                        reference("organization", "Organization", "h1"),
                    ],
                    &["p1"],
                ),
                op(
                    "Patient",
                    "p2",
                    1,
                    vec![
                        string("name", "李四"),
                        string("family", "Li"),
                        token("gender", None, "female"),
                        token("identifier", Some("urn:oid:other"), "110105194912310021"),
                        date("birthdate", "1990-05"),
                        reference("organization", "Organization", "h2"),
                    ],
                    &["p2"],
                ),
                op("Patient", "p3", 1, vec![string("family", "Zhangsun"), token("gender", None, "other")], &["p3"]),
                op("Organization", "h1", 1, vec![string("name", "福州市第一医院")], &[]),
                op("Organization", "h2", 1, vec![string("name", "厦门大学附属医院")], &[]),
            ],
        )
        .await
        .unwrap();
}

pub async fn search_strings(store: Arc<dyn ResourceStore>) {
    seed_people(&store).await;
    assert_eq!(
        sorted(ids(&store, Some("Patient"), &[("family", "zhang")]).await),
        ["p1", "p3"],
        "prefix, accents folded"
    );
    assert_eq!(ids(&store, Some("Patient"), &[("family:exact", "Zhāng")]).await, ["p1"]);
    assert!(ids(&store, Some("Patient"), &[("family:exact", "zhāng")]).await.is_empty(), ":exact is case-sensitive");
    assert_eq!(ids(&store, Some("Patient"), &[("family:contains", "angs")]).await, ["p3"]);
    assert_eq!(ids(&store, Some("Patient"), &[("name", "张")]).await, ["p1"]);
    assert_eq!(sorted(ids(&store, Some("Patient"), &[("family", "li,zhangs")]).await), ["p2", "p3"], "comma is OR");
    assert!(ids(&store, Some("Patient"), &[("family", "li"), ("gender", "male")]).await.is_empty(), "& is AND");
    assert!(ids(&store, Some("Patient"), &[("family", "100%")]).await.is_empty(), "LIKE wildcards are literal");
}

pub async fn search_tokens(store: Arc<dyn ResourceStore>) {
    seed_people(&store).await;
    assert_eq!(ids(&store, Some("Patient"), &[("gender", "male")]).await, ["p1"]);
    assert_eq!(sorted(ids(&store, Some("Patient"), &[("identifier", "110105194912310021")]).await), ["p1", "p2"]);
    assert_eq!(
        ids(&store, Some("Patient"), &[("identifier", "urn:oid:2.16.156.10011.1.3|110105194912310021")]).await,
        ["p1"]
    );
    assert_eq!(ids(&store, Some("Patient"), &[("identifier", "urn:oid:other|")]).await, ["p2"]);
    assert!(ids(&store, Some("Patient"), &[("gender", "|male")]).await.contains(&"p1".to_string()), "no system");
    assert_eq!(sorted(ids(&store, Some("Patient"), &[("gender:not", "male")]).await), ["p2", "p3"]);
    assert_eq!(ids(&store, Some("Patient"), &[("gender:text", "text fem")]).await, ["p2"]);
    assert_eq!(ids(&store, Some("Patient"), &[("_id", "p2")]).await, ["p2"]);
    assert_eq!(sorted(ids(&store, Some("Patient"), &[("_id", "p2,p3")]).await), ["p2", "p3"]);
}

pub async fn search_references_chains_has(store: Arc<dyn ResourceStore>) {
    seed_people(&store).await;
    store
        .commit(
            &ctx(),
            vec![
                op(
                    "Observation",
                    "o1",
                    1,
                    vec![reference("subject", "Patient", "p1"), token("code", Some("http://loinc.org"), "8480-6")],
                    &["p1"],
                ),
                op(
                    "Observation",
                    "o2",
                    1,
                    vec![reference("subject", "Patient", "p2"), token("code", Some("http://loinc.org"), "2339-0")],
                    &["p2"],
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ids(&store, Some("Observation"), &[("subject", "Patient/p1")]).await, ["o1"]);
    assert_eq!(ids(&store, Some("Observation"), &[("subject", "p2")]).await, ["o2"], "id alone");
    assert_eq!(ids(&store, Some("Observation"), &[("subject:Patient", "p2")]).await, ["o2"]);
    assert!(ids(&store, Some("Observation"), &[("subject", "Group/p2")]).await.is_empty());
    assert_eq!(ids(&store, Some("Observation"), &[("subject:Patient.name", "李")]).await, ["o2"], "chain");
    assert_eq!(
        ids(&store, Some("Observation"), &[("subject:Patient.organization.name", "福州")]).await,
        ["o1"],
        "two-level chain"
    );
    assert_eq!(
        ids(&store, Some("Patient"), &[("_has:Observation:subject:code", "8480-6")]).await,
        ["p1"],
        "reverse chain"
    );
    assert!(ids(&store, Some("Patient"), &[("_has:Observation:subject:code", "0000")]).await.is_empty());
    store.commit(&ctx(), vec![delete_op("Patient", "p1", 2)]).await.unwrap();
    assert!(
        ids(&store, Some("Observation"), &[("subject:Patient.name", "张")]).await.is_empty(),
        "deleted targets do not match"
    );
}

pub async fn search_dates(store: Arc<dyn ResourceStore>) {
    seed_people(&store).await;
    let q = |v: &'static str| [("birthdate", v)];
    assert_eq!(ids(&store, Some("Patient"), &q("1949-12-31")).await, ["p1"]);
    assert_eq!(ids(&store, Some("Patient"), &q("1949")).await, ["p1"], "eq: the year contains the day");
    assert!(ids(&store, Some("Patient"), &q("1990-05-10")).await.is_empty(), "eq: a day does not contain a month");
    assert_eq!(ids(&store, Some("Patient"), &q("gt1950")).await, ["p2"]);
    assert_eq!(ids(&store, Some("Patient"), &q("lt1950")).await, ["p1"]);
    assert_eq!(sorted(ids(&store, Some("Patient"), &q("ge1949-12-31")).await), ["p1", "p2"]);
    assert_eq!(ids(&store, Some("Patient"), &q("le1949-12-31")).await, ["p1"]);
    assert_eq!(ids(&store, Some("Patient"), &q("sa1960")).await, ["p2"]);
    assert_eq!(ids(&store, Some("Patient"), &q("eb1960")).await, ["p1"]);
    assert_eq!(ids(&store, Some("Patient"), &q("ne1949")).await, ["p2"]);
    assert_eq!(
        ids(&store, Some("Patient"), &[("birthdate", "ge1990-01-01"), ("birthdate", "le1990-12-31")]).await,
        ["p2"],
        "range"
    );
    assert_eq!(sorted(ids(&store, Some("Patient"), &[("_lastUpdated", "gt2000")]).await), ["p1", "p2", "p3"]);
}

pub async fn search_numbers_quantities(store: Arc<dyn ResourceStore>) {
    store
        .commit(
            &ctx(),
            vec![
                op("Observation", "a", 1, vec![quantity("value-quantity", "5.4", "mg")], &[]),
                op("Observation", "b", 1, vec![quantity("value-quantity", "120", "mm[Hg]")], &[]),
                op(
                    "RiskAssessment",
                    "r1",
                    1,
                    vec![IndexEntry {
                        param: "probability".into(),
                        value: IndexValue::Number { value: 0.8, low: 0.75, high: 0.85 },
                    }],
                    &[],
                ),
            ],
        )
        .await
        .unwrap();
    let obs = |v: &'static str| [("value-quantity", v)];
    assert_eq!(ids(&store, Some("Observation"), &obs("5.4")).await, ["a"]);
    assert_eq!(ids(&store, Some("Observation"), &obs("5")).await, ["a"], "5 means [4.5, 5.5)");
    assert!(ids(&store, Some("Observation"), &obs("5.0")).await.is_empty(), "5.0 means [4.95, 5.05)");
    assert_eq!(ids(&store, Some("Observation"), &obs("gt100")).await, ["b"]);
    assert_eq!(ids(&store, Some("Observation"), &obs("lt100||mg")).await, ["a"]);
    assert_eq!(ids(&store, Some("Observation"), &obs("120|http://unitsofmeasure.org|mm[Hg]")).await, ["b"]);
    assert!(ids(&store, Some("Observation"), &obs("120||mg")).await.is_empty(), "unit must match");
    assert_eq!(ids(&store, Some("Observation"), &obs("ap110")).await, ["b"], "within 10%");
    assert_eq!(ids(&store, Some("RiskAssessment"), &[("probability", "ge0.8")]).await, ["r1"]);
    assert!(ids(&store, Some("RiskAssessment"), &[("probability", "gt0.8")]).await.is_empty());
}

pub async fn search_uri_composite_missing(store: Arc<dyn ResourceStore>) {
    let composite = |code: &str, value: &str| {
        let IndexValue::Token { system, code, text } = token("x", Some("http://loinc.org"), code).value else {
            unreachable!()
        };
        IndexEntry {
            param: "code-value-quantity".into(),
            value: IndexValue::Composite {
                components: vec![IndexValue::Token { system, code, text }, quantity("x", value, "mm[Hg]").value],
            },
        }
    };
    store
        .commit(
            &ctx(),
            vec![
                op(
                    "ValueSet",
                    "v1",
                    1,
                    vec![IndexEntry {
                        param: "url".into(),
                        value: IndexValue::Uri { uri: "http://example.org/fhir/ValueSet/a".into() },
                    }],
                    &[],
                ),
                op("Observation", "bp1", 1, vec![composite("8480-6", "150"), token("code", None, "8480-6")], &[]),
                op("Observation", "bp2", 1, vec![composite("8480-6", "110")], &[]),
                op("Observation", "bp3", 1, vec![composite("8462-4", "150")], &[]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ids(&store, Some("ValueSet"), &[("url", "http://example.org/fhir/ValueSet/a")]).await, ["v1"]);
    assert!(ids(&store, Some("ValueSet"), &[("url", "http://example.org/fhir")]).await.is_empty(), "uri is exact");
    assert_eq!(ids(&store, Some("ValueSet"), &[("url:below", "http://example.org/fhir")]).await, ["v1"]);
    assert_eq!(
        ids(&store, Some("ValueSet"), &[("url:above", "http://example.org/fhir/ValueSet/a/extra")]).await,
        ["v1"]
    );
    assert_eq!(
        ids(&store, Some("Observation"), &[("code-value-quantity", "http://loinc.org|8480-6$gt140")]).await,
        ["bp1"]
    );
    assert_eq!(ids(&store, Some("Observation"), &[("code-value-quantity", "8480-6$lt140")]).await, ["bp2"]);
    assert_eq!(sorted(ids(&store, Some("Observation"), &[("code:missing", "true")]).await), ["bp2", "bp3"]);
    assert_eq!(ids(&store, Some("Observation"), &[("code:missing", "false")]).await, ["bp1"]);
}

pub async fn search_sort_paging_total(store: Arc<dyn ResourceStore>) {
    let mut ops = Vec::new();
    for i in 0..25 {
        let family = ["Wang", "Li", "Zhang"][i % 3];
        let day = format!("19{:02}-01-01", 50 + i);
        ops.push(op("Patient", &format!("p{i:02}"), 1, vec![string("family", family), date("birthdate", &day)], &[]));
    }
    store.commit(&ctx(), ops).await.unwrap();
    let pairs = |extra: &[(&str, &str)]| -> fhir::search::SearchQuery {
        let mut p: Vec<(String, String)> =
            vec![("_sort".into(), "family,-birthdate".into()), ("_count".into(), "10".into())];
        p.extend(extra.iter().map(|(a, b)| (a.to_string(), b.to_string())));
        fhir::search::parse(fhir::Definitions::r4(), Some("Patient"), &p, &Default::default()).unwrap().query
    };
    let first = store.search(&ctx(), &pairs(&[])).await.unwrap();
    assert_eq!(first.total, Some(25));
    assert_eq!(first.resources.len(), 10);
    // Li (i % 3 == 1) first, youngest first within.
    assert_eq!(first.resources[0].id, "p22");
    assert_eq!(first.resources[1].id, "p19");
    let mut all: Vec<String> = Vec::new();
    for offset in ["0", "10", "20"] {
        let page = store.search(&ctx(), &pairs(&[("_offset", offset)])).await.unwrap();
        all.extend(page.resources.into_iter().map(|r| r.id));
    }
    assert_eq!(all.len(), 25);
    let mut distinct = all.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 25, "pages neither overlap nor skip");
    let no_total = store.search(&ctx(), &pairs(&[("_total", "none")])).await.unwrap();
    assert_eq!(no_total.total, None);
    let zero = store.search(&ctx(), &pairs(&[("_count", "0")])).await.unwrap();
    assert!(zero.resources.is_empty());
    assert_eq!(zero.total, Some(25));
}

pub async fn search_system_level(store: Arc<dyn ResourceStore>) {
    seed_people(&store).await;
    let mut tagged = op("Observation", "o9", 1, vec![token("_tag", Some("http://example.org/tags"), "demo")], &[]);
    tagged.last_updated = 1_800_000_000_000;
    store.commit(&ctx(), vec![tagged]).await.unwrap();
    assert_eq!(ids(&store, None, &[("_tag", "demo")]).await, ["o9"]);
    assert_eq!(sorted(ids(&store, None, &[("_type", "Organization")]).await), ["h1", "h2"]);
    assert_eq!(ids(&store, None, &[("_lastUpdated", "gt2025-01-01")]).await, ["o9"]);
}

fn audit_record(action: &str, patients: &[&str]) -> crate::AuditRecord {
    crate::AuditRecord {
        recorded: 1_700_000_000_000,
        action: action.into(),
        outcome: "success".into(),
        actor: "user/u1".into(),
        role: "doctor".into(),
        organization: "Organization/h1".into(),
        purpose: "TREAT".into(),
        entity: "Patient/p1".into(),
        patients: patients.iter().map(|p| p.to_string()).collect(),
        detail: r#"{"request":"r1"}"#.into(),
    }
}

pub async fn audit_chain_in_the_write_transaction(store: Arc<dyn ResourceStore>) {
    assert_eq!(store.audit_head().await.unwrap(), (0, crate::audit::GENESIS_HASH.to_string()));
    store
        .commit_audited(&ctx(), vec![op("Patient", "p1", 1, vec![], &["p1"])], vec![audit_record("create", &["p1"])])
        .await
        .unwrap();
    store
        .commit_audited(&ctx(), vec![], vec![audit_record("read", &["p1"]), audit_record("search", &[])])
        .await
        .unwrap();
    // A rejected write leaves no audit entry behind (same transaction).
    let err = store
        .commit_audited(&ctx(), vec![op("Patient", "p1", 1, vec![], &["p1"])], vec![audit_record("update", &["p1"])])
        .await;
    assert!(matches!(err, Err(StoreError::VersionConflict { .. })));
    let entries = store.audit_read(0, 100).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(entries.iter().map(|e| e.record.action.as_str()).collect::<Vec<_>>(), ["create", "read", "search"]);
    assert_eq!(entries[0].record, audit_record("create", &["p1"]), "every field round-trips");
    let mut verifier = crate::audit::Verifier::new(vec![], |_| true);
    entries.iter().for_each(|e| verifier.push(e));
    verifier.finish();
    assert!(verifier.findings.is_empty(), "{:?}", verifier.findings);
    assert_eq!(store.audit_head().await.unwrap(), (3, entries[2].hash.clone()));
    assert_eq!(store.audit_read(1, 1).await.unwrap()[0].seq, 2, "paging by seq");
    let mine = store.audit_for_patient("p1", 10).await.unwrap();
    assert_eq!(mine.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 1], "newest first, only p1's");
    assert!(store.audit_for_patient("p2", 10).await.unwrap().is_empty());
    let cp = crate::AuditCheckpoint {
        seq: 3,
        hash: entries[2].hash.clone(),
        signed_at: 5,
        key_id: "k1".into(),
        signature: "abcd".into(),
    };
    store.audit_checkpoint_put(&cp).await.unwrap();
    store.audit_checkpoint_put(&cp).await.unwrap();
    assert_eq!(store.audit_checkpoints().await.unwrap(), vec![cp]);
}

pub async fn audit_concurrent_appends_chain(store: Arc<dyn ResourceStore>) {
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let p = format!("p{t}-{i}");
                store
                    .commit_audited(
                        &ctx(),
                        vec![op("Patient", &p, 1, vec![], &[&p])],
                        vec![audit_record("create", &[&p])],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let entries = store.audit_read(0, 1000).await.unwrap();
    assert_eq!(entries.len(), 80);
    let mut verifier = crate::audit::Verifier::new(vec![], |_| true);
    entries.iter().for_each(|e| verifier.push(e));
    verifier.finish();
    assert!(verifier.findings.is_empty(), "concurrent appends form one chain: {:?}", verifier.findings);
}

pub async fn audit_prune_keeps_an_anchored_tail(store: Arc<dyn ResourceStore>) {
    assert_eq!(store.audit_prune(10).await.unwrap(), 0, "an empty log has nothing to prune");
    let patients: [&[&str]; 6] = [&["p1"], &["p1", "p2"], &[], &["p2"], &["p1"], &["p1", "p2"]];
    for (i, p) in patients.iter().enumerate() {
        store.commit_audited(&ctx(), vec![], vec![audit_record(&format!("read{i}"), p)]).await.unwrap();
    }
    let entries = store.audit_read(0, 100).await.unwrap();
    let checkpoint = |seq: i64| crate::AuditCheckpoint {
        seq,
        hash: entries[seq as usize - 1].hash.clone(),
        signed_at: 1_700_000_000_000 + seq,
        key_id: "k1".into(),
        signature: "ok".into(),
    };
    for seq in [1, 2, 4, 5] {
        store.audit_checkpoint_put(&checkpoint(seq)).await.unwrap();
    }

    assert_eq!(store.audit_prune(4).await.unwrap(), 4);
    let left = store.audit_read(0, 100).await.unwrap();
    assert_eq!(left, entries[4..], "entries after the cut are untouched");
    assert_eq!(
        store.audit_checkpoints().await.unwrap(),
        [checkpoint(4), checkpoint(5)],
        "the anchor and later checkpoints stay"
    );
    let seqs = |found: Vec<crate::AuditEntry>| found.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.audit_for_patient("p1", 10).await.unwrap()), [6, 5]);
    assert_eq!(seqs(store.audit_for_patient("p2", 10).await.unwrap()), [6]);
    let mut verifier = crate::audit::Verifier::new(store.audit_checkpoints().await.unwrap(), |_| true);
    left.iter().for_each(|e| verifier.push(e));
    verifier.finish();
    assert!(verifier.findings.is_empty(), "{:?}", verifier.findings);
    assert_eq!(verifier.pruned_through, Some(4));

    assert_eq!(store.audit_prune(3).await.unwrap(), 0, "already pruned");
    // The newest entry is kept whatever the caller asks, and appends go on chaining to it.
    assert_eq!(store.audit_prune(100).await.unwrap(), 1);
    assert_eq!(seqs(store.audit_read(0, 100).await.unwrap()), [6]);
    assert_eq!(store.audit_head().await.unwrap(), (6, entries[5].hash.clone()));
    store.commit_audited(&ctx(), vec![], vec![audit_record("read", &["p1"])]).await.unwrap();
    let tail = store.audit_read(0, 100).await.unwrap();
    assert_eq!((tail[1].seq, tail[1].prev_hash.as_str()), (7, entries[5].hash.as_str()));
    assert_eq!(seqs(store.audit_for_patient("p1", 10).await.unwrap()), [7, 6]);
}

pub async fn security_objects_and_lookups(store: Arc<dyn ResourceStore>) {
    store.kv_put("user", "u1", r#"{"name":"a"}"#, &["name:alice".into(), "idx:123".into()]).await.unwrap();
    store.kv_put("user", "u2", r#"{"name":"b"}"#, &["name:bob".into()]).await.unwrap();
    assert_eq!(store.kv_get("user", "u1").await.unwrap().as_deref(), Some(r#"{"name":"a"}"#));
    assert_eq!(store.kv_find("user", "idx:123").await.unwrap(), Some(("u1".into(), r#"{"name":"a"}"#.into())));
    assert!(store.kv_find("client", "idx:123").await.unwrap().is_none(), "lookups are per kind");
    let taken = store.kv_put("user", "u3", "{}", &["name:alice".into()]).await;
    assert!(matches!(taken, Err(StoreError::Duplicate { .. })), "{taken:?}");
    assert!(store.kv_get("user", "u3").await.unwrap().is_none(), "a refused put writes nothing");
    // Replacing an object replaces its lookups.
    store.kv_put("user", "u1", r#"{"name":"a2"}"#, &["name:alice2".into()]).await.unwrap();
    assert!(store.kv_find("user", "name:alice").await.unwrap().is_none());
    assert_eq!(store.kv_find("user", "name:alice2").await.unwrap().map(|f| f.0).as_deref(), Some("u1"));
    assert_eq!(
        store.kv_list("user", "", 10).await.unwrap().iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(),
        ["u1", "u2"]
    );
    assert_eq!(store.kv_list("user", "u1", 10).await.unwrap().len(), 1);
    assert!(store.kv_delete("user", "u1").await.unwrap());
    assert!(!store.kv_delete("user", "u1").await.unwrap());
    assert!(store.kv_find("user", "name:alice2").await.unwrap().is_none());
}

/// Concurrent commits (grouped into one transaction by a backend that group-commits): the ones
/// that lose a version race fail alone and write nothing, not even their other ops or audit
/// records; the winner and the unrelated commits are all there.
pub async fn concurrent_commits_fail_alone(store: Arc<dyn ResourceStore>) {
    store.commit(&ctx(), vec![op("Slot", "s1", 1, vec![], &[])]).await.unwrap();
    let head = store.audit_head().await.unwrap().0;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let patient = format!("p{i}");
                let mut ops = vec![op("Patient", &patient, 1, vec![], &[patient.as_str()])];
                if i % 2 == 0 {
                    ops.push(op("Slot", "s1", 2, vec![], &[]));
                } else {
                    ops.push(op("Basic", &format!("o{i}"), 1, vec![], &[]));
                }
                store.commit_audited(&ctx(), ops, vec![audit_record("create", &[patient.as_str()])]).await
            })
        })
        .collect();
    let mut won = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(()) => won += usize::from(i % 2 == 0),
            Err(StoreError::VersionConflict { resource_type, id, .. }) => {
                assert_eq!((i % 2, resource_type.as_str(), id.as_str()), (0, "Slot", "s1"));
            }
            Err(e) => panic!("commit {i}: {e}"),
        }
    }
    assert_eq!(won, 1, "exactly one commit takes the Slot's version 2");
    let patients = (0..32).map(|i| ("Patient".to_string(), format!("p{i}"))).collect::<Vec<_>>();
    let written = store.read_many(&ctx(), &patients).await.unwrap();
    assert_eq!(written.len(), 17, "16 unrelated commits and the winner; a loser writes nothing");
    let basics = (0..32).filter(|i| i % 2 == 1).map(|i| ("Basic".to_string(), format!("o{i}"))).collect::<Vec<_>>();
    assert_eq!(store.read_many(&ctx(), &basics).await.unwrap().len(), 16);
    let entries = store.audit_read(head, 100).await.unwrap();
    assert_eq!(entries.len(), 17, "one audit entry per commit that committed");
    for pair in entries.windows(2) {
        assert_eq!((pair[1].seq, pair[1].prev_hash.as_str()), (pair[0].seq + 1, pair[0].hash.as_str()), "one chain");
    }
}

/// Concurrent creates of one id (grouped into one transaction by a backend that group-commits):
/// exactly one wins; each loser fails with a version conflict and writes nothing, not its other
/// ops, index rows or audit records.
pub async fn concurrent_creates_of_one_id_fail_alone(store: Arc<dyn ResourceStore>) {
    let head = store.audit_head().await.unwrap().0;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let patient = format!("c{i}");
                let ops = vec![
                    op("Patient", &patient, 1, vec![string("name", "Qian")], &[patient.as_str()]),
                    op("Basic", "shared", 1, vec![], &[]),
                ];
                store.commit_audited(&ctx(), ops, vec![audit_record(&format!("create-{i}"), &[])]).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(()) => winners.push(i),
            Err(StoreError::VersionConflict { resource_type, id, expected, actual }) => {
                assert_eq!((resource_type.as_str(), id.as_str(), expected, actual), ("Basic", "shared", 0, 1));
            }
            Err(e) => panic!("create {i}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create of Basic/shared: {winners:?}");
    let patients = (0..32).map(|i| ("Patient".to_string(), format!("c{i}"))).collect::<Vec<_>>();
    let written = store.read_many(&ctx(), &patients).await.unwrap();
    assert_eq!(written.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [format!("c{}", winners[0])]);
    assert_eq!(ids(&store, Some("Patient"), &[("name", "qian")]).await, [format!("c{}", winners[0])]);
    let entries = store.audit_read(head, 100).await.unwrap();
    assert_eq!(entries.iter().map(|e| e.record.action.clone()).collect::<Vec<_>>(), [format!("create-{}", winners[0])]);
}

/// A single-use record and its audit entry (`kv_put_audited`): of concurrent puts of one unique
/// lookup exactly one succeeds, and only its audit record is appended.
pub async fn single_use_lookup_with_audit(store: Arc<dyn ResourceStore>) {
    let head = store.audit_head().await.unwrap().0;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let record = audit_record(&format!("use-{i}"), &[]);
                store.kv_put_audited("code", &format!("c{i:02}"), "{}", &["code:abc".to_string()], vec![record]).await
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(()) => accepted.push(i),
            Err(StoreError::Duplicate { lookup, .. }) => assert_eq!(lookup, "code:abc"),
            Err(e) => panic!("put {i}: {e}"),
        }
    }
    assert_eq!(accepted.len(), 1, "one use of the lookup: {accepted:?}");
    let entries = store.audit_read(head, 100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.record.action.clone()).collect::<Vec<_>>(),
        [format!("use-{}", accepted[0])],
        "only the accepted put is audited"
    );
    assert_eq!(store.kv_find("code", "code:abc").await.unwrap().map(|f| f.0), Some(format!("c{:02}", accepted[0])));
    assert_eq!(store.kv_list("code", "", 100).await.unwrap().len(), 1, "a refused put writes nothing");
}
