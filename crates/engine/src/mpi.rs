//! The master patient index (EMPI, 一人一档): every Patient a source system sends is linked to
//! one person, the golden record, or sent to a data steward for review.
//!
//! **Storage.** A person is a FHIR `Person` resource tagged [`MPI_SYSTEM`]`|golden`, whose
//! `link`s name the source Patients (`target`) with the link's assurance: `level3` linked
//! automatically (above the link threshold), `level4` decided by a data steward, `level2` linked
//! to its own person while a possible match waits for review; each automatic link carries its
//! match weight in [`LINK_WEIGHT_EXTENSION`]. Its demographics are the survivorship of its
//! records (identifiers: all of them; name, sex, birth date, telecom, address: the most recently
//! updated record that has them). A person merged into another (by a steward, or because the
//! record that joins them arrived) becomes inactive with one `link` to the survivor marked by
//! [`REPLACED_BY_EXTENSION`]: readers of the old Person follow it. A possible match is a `Task`
//! (code [`MPI_SYSTEM`]`|review`, `focus` the source Patient, one `input` per candidate Person
//! with its weight), completed when a steward decides or an update settles it. Source Patients
//! are never modified: they are the hospitals' records. Every change is an ordinary FHIR write,
//! so it has version history, outbox events and an audit entry, and all the changes of one step
//! commit in one transaction (a merge is never half done).
//!
//! **Matching.** The index keeps a [`Linker`] in memory (records, blocking keys, name
//! frequencies), loaded from the Persons at first use. Patients reach it through the outbox: a
//! worker ([`Engine::mpi_run`]) reads the events after its durable cursor `mpi`, matches each
//! created, updated or deleted Patient incrementally, commits the Person and Task changes and
//! only then moves the cursor; a crash in between makes it redo the step, which changes nothing
//! twice (identical Person content writes no new version). So Patients from the FHIR API, from
//! transactions and from `hutong import` (another process: matched when the server next reads
//! the outbox) all go through the same path. Every operation on the index holds one lock, so
//! concurrent updates of one person are serialised. One server process runs the index; a
//! deployment with several servers on one PostgreSQL runs it in one of them.
//!
//! **Decisions** ([`registry::linkage::Linker::decide`]): one candidate person above the link
//! threshold (6: probability ≈ 0.985) → linked; several, consistent with each other → they are
//! one person and are merged; candidates between the review threshold (2) and the link
//! threshold, or several inconsistent ones above it → own person plus a review Task; none → a
//! new person. An updated record re-matched: a steward's link stays; an automatic one follows
//! the new content. A deleted Patient leaves its person (an empty person is deleted).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use fhir::IssueType;
use registry::linkage::{Decision, Linker, Record, Thresholds};
use serde_json::{Value, json};
use store::{Ctx, StoredResource};

use crate::crud::{new_id, now_ms};
use crate::matching::record_of;
use crate::{Engine, EngineError, EngineResult, RequestOptions, audit};

/// The code system of the index's tags, task codes and decisions.
pub const MPI_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/mpi";

/// On `Person.link`: the match weight (log2 odds) that linked the record automatically.
pub const LINK_WEIGHT_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/mpi-link-weight";

/// On the one `Person.link` of a merged-away person: `valueBoolean` true; its target is the
/// Person it was merged into.
pub const REPLACED_BY_EXTENSION: &str = "https://hutong.dev/fhir/StructureDefinition/mpi-replaced-by";

/// The outbox cursor of the index's worker.
const CURSOR: &str = "mpi";

/// Outbox events read per step. A step's changes are one transaction, and larger transactions
/// cost less per Person written: 2,000 instead of 500 made `hutong bench register` about 20%
/// faster (4–39% in six pairs) with 2–25% less CPU (docs/BENCHMARKS.md). A step changes at
/// most three entries per Patient (two persons in a merge, one review task), so it stays
/// within [`COMMIT_ENTRIES`].
const STEP_EVENTS: usize = 2000;

/// Most entries in one transaction of index changes (a batch re-link of a large registry is
/// split in transactions of this size).
const COMMIT_ENTRIES: usize = 3 * STEP_EVENTS;

/// Resources read per page when the index loads.
const LOAD_PAGE: usize = 1000;

/// How a source record is linked to its person (`Person.link.assurance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Assurance {
    /// Linked to its own person while a possible match waits for review.
    Review,
    /// Linked automatically.
    Auto,
    /// Decided by a data steward; matching never moves it.
    Manual,
}

impl Assurance {
    fn code(self) -> &'static str {
        match self {
            Assurance::Review => "level2",
            Assurance::Auto => "level3",
            Assurance::Manual => "level4",
        }
    }

    fn parse(code: Option<&str>) -> Assurance {
        match code {
            Some("level4") => Assurance::Manual,
            Some("level1") | Some("level2") => Assurance::Review,
            _ => Assurance::Auto,
        }
    }
}

struct Source {
    record: u32,
    assurance: Assurance,
    weight: Option<f64>,
    /// Fingerprint of the linkage record: an update that changes nothing the linkage compares
    /// is not matched again.
    content: u64,
}

/// A possible match waiting for a steward.
struct Review {
    task: String,
    authored: String,
    candidates: Vec<(u32, f64)>,
}

/// The index in memory. Person numbers are the linker's; each has a Person id.
pub(crate) struct MpiState {
    linker: Linker,
    sources: HashMap<String, Source>,
    /// The source id of each linker record (also of retired records: check `sources`).
    source_of: HashMap<u32, String>,
    person_ids: Vec<String>,
    persons: HashMap<String, u32>,
    /// Merged-away persons and the person each went into.
    merged_into: HashMap<u32, u32>,
    reviews: HashMap<String, Review>,
    /// Open ID-number flags by source id.
    id_flags: HashMap<String, Review>,
}

/// What one step changed: the Persons to write again and the Tasks to write.
#[derive(Default)]
struct Changes {
    persons: BTreeSet<u32>,
    tasks: BTreeMap<String, Value>,
    /// Source Patients touched (for the audit record).
    sources: BTreeSet<String>,
}

fn fingerprint(record: &Record) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{record:?}").hash(&mut h);
    h.finish()
}

fn reference_id<'a>(reference: &'a Value, resource_type: &str) -> Option<&'a str> {
    reference["reference"].as_str()?.strip_prefix(resource_type)?.strip_prefix('/')
}

fn bad(message: impl Into<String>) -> EngineError {
    EngineError::bad_request(IssueType::Invalid, message)
}

fn internal(what: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Store(store::StoreError::Backend(format!("{what}: {e}")))
}

fn body_of(r: &StoredResource) -> Option<Value> {
    r.body.as_deref().filter(|_| !r.deleted).and_then(|b| serde_json::from_str(b).ok())
}

impl MpiState {
    fn new(linker: Linker) -> Self {
        MpiState {
            linker,
            sources: HashMap::new(),
            source_of: HashMap::new(),
            person_ids: Vec::new(),
            persons: HashMap::new(),
            merged_into: HashMap::new(),
            reviews: HashMap::new(),
            id_flags: HashMap::new(),
        }
    }

    /// Records that source `id` is linker record `src.record` now.
    fn bind(&mut self, id: &str, src: Source) {
        self.source_of.insert(src.record, id.to_string());
        self.sources.insert(id.to_string(), src);
    }

    fn new_person(&mut self, id: Option<String>) -> u32 {
        let p = self.linker.new_person();
        let id = id.unwrap_or_else(new_id);
        self.persons.insert(id.clone(), p);
        self.person_ids.push(id);
        p
    }

    fn person(&self, id: &str) -> EngineResult<u32> {
        self.persons
            .get(id)
            .copied()
            .ok_or_else(|| EngineError::NotFound(format!("Person/{id} (a person of the master patient index)")))
    }

    fn source(&self, id: &str) -> EngineResult<&Source> {
        self.sources.get(id).ok_or_else(|| {
            EngineError::NotFound(format!(
                "Patient/{id} in the master patient index (it does not exist, or is not matched yet)"
            ))
        })
    }

    /// Applies the current content of a source Patient (`None`: deleted).
    fn apply(&mut self, id: &str, body: Option<&Value>, ch: &mut Changes) {
        let Some(body) = body else {
            if let Some(src) = self.sources.remove(id) {
                let person = self.linker.person_of(src.record);
                self.linker.retire(src.record);
                ch.persons.insert(person);
                ch.sources.insert(id.to_string());
                self.close_review(id, "cancelled", "the source record was deleted", None, ch);
                if let Some(flag) = self.id_flags.remove(id) {
                    let mut task = task(TaskKind::IdCheck, id, &flag, "cancelled");
                    task["businessStatus"] = json!({"text": "the source record was deleted"});
                    ch.tasks.insert(flag.task, task);
                }
            }
            return;
        };
        let record = record_of(body);
        let content = fingerprint(&record);
        if self.sources.get(id).is_some_and(|src| src.content == content) {
            return;
        }
        let problem = id_problem(body);
        if problem.is_some() || self.id_flags.contains_key(id) {
            self.flag_id(id, problem, ch);
        }
        let previous = match self.sources.get(id) {
            Some(src) => {
                let person = self.linker.person_of(src.record);
                self.linker.retire(src.record);
                ch.persons.insert(person);
                if src.assurance == Assurance::Manual {
                    let (assurance, weight) = (src.assurance, src.weight);
                    let r = self.linker.insert_linked(&record, person);
                    self.bind(id, Source { record: r, assurance, weight, content });
                    ch.sources.insert(id.to_string());
                    return;
                }
                Some(person)
            }
            None => None,
        };
        self.place(id, &record, content, previous, ch);
    }

    /// Matches a record and links it where the decision says.
    fn place(&mut self, id: &str, record: &Record, content: u64, previous: Option<u32>, ch: &mut Changes) {
        let candidates = self.linker.candidates(record);
        let decision = self.linker.decide(&candidates);
        // A record that was its person's only one keeps that person when it starts one anew.
        let keep = previous.filter(|&p| self.linker.members(p).is_empty());
        let (person, assurance, weight, review) = match decision {
            Decision::Link { person, weight } => (person, Assurance::Auto, Some(weight), None),
            Decision::Merge { person, weight, merged } => {
                for m in merged {
                    self.merge(m, person, ch);
                }
                (person, Assurance::Auto, Some(weight), None)
            }
            Decision::Review { candidates } => {
                let person = match previous {
                    Some(p) if candidates.iter().any(|c| c.0 == p) => p,
                    _ => keep.unwrap_or_else(|| self.new_person(None)),
                };
                (person, Assurance::Review, None, Some(candidates))
            }
            Decision::New => (keep.unwrap_or_else(|| self.new_person(None)), Assurance::Auto, None, None),
        };
        if Some(person) == keep {
            self.merged_into.remove(&person);
        }
        if let Some(prev) = previous
            && prev != person
            && self.linker.members(prev).is_empty()
        {
            // Its person's only record went to another person: the old Person points there.
            self.merged_into.insert(prev, person);
            ch.persons.insert(prev);
        }
        let r = self.linker.insert_linked(record, person);
        self.bind(id, Source { record: r, assurance, weight, content });
        ch.persons.insert(person);
        ch.sources.insert(id.to_string());
        match review {
            Some(candidates) => self.open_review(id, candidates, ch),
            None => self.close_review(id, "completed", "resolved automatically by an update of the record", None, ch),
        }
    }

    /// Moves every record of `from` into `into`; `from` becomes inactive, pointing to `into`.
    fn merge(&mut self, from: u32, into: u32, ch: &mut Changes) {
        self.linker.merge(from, into);
        self.merged_into.insert(from, into);
        // Persons merged into `from` earlier now lead to `into` directly.
        for target in self.merged_into.values_mut() {
            if *target == from {
                *target = into;
            }
        }
        ch.persons.insert(from);
        ch.persons.insert(into);
    }

    fn open_review(&mut self, source: &str, candidates: Vec<(u32, f64)>, ch: &mut Changes) {
        let now = fhir::normalize::format_instant(now_ms());
        let review = self.reviews.entry(source.to_string()).or_insert_with(|| Review {
            task: new_id(),
            authored: now.clone(),
            candidates: Vec::new(),
        });
        review.candidates = candidates;
        let inputs: Vec<Value> = review
            .candidates
            .iter()
            .map(|(p, w)| {
                json!({
                    "type": {"coding": [{"system": MPI_SYSTEM, "code": "candidate", "display": "candidate person"}]},
                    "valueReference": {"reference": format!("Person/{}", self.person_ids[*p as usize])},
                    "extension": [{"url": LINK_WEIGHT_EXTENSION, "valueDecimal": round2(*w)}],
                })
            })
            .collect();
        let mut task = task(TaskKind::Review, source, review, "requested");
        task["priority"] = json!("routine");
        task["description"] = json!(
            "The master patient index found persons this record may belong to, but not surely enough to link it: \
             link it to one of them or confirm it is a person of its own (Person/$mpi-link)."
        );
        task["input"] = Value::Array(inputs);
        ch.tasks.insert(review.task.clone(), task);
    }

    /// Closes the open review of a source, if any (`status` completed or cancelled).
    fn close_review(&mut self, source: &str, status: &str, why: &str, decided: Option<u32>, ch: &mut Changes) {
        let Some(review) = self.reviews.remove(source) else { return };
        let mut task = task(TaskKind::Review, source, &review, status);
        task["businessStatus"] = json!({"text": why});
        if let Some(p) = decided {
            task["output"] = json!([{
                "type": {"coding": [{"system": MPI_SYSTEM, "code": "linked-to", "display": "linked to person"}]},
                "valueReference": {"reference": format!("Person/{}", self.person_ids[p as usize])},
            }]);
        }
        ch.tasks.insert(review.task, task);
    }

    /// Flags a record whose national ID number is invalid (a Task for the data steward and the
    /// sending institution; the number is never corrected), or closes the flag once an update
    /// made it valid (`problem` None).
    fn flag_id(&mut self, source: &str, problem: Option<String>, ch: &mut Changes) {
        match problem {
            Some(problem) => {
                let now = fhir::normalize::format_instant(now_ms());
                let flag = self.id_flags.entry(source.to_string()).or_insert_with(|| Review {
                    task: new_id(),
                    authored: now,
                    candidates: Vec::new(),
                });
                let mut task = task(TaskKind::IdCheck, source, flag, "requested");
                task["priority"] = json!("routine");
                task["description"] = json!(format!(
                    "{problem}. The record is matched with the number as it is (never corrected): ask the sending \
                     institution to check it with the resident's ID card and send a corrected record."
                ));
                ch.tasks.insert(flag.task.clone(), task);
            }
            None => {
                let Some(flag) = self.id_flags.remove(source) else { return };
                let mut task = task(TaskKind::IdCheck, source, &flag, "completed");
                task["businessStatus"] = json!({"text": "the record now carries a valid ID number"});
                ch.tasks.insert(flag.task, task);
            }
        }
    }

    /// The surviving person a (possibly merged-away) person leads to.
    fn survivor(&self, mut p: u32) -> u32 {
        let mut hops = 0;
        while let Some(&next) = self.merged_into.get(&p) {
            if next == p || hops > 64 {
                break;
            }
            p = next;
            hops += 1;
        }
        p
    }

    /// The source Patient ids of a person, in record order.
    fn source_ids_of(&self, p: u32) -> Vec<String> {
        let mut records: Vec<u32> = self.linker.members(p).to_vec();
        records.sort_unstable();
        records
            .into_iter()
            .filter_map(|r| self.source_of.get(&r).filter(|id| self.sources.get(*id).is_some_and(|s| s.record == r)))
            .cloned()
            .collect()
    }
}

/// The index's Task kinds (`Task.code`).
#[derive(Clone, Copy)]
enum TaskKind {
    /// A possible match for a steward to decide.
    Review,
    /// A record whose national ID number is invalid.
    IdCheck,
}

impl TaskKind {
    fn code(self) -> &'static str {
        match self {
            TaskKind::Review => "review",
            TaskKind::IdCheck => "id-check",
        }
    }

    fn display(self) -> &'static str {
        match self {
            TaskKind::Review => "疑似同一人，待核对 (possible match to review)",
            TaskKind::IdCheck => "身份证号校验未通过 (ID number fails its check)",
        }
    }
}

/// An index Task about a source record.
fn task(kind: TaskKind, source: &str, open: &Review, status: &str) -> Value {
    json!({
        "resourceType": "Task",
        "id": open.task,
        "meta": {"tag": [{"system": MPI_SYSTEM, "code": kind.code()}]},
        "status": status,
        "intent": "proposal",
        "code": {"coding": [{"system": MPI_SYSTEM, "code": kind.code(), "display": kind.display()}]},
        "focus": {"reference": format!("Patient/{source}")},
        "for": {"reference": format!("Patient/{source}")},
        "authoredOn": open.authored,
        "lastModified": fhir::normalize::format_instant(now_ms()),
    })
}

/// The national ID number system (GB 11643, OID 2.16.156.10011.1.3).
pub(crate) const ID_NUMBER_SYSTEM: &str = "urn:oid:2.16.156.10011.1.3";

/// What is wrong with a record's national ID number, if anything (an identifier in
/// [`ID_NUMBER_SYSTEM`] that is not a valid 18-character or old 15-digit number).
fn id_problem(body: &Value) -> Option<String> {
    body["identifier"].as_array()?.iter().filter(|i| i["system"] == ID_NUMBER_SYSTEM).find_map(|i| {
        let value = i["value"].as_str()?;
        crypto::idnum::normalize(value).err().map(|e| format!("the ID number of this record is not valid: {e}"))
    })
}

fn round2(w: f64) -> f64 {
    (w * 100.0).round() / 100.0
}

/// The fields a person takes from its records (the most recently updated one that has each).
const SURVIVING_FIELDS: [&str; 5] = ["name", "gender", "birthDate", "telecom", "address"];

impl Engine {
    /// The index worker: matches Patients as they are written (woken by this process's writes,
    /// and every second for other processes'), until the process ends.
    pub async fn mpi_run(self: std::sync::Arc<Self>) {
        loop {
            if let Err(e) = self.mpi_sync().await {
                tracing::warn!(error = %e, "master patient index: a step failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            tokio::select! {
                _ = self.mpi_wake.notified() => {}
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// Matches every Patient written since the index last looked (the outbox after its cursor);
    /// returns how many Patients it matched. Tests and operations call it to be current.
    pub async fn mpi_sync(&self) -> EngineResult<usize> {
        let mut guard = self.mpi.lock().await;
        let result = self.mpi_sync_locked(&mut guard).await;
        if result.is_err() {
            // The store is the truth: the next step reloads from it.
            *guard = None;
        }
        result
    }

    async fn mpi_sync_locked(&self, guard: &mut Option<MpiState>) -> EngineResult<usize> {
        if guard.is_none() {
            *guard = Some(self.mpi_load().await?);
        }
        let state = guard.as_mut().expect("loaded");
        let mut matched = 0;
        loop {
            let cursor = self.store.cursor_get(CURSOR).await?;
            let events = self.store.outbox_read(cursor, STEP_EVENTS).await?;
            let Some(last) = events.last().map(|e| e.seq) else { break };
            let mut seen = HashSet::new();
            let ids: Vec<String> = events
                .iter()
                .filter(|e| e.resource_type == "Patient" && seen.insert(e.id.as_str()))
                .map(|e| e.id.clone())
                .collect();
            let mut changes = Changes::default();
            // One read for the step's Patients; a deleted one is absent, as its body would be.
            let keys: Vec<(String, String)> = ids.iter().map(|id| ("Patient".to_string(), id.clone())).collect();
            let current: HashMap<String, StoredResource> =
                self.store.read_many(&Ctx::system(), &keys).await?.into_iter().map(|r| (r.id.clone(), r)).collect();
            for id in &ids {
                let body = current.get(id).and_then(body_of);
                state.apply(id, body.as_ref(), &mut changes);
            }
            matched += ids.len();
            self.mpi_commit(state, changes).await?;
            self.store.cursor_set(CURSOR, last).await?;
        }
        Ok(matched)
    }

    /// Every resource of a type matching `params`, page by page (internal, unrestricted).
    pub(crate) async fn scan(&self, resource_type: &str, params: &[(&str, &str)]) -> EngineResult<Vec<StoredResource>> {
        let pairs: Vec<(String, String)> = params.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let mut query = fhir::search::parse(self.defs, Some(resource_type), &pairs, &self.parse_options(false))
            .map_err(EngineError::BadRequest)?
            .query;
        query.count = LOAD_PAGE;
        query.sort = Vec::new();
        let mut out = Vec::new();
        loop {
            let page = self.store.search(&Ctx::system(), &query).await?;
            let n = page.resources.len();
            out.extend(page.resources);
            if n < LOAD_PAGE {
                break;
            }
            query.offset += n;
        }
        Ok(out)
    }

    /// The Patient ids of the person `patient` belongs to (itself first), as the index links
    /// them now; just `patient` when the index does not know it yet.
    pub(crate) async fn same_person_patients(&self, patient: &str) -> EngineResult<Vec<String>> {
        self.mpi_sync().await?;
        let guard = self.mpi.lock().await;
        let mut ids = vec![patient.to_string()];
        if let Some(state) = guard.as_ref()
            && let Some(src) = state.sources.get(patient)
        {
            let person = state.linker.person_of(src.record);
            ids.extend(state.source_ids_of(person).into_iter().filter(|id| id != patient));
        }
        Ok(ids)
    }

    /// Loads the index from the store: its Persons and their links, the source Patients, the
    /// open reviews. Patients not linked yet are matched now.
    async fn mpi_load(&self) -> EngineResult<MpiState> {
        let patients = self.scan("Patient", &[]).await?;
        let model = self.match_model(patients.len() as u64).await?;
        let mut state = MpiState::new(Linker::new((*model).clone(), Thresholds::default()));
        let golden = format!("{MPI_SYSTEM}|golden");
        let mut links: HashMap<String, (u32, Assurance, Option<f64>)> = HashMap::new();
        let mut replaced: Vec<(u32, String)> = Vec::new();
        for stored in self.scan("Person", &[("_tag", golden.as_str())]).await? {
            let Some(person) = body_of(&stored) else { continue };
            let p = state.new_person(Some(stored.id.clone()));
            for link in person["link"].as_array().into_iter().flatten() {
                if let Some(source) = reference_id(&link["target"], "Patient") {
                    let weight = link["extension"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|x| x["url"] == LINK_WEIGHT_EXTENSION)
                        .and_then(|x| x["valueDecimal"].as_f64());
                    links.insert(source.to_string(), (p, Assurance::parse(link["assurance"].as_str()), weight));
                } else if let Some(into) = reference_id(&link["target"], "Person") {
                    replaced.push((p, into.to_string()));
                }
            }
        }
        for (p, into) in replaced {
            if let Some(&q) = state.persons.get(&into) {
                state.merged_into.insert(p, q);
            }
        }
        let mut unlinked = Vec::new();
        for stored in patients {
            let Some(body) = body_of(&stored) else { continue };
            let record = record_of(&body);
            match links.remove(&stored.id) {
                Some((p, assurance, weight)) => {
                    let content = fingerprint(&record);
                    let r = state.linker.insert_linked(&record, p);
                    state.bind(&stored.id, Source { record: r, assurance, weight, content });
                }
                None => unlinked.push((stored.id.clone(), body)),
            }
        }
        let review = format!("{MPI_SYSTEM}|review");
        for stored in self.scan("Task", &[("code", review.as_str()), ("status", "requested")]).await? {
            let Some(task) = body_of(&stored) else { continue };
            let Some(source) = reference_id(&task["focus"], "Patient") else { continue };
            let candidates = task["input"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| {
                    let p = *state.persons.get(reference_id(&i["valueReference"], "Person")?)?;
                    let w = i["extension"][0]["valueDecimal"].as_f64().unwrap_or(0.0);
                    Some((p, w))
                })
                .collect();
            let authored = task["authoredOn"].as_str().unwrap_or_default().to_string();
            state.reviews.insert(source.to_string(), Review { task: stored.id.clone(), authored, candidates });
        }
        let id_check = format!("{MPI_SYSTEM}|{}", TaskKind::IdCheck.code());
        for stored in self.scan("Task", &[("code", id_check.as_str()), ("status", "requested")]).await? {
            let Some(task) = body_of(&stored) else { continue };
            let Some(source) = reference_id(&task["focus"], "Patient") else { continue };
            let authored = task["authoredOn"].as_str().unwrap_or_default().to_string();
            state
                .id_flags
                .insert(source.to_string(), Review { task: stored.id.clone(), authored, candidates: Vec::new() });
        }
        if !unlinked.is_empty() {
            let mut changes = Changes::default();
            for (id, body) in &unlinked {
                state.apply(id, Some(body), &mut changes);
            }
            self.mpi_commit(&state, changes).await?;
        }
        Ok(state)
    }

    /// The Person resource of a person now (`None`: it has no records and was not merged, so it
    /// goes).
    /// `records`: the current Patients of the index's sources (at least this person's).
    fn person_resource(
        &self,
        state: &MpiState,
        p: u32,
        records: &HashMap<String, StoredResource>,
    ) -> EngineResult<Option<Value>> {
        let id = &state.person_ids[p as usize];
        let mut person = json!({
            "resourceType": "Person",
            "id": id,
            "meta": {"tag": [{"system": MPI_SYSTEM, "code": "golden", "display": "master patient index person (golden record)"}]},
        });
        let sources = state.source_ids_of(p);
        if sources.is_empty() {
            let Some(&into) = state.merged_into.get(&p) else { return Ok(None) };
            let into = state.survivor(into);
            person["active"] = json!(false);
            person["link"] = json!([{
                "target": {"reference": format!("Person/{}", state.person_ids[into as usize])},
                "assurance": "level4",
                "extension": [{"url": REPLACED_BY_EXTENSION, "valueBoolean": true}],
            }]);
            return Ok(Some(person));
        }
        let mut records: Vec<(i64, Value)> = sources
            .iter()
            .filter_map(|id| records.get(id))
            .filter_map(|r| Some((r.last_updated, body_of(r)?)))
            .collect();
        records.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        let mut identifiers: Vec<Value> = Vec::new();
        for (_, r) in &records {
            for i in r["identifier"].as_array().into_iter().flatten() {
                let same = |j: &Value| j["system"] == i["system"] && j["value"] == i["value"];
                if i["value"].is_string() && !identifiers.iter().any(same) {
                    let mut kept = json!({"value": i["value"]});
                    for key in ["use", "type", "system", "period", "assigner"] {
                        if !i[key].is_null() {
                            kept[key] = i[key].clone();
                        }
                    }
                    identifiers.push(kept);
                }
            }
        }
        if !identifiers.is_empty() {
            person["identifier"] = Value::Array(identifiers);
        }
        for field in SURVIVING_FIELDS {
            if let Some((_, r)) = records.iter().find(|(_, r)| !r[field].is_null()) {
                person[field] = r[field].clone();
            }
        }
        person["active"] = json!(true);
        let links: Vec<Value> = sources
            .iter()
            .map(|id| {
                let src = &state.sources[id];
                let mut link =
                    json!({"target": {"reference": format!("Patient/{id}")}, "assurance": src.assurance.code()});
                if let Some(w) = src.weight {
                    link["extension"] = json!([{"url": LINK_WEIGHT_EXTENSION, "valueDecimal": round2(w)}]);
                }
                link
            })
            .collect();
        person["link"] = Value::Array(links);
        Ok(Some(person))
    }

    /// Writes one step's changes in one transaction.
    async fn mpi_commit(&self, state: &MpiState, changes: Changes) -> EngineResult<()> {
        let mut entries = Vec::new();
        let mut gone = Vec::new();
        // The source Patients of every changed person, in one read.
        let keys: Vec<(String, String)> = changes
            .persons
            .iter()
            .flat_map(|&p| state.source_ids_of(p))
            .map(|id| ("Patient".to_string(), id))
            .collect();
        let records: HashMap<String, StoredResource> =
            self.store.read_many(&Ctx::system(), &keys).await?.into_iter().map(|r| (r.id.clone(), r)).collect();
        for &p in &changes.persons {
            let id = &state.person_ids[p as usize];
            match self.person_resource(state, p, &records)? {
                Some(person) => entries.push(json!({
                    "resource": person,
                    "request": {"method": "PUT", "url": format!("Person/{id}")},
                })),
                None => gone.push(("Person".to_string(), id.clone())),
            }
        }
        for existing in self.store.read_many(&Ctx::system(), &gone).await? {
            entries.push(json!({"request": {"method": "DELETE", "url": format!("Person/{}", existing.id)}}));
        }
        for (id, task) in changes.tasks {
            entries.push(json!({"resource": task, "request": {"method": "PUT", "url": format!("Task/{id}")}}));
        }
        // One transaction per step (a link, a merge, up to STEP_EVENTS Patients); only a batch
        // re-link of a large registry is split, in transactions of COMMIT_ENTRIES.
        // (within the server's limit on Bundle entries, should an operator have set it lower)
        for chunk in entries.chunks(COMMIT_ENTRIES.min(self.config.max_bundle_entries).max(1)) {
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": chunk});
            let minimal =
                RequestOptions { return_preference: crate::ReturnPreference::Minimal, ..RequestOptions::default() };
            self.bundle(&Ctx::system(), bundle, &minimal).await?;
        }
        Ok(())
    }

    /// `POST Person/$mpi-relink` (`reason`): batch mode. Every record is matched again, in the
    /// order the index first saw them, against a fresh index with a model learned again from the
    /// registry: a steward's links stay as they are, automatic links follow the new result.
    /// Persons keep their ids where their records stay together; a person whose records all
    /// went elsewhere points to where the first went. Persons whose content is unchanged get no
    /// new version. Answers counts (Parameters `records`, `persons`, `reviews`).
    pub async fn mpi_relink(&self, ctx: &Ctx, parameters: Value) -> EngineResult<Value> {
        let params = Params::parse(&parameters, "$mpi-relink", &["reason"])?;
        let reason = params.string("reason");
        self.authorize_steward(ctx, "$mpi-relink").await?;
        let mut guard = self.mpi.lock().await;
        let result = async {
            self.mpi_sync_locked(&mut guard).await?;
            let old = guard.take().expect("loaded");
            let patients = self.scan("Patient", &[]).await?;
            *self.match_model.lock().await = None;
            let model = self.match_model(patients.len() as u64).await?;
            let mut fresh = MpiState::new(Linker::new((*model).clone(), Thresholds::default()));
            for id in &old.person_ids {
                fresh.new_person(Some(id.clone()));
            }
            fresh.merged_into = old.merged_into.clone();
            fresh.reviews = old.reviews;
            let mut ordered: Vec<(u32, String, Value)> = patients
                .iter()
                .filter_map(|r| {
                    let order = old.sources.get(&r.id).map(|s| s.record).unwrap_or(u32::MAX);
                    Some((order, r.id.clone(), body_of(r)?))
                })
                .collect();
            ordered.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            let mut changes = Changes::default();
            for (_, id, body) in &ordered {
                let record = record_of(body);
                // A steward's link, as it is.
                if let Some(src) = old.sources.get(id).filter(|s| s.assurance == Assurance::Manual) {
                    let person = old.linker.person_of(src.record);
                    let r = fresh.linker.insert_linked(&record, person);
                    let (assurance, weight, content) = (src.assurance, src.weight, fingerprint(&record));
                    fresh.bind(id, Source { record: r, assurance, weight, content });
                    fresh.merged_into.remove(&person);
                    continue;
                }
                // The record's old person, to keep when it starts a person again.
                let previous = old
                    .sources
                    .get(id)
                    .map(|s| old.linker.person_of(s.record))
                    .filter(|&p| fresh.linker.members(p).is_empty());
                fresh.place(id, &record, fingerprint(&record), previous, &mut changes);
            }
            changes.persons = (0..fresh.person_ids.len() as u32).collect();
            let summary = json!({"resourceType": "Parameters", "parameter": [
                {"name": "records", "valueInteger": fresh.sources.len()},
                {"name": "persons", "valueInteger": (0..fresh.person_ids.len() as u32).filter(|&p| !fresh.linker.members(p).is_empty()).count()},
                {"name": "reviews", "valueInteger": fresh.reviews.len()},
            ]});
            let sources: Vec<String> = Vec::new();
            self.mpi_commit(&fresh, changes).await?;
            *guard = Some(fresh);
            Ok::<_, EngineError>((summary, sources))
        }
        .await;
        self.mpi_settle(guard, ctx, "$mpi-relink", reason.as_deref(), result).await
    }

    /// Who may change the index: data stewards, and system clients allowed to write Persons.
    async fn authorize_steward(&self, ctx: &Ctx, operation: &str) -> EngineResult<()> {
        let allowed = |p: &access::Principal| match p.role {
            access::Role::DataSteward => true,
            access::Role::System => p.scopes.allows("Person", access::Perm::Update),
            _ => false,
        };
        let reason = format!(
            "Person/{operation} changes the master patient index: it is for data stewards and system clients that \
             may write Person"
        );
        self.require(ctx, allowed, operation, format!("Person/{operation}"), &reason).await
    }

    /// Runs a steward's change of the index: authorised, current (pending Patients matched
    /// first), committed in one transaction, audited with the caller and the records touched.
    /// Returns the Persons it wrote.
    async fn mpi_change(
        &self,
        ctx: &Ctx,
        operation: &str,
        reason: Option<&str>,
        change: impl FnOnce(&mut MpiState, &mut Changes) -> EngineResult<()>,
    ) -> EngineResult<Value> {
        self.authorize_steward(ctx, operation).await?;
        let mut guard = self.mpi.lock().await;
        let result = async {
            self.mpi_sync_locked(&mut guard).await?;
            let state = guard.as_mut().expect("loaded");
            let mut changes = Changes::default();
            change(state, &mut changes)?;
            let persons: Vec<u32> = changes.persons.iter().copied().collect();
            let sources: Vec<String> = changes.sources.iter().cloned().collect();
            self.mpi_commit(state, changes).await?;
            let mut written = Vec::new();
            for p in persons {
                let id = &state.person_ids[p as usize];
                if let Some(r) = self.store.read(&Ctx::system(), "Person", id).await?
                    && let Some(body) = body_of(&r)
                {
                    written.push(json!({"name": "person", "resource": body}));
                }
            }
            Ok::<_, EngineError>((written, sources))
        }
        .await;
        let result =
            result.map(|(written, sources)| (json!({"resourceType": "Parameters", "parameter": written}), sources));
        self.mpi_settle(guard, ctx, operation, reason, result).await
    }

    /// Ends a steward's operation: on failure the index reloads from the store at its next
    /// use (the store is the truth); on success the operation is audited with the records it
    /// touched.
    async fn mpi_settle(
        &self,
        mut guard: tokio::sync::MutexGuard<'_, Option<MpiState>>,
        ctx: &Ctx,
        operation: &str,
        reason: Option<&str>,
        result: EngineResult<(Value, Vec<String>)>,
    ) -> EngineResult<Value> {
        let (answer, sources) = match result {
            Ok(done) => done,
            Err(e) => {
                *guard = None;
                return Err(e);
            }
        };
        drop(guard);
        let entity = format!("Person/{operation}");
        self.audit.append(audit::record(ctx, operation, "success", entity, sources, reason)).await?;
        Ok(answer)
    }

    /// `POST Person/$mpi-link` (`source`: the Patient; `person`: the Person to link it to, or
    /// none for a person of its own; `reason`): a steward's decision, which matching never
    /// overrides. Closes the record's open review.
    pub async fn mpi_link(&self, ctx: &Ctx, parameters: Value) -> EngineResult<Value> {
        let params = Params::parse(&parameters, "$mpi-link", &["source", "person", "reason"])?;
        let source = params
            .reference("source", "Patient")?
            .ok_or_else(|| bad("$mpi-link needs 'source' (a Patient reference)"))?;
        let person = params.reference("person", "Person")?;
        let reason = params.string("reason");
        self.mpi_change(ctx, "$mpi-link", reason.as_deref(), |state, ch| {
            state.source(&source)?;
            let target = match &person {
                Some(id) => {
                    let p = state.person(id)?;
                    if state.merged_into.contains_key(&p) {
                        return Err(EngineError::Conflict {
                            message: format!(
                                "Person/{id} was merged into Person/{}: link to that one (or unmerge first)",
                                state.person_ids[state.survivor(p) as usize]
                            ),
                            precondition: false,
                        });
                    }
                    Some(p)
                }
                None => None,
            };
            link_source(state, &source, target, ch);
            Ok(())
        })
        .await
    }

    /// Links Patient `source` to the person of Patient `survivor`, as a steward's decision
    /// (matching never moves it): for a source system that says two of its records are one
    /// person (HL7 v2 ADT^A40, `docs/HL7V2.md`). Authorised and audited like `$mpi-link`
    /// (operation name `$mpi-link`, the `reason` recorded). Linking again changes nothing.
    pub async fn mpi_link_to_person_of(
        &self,
        ctx: &Ctx,
        source: &str,
        survivor: &str,
        reason: &str,
    ) -> EngineResult<Value> {
        let (source, survivor) = (source.to_string(), survivor.to_string());
        self.mpi_change(ctx, "$mpi-link", Some(reason), move |state, ch| {
            state.source(&source)?;
            let person = state.linker.person_of(state.source(&survivor)?.record);
            let person = state.survivor(person);
            link_source(state, &source, Some(person), ch);
            Ok(())
        })
        .await
    }

    /// `POST Person/$mpi-merge` (`source`: the Person to merge away, `target`: the one it goes
    /// into, `reason`).
    pub async fn mpi_merge(&self, ctx: &Ctx, parameters: Value) -> EngineResult<Value> {
        let params = Params::parse(&parameters, "$mpi-merge", &["source", "target", "reason"])?;
        let from = params
            .reference("source", "Person")?
            .ok_or_else(|| bad("$mpi-merge needs 'source' (a Person reference)"))?;
        let into = params
            .reference("target", "Person")?
            .ok_or_else(|| bad("$mpi-merge needs 'target' (a Person reference)"))?;
        if from == into {
            return Err(bad("$mpi-merge: 'source' and 'target' are the same Person"));
        }
        let reason = params.string("reason");
        self.mpi_change(ctx, "$mpi-merge", reason.as_deref(), |state, ch| {
            let (f, t) = (state.person(&from)?, state.person(&into)?);
            for (p, id) in [(f, &from), (t, &into)] {
                if state.merged_into.contains_key(&p) {
                    return Err(EngineError::Conflict {
                        message: format!("Person/{id} is already merged into another person"),
                        precondition: false,
                    });
                }
            }
            for id in state.source_ids_of(f) {
                ch.sources.insert(id);
            }
            state.merge(f, t, ch);
            Ok(())
        })
        .await
    }

    /// `POST Person/$mpi-unmerge` (`person`: a merged-away Person, `reason`): its records as
    /// they were before the merge (those still in the person it went into) come back to it.
    pub async fn mpi_unmerge(&self, ctx: &Ctx, parameters: Value) -> EngineResult<Value> {
        let params = Params::parse(&parameters, "$mpi-unmerge", &["person", "reason"])?;
        let id = params
            .reference("person", "Person")?
            .ok_or_else(|| bad("$mpi-unmerge needs 'person' (a Person reference)"))?;
        let reason = params.string("reason");
        // The records the person had before it was merged: its last active version.
        let before = self.last_active_person(&id).await?;
        self.mpi_change(ctx, "$mpi-unmerge", reason.as_deref(), move |state, ch| {
            let p = state.person(&id)?;
            let Some(&into) = state.merged_into.get(&p) else {
                return Err(EngineError::Conflict {
                    message: format!("Person/{id} is not merged into another person: nothing to unmerge"),
                    precondition: false,
                });
            };
            let survivor = state.survivor(into);
            state.merged_into.remove(&p);
            for source in before {
                if let Some(src) = state.sources.get_mut(&source)
                    && !state.linker.is_retired(src.record)
                    && state.linker.person_of(src.record) == survivor
                {
                    src.assurance = Assurance::Manual;
                    state.linker.relink(src.record, Some(p));
                    ch.sources.insert(source);
                }
            }
            ch.persons.insert(p);
            ch.persons.insert(survivor);
            Ok(())
        })
        .await
    }

    /// The source Patients of a Person's last version that was active (before its merge).
    async fn last_active_person(&self, id: &str) -> EngineResult<Vec<String>> {
        let current = self
            .store
            .read(&Ctx::system(), "Person", id)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("Person/{id}")))?;
        for version in (1..current.version).rev() {
            let Some(old) = self.store.vread(&Ctx::system(), "Person", id, version).await? else { continue };
            let Some(body) = body_of(&old) else { continue };
            if body["active"] != json!(false) {
                return Ok(body["link"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| reference_id(&l["target"], "Patient").map(str::to_string))
                    .collect());
            }
        }
        Err(EngineError::Conflict {
            message: format!("Person/{id} has no earlier version with records to restore"),
            precondition: false,
        })
    }

    /// `GET Patient/$ihe-pix` (IHE PIXm, ITI-83): the identifiers and Patient records that the
    /// index links to the person of the record with `sourceIdentifier` (`system|value`),
    /// optionally only those in the `targetSystem` domains. 404 when no record has the source
    /// identifier; 403 when a target domain is unknown to the platform.
    pub async fn ihe_pix(&self, ctx: &Ctx, params: &[(String, String)]) -> EngineResult<Value> {
        let mut source: Option<(String, String)> = None;
        let mut targets: Vec<String> = Vec::new();
        for (name, value) in params {
            match name.as_str() {
                "sourceIdentifier" => {
                    let (system, v) = value
                        .split_once('|')
                        .filter(|(s, v)| !s.is_empty() && !v.is_empty())
                        .ok_or_else(|| bad("sourceIdentifier is system|value (both parts required)"))?;
                    source = Some((system.to_string(), v.to_string()));
                }
                "targetSystem" => targets.extend(value.split(',').map(str::to_string)),
                "_format" => {}
                other => {
                    return Err(bad(format!(
                        "Patient/$ihe-pix has no parameter '{other}' (sourceIdentifier, targetSystem, _format)"
                    )));
                }
            }
        }
        let (system, value) = source.ok_or_else(|| bad("Patient/$ihe-pix needs sourceIdentifier=system|value"))?;
        self.authorize_identity_query(ctx, "$ihe-pix").await?;
        let found = self.scan("Patient", &[("identifier", format!("{system}|{value}").as_str())]).await?;
        if found.is_empty() {
            return Err(EngineError::NotFound(format!(
                "a Patient with the identifier {system}|{value} (sourceIdentifier)"
            )));
        }
        for target in &targets {
            let known = self.scan("Patient", &[("identifier", format!("{target}|").as_str()), ("_count", "1")]).await?;
            if known.is_empty() {
                return Err(EngineError::Forbidden(format!(
                    "targetSystem {target} is not a patient identifier domain known to this platform"
                )));
            }
        }
        self.mpi_sync().await?;
        let mut linked: Vec<String> = Vec::new();
        {
            let guard = self.mpi.lock().await;
            let state = guard.as_ref().ok_or_else(|| internal("master patient index", "not loaded; try again"))?;
            for r in &found {
                let person = match state.sources.get(&r.id) {
                    Some(src) => state.linker.person_of(src.record),
                    None => continue,
                };
                for id in state.source_ids_of(person) {
                    if !linked.contains(&id) {
                        linked.push(id);
                    }
                }
            }
        }
        let keys: Vec<(String, String)> = linked.iter().map(|id| ("Patient".to_string(), id.clone())).collect();
        let mut records = self.store.read_many(&Ctx::system(), &keys).await?;
        records.sort_by(|a, b| a.id.cmp(&b.id));
        let mut parameters = Vec::new();
        let mut listed: Vec<(String, String)> = Vec::new();
        for r in &records {
            let Some(body) = body_of(r) else { continue };
            let mut any = false;
            for i in body["identifier"].as_array().into_iter().flatten() {
                let (Some(s), Some(v)) = (i["system"].as_str(), i["value"].as_str()) else { continue };
                if (s == system && v == value) || (!targets.is_empty() && !targets.iter().any(|t| t == s)) {
                    continue;
                }
                any = true;
                if listed.iter().any(|(ls, lv)| ls == s && lv == v) {
                    continue; // the same identifier on several records: listed once
                }
                listed.push((s.to_string(), v.to_string()));
                let mut identifier = json!({"system": s, "value": v});
                if !i["use"].is_null() {
                    identifier["use"] = i["use"].clone();
                }
                parameters.push(json!({"name": "targetIdentifier", "valueIdentifier": identifier}));
            }
            if any || targets.is_empty() {
                parameters
                    .push(json!({"name": "targetId", "valueReference": {"reference": format!("Patient/{}", r.id)}}));
            }
        }
        if ctx.principal.is_some() {
            let record = audit::record(ctx, "pix-query", "success", "Patient/$ihe-pix".into(), linked, None);
            self.audit.append(record).await?;
        }
        Ok(json!({"resourceType": "Parameters", "parameter": parameters}))
    }

    /// Who may ask which records are one person: clinical staff, data stewards, and system
    /// clients that may read Patients.
    async fn authorize_identity_query(&self, ctx: &Ctx, operation: &str) -> EngineResult<()> {
        let allowed = |p: &access::Principal| {
            p.scopes.allows("Patient", access::Perm::Read)
                && (p.role.is_clinical() || matches!(p.role, access::Role::DataSteward | access::Role::System))
        };
        let reason = format!(
            "Patient/{operation} is for clinical staff, data stewards and system clients that may read Patients"
        );
        self.require(ctx, allowed, operation, format!("Patient/{operation}"), &reason).await
    }
}

/// The parameters of an operation's Parameters resource.
struct Params<'a> {
    operation: &'static str,
    parameters: Vec<&'a Value>,
}

impl<'a> Params<'a> {
    fn parse(resource: &'a Value, operation: &'static str, known: &[&str]) -> EngineResult<Self> {
        if resource["resourceType"] != "Parameters" {
            return Err(bad(format!("{operation} takes a Parameters resource (parameters: {})", known.join(", "))));
        }
        let parameters: Vec<&Value> = resource["parameter"].as_array().into_iter().flatten().collect();
        for p in &parameters {
            let name = p["name"].as_str().ok_or_else(|| bad("every parameter needs a name"))?;
            if !known.contains(&name) {
                return Err(bad(format!("{operation} has no parameter '{name}' ({})", known.join(", "))));
            }
        }
        Ok(Params { operation, parameters })
    }

    fn find(&self, name: &str) -> Option<&'a Value> {
        self.parameters.iter().copied().find(|p| p["name"] == name)
    }

    /// A `valueReference` to `resource_type/id` (a `valueString` id is accepted too).
    fn reference(&self, name: &str, resource_type: &str) -> EngineResult<Option<String>> {
        let Some(p) = self.find(name) else { return Ok(None) };
        let id = reference_id(&p["valueReference"], resource_type)
            .or_else(|| p["valueString"].as_str().map(|s| s.strip_prefix(&format!("{resource_type}/")).unwrap_or(s)))
            .filter(|id| crate::crud::valid_id(id))
            .ok_or_else(|| {
                bad(format!(
                    "{}: '{name}' must be a valueReference to a {resource_type} (e.g. {resource_type}/123)",
                    self.operation
                ))
            })?;
        Ok(Some(id.to_string()))
    }

    fn string(&self, name: &str) -> Option<String> {
        self.find(name).and_then(|p| p["valueString"].as_str()).map(str::to_string)
    }
}

/// Moves a source record to `target` (`None`: a person of its own) as a steward's decision,
/// marks a person left empty as merged into the new one, and closes the record's open review.
fn link_source(state: &mut MpiState, source: &str, target: Option<u32>, ch: &mut Changes) {
    let record = state.sources[source].record;
    let old = state.linker.person_of(record);
    let new = match target {
        Some(p) if p == old => old,
        Some(p) => state.linker.relink(record, Some(p)),
        // A person of its own: it keeps the one it has if it is that person's only record.
        None if state.linker.members(old).len() == 1 => old,
        None => {
            let p = state.new_person(None);
            state.linker.relink(record, Some(p))
        }
    };
    if new != old && state.linker.members(old).is_empty() {
        state.merged_into.insert(old, new);
    }
    let src = state.sources.get_mut(source).expect("checked");
    src.assurance = Assurance::Manual;
    src.weight = None;
    ch.persons.insert(old);
    ch.persons.insert(new);
    ch.sources.insert(source.to_string());
    state.close_review(source, "completed", "decided by a data steward", Some(new), ch);
}
