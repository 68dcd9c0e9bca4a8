//! The in-memory linkage index: blocking keys → records, records → persons, term frequencies of
//! names; incremental matching of one record, and batch linkage of many.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use super::compare::{Comparison, Gamma, NULL, gamma};
use super::model::{Model, Session, TrainingReport};
use super::record::{Prepared, Record};

/// Blocks with more records than this are too common to say anything (a frequent name on a
/// frequent birth date in a province): they are skipped when looking for candidates, and other
/// keys must find the match.
pub const MAX_BLOCK: usize = 100;

/// Decision thresholds on the match weight (log2 of the odds that two records are one person).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// At or above: linked automatically (weight 6 ≈ probability 0.985; chosen on the synthetic
    /// Chinese and FEBRL sets, where precision stays ≥ 0.9998 from 5 to 10 and recall falls
    /// above 6).
    pub link: f64,
    /// At or above (and below `link`): sent to a data steward for review.
    pub review: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { link: 6.0, review: 2.0 }
    }
}

/// The best-scoring record of one person for a probe record.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub person: u32,
    pub record: u32,
    pub weight: f64,
    pub gamma: Gamma,
}

impl Candidate {
    /// The probability that the probe and this person are the same.
    pub fn probability(&self) -> f64 {
        1.0 / (1.0 + (-self.weight).exp2())
    }
}

/// What to do with a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Same person as `person`.
    Link { person: u32, weight: f64 },
    /// Same person as `person` and as the persons `merged`, which are merged into it: the record
    /// scored above the link threshold with each, and their records are a plausible match for
    /// each other (above the review threshold, no review rule): one person the index had split
    /// because the record that would have joined them came later, not two persons to choose
    /// between.
    Merge { person: u32, weight: f64, merged: Vec<u32> },
    /// Possibly one of these persons (or two persons scored above the link threshold): a person
    /// decides.
    Review { candidates: Vec<(u32, f64)> },
    /// Nobody known.
    New,
}

#[derive(Default, Clone)]
struct Fx;

impl BuildHasher for Fx {
    type Hasher = std::collections::hash_map::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        std::collections::hash_map::DefaultHasher::new()
    }
}

/// The hasher of the block map: its keys are already SipHash values (`key`), uniform over
/// 64 bits, so hashing them again only costs time.
#[derive(Default, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by u64 keys; FNV-1a for completeness.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type Blocks = HashMap<u64, Vec<u32>, std::hash::BuildHasherDefault<KeyHasher>>;

fn key(rule: u8, parts: &[&str]) -> u64 {
    let mut h = Fx.build_hasher();
    rule.hash(&mut h);
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// The blocking rules: any shared key makes two records candidates. Several independent keys,
/// so that recall survives a missing or mistyped field. Each names the comparisons its key is
/// made of (training must not estimate those from the pairs the rule found).
pub(crate) const RULES: [(u8, &[Comparison]); 10] = [
    (1, &[Comparison::IdNumber]),
    (2, &[Comparison::Phone]),
    (3, &[Comparison::Family, Comparison::BirthDate]),
    (4, &[Comparison::Given, Comparison::BirthDate]),
    (5, &[Comparison::Family, Comparison::Given]),
    (6, &[Comparison::BirthDate, Comparison::Postcode]),
    (7, &[Comparison::Family, Comparison::Postcode]),
    (8, &[Comparison::Given, Comparison::Postcode]),
    (9, &[Comparison::BirthDate, Comparison::Residence]),
    (10, &[Comparison::Family, Comparison::Residence]),
];

/// The blocking keys of a record, with the rule each comes from.
pub(crate) fn block_keys(p: &Prepared) -> Vec<(u8, u64)> {
    let mut keys = Vec::with_capacity(10);
    let family = p.family.as_ref().map(|n| n.phonetic.as_str());
    let given = p.given.as_ref().map(|n| n.phonetic.as_str());
    let birth = p.birth_date.as_deref();
    let parts: [(u8, Option<&str>, Option<&str>); 10] = [
        (1, p.id_number.as_deref(), Some("")),
        (2, p.phone.as_deref(), Some("")),
        (3, family, birth),
        (4, given, birth),
        (5, family, given),
        (6, birth, p.postcode.as_deref()),
        (7, family, p.postcode.as_deref()),
        (8, given, p.postcode.as_deref()),
        (9, birth, p.region.as_deref()),
        (10, family, p.locality.as_deref()),
    ];
    for (rule, a, b) in parts {
        if let (Some(a), Some(b)) = (a, b) {
            keys.push((rule, key(rule, &[a, b])));
        }
    }
    keys
}

/// Pairs no score may link without a person looking: household members agree on family name,
/// birth date (twins), address and phone, and those agreements are not independent, so their
/// weights add up past any threshold. Two different valid ID numbers mean review at most; so does
/// the twin pattern: the same family name, the birth date the same, one edit apart or missing,
/// and given names wholly different, or alike in sound but of different sexes (思 and 丝, a
/// brother and a sister), when an ID number is missing, or when the two are of different sexes
/// and their ID numbers differ (one mistyped: with both valid, the ID comparison decides; two
/// invalid numbers that differ are more often one number mistyped twice, as in FEBRL).
pub fn needs_review(g: &Gamma) -> bool {
    let id = g[Comparison::IdNumber as usize];
    let given = g[Comparison::Given as usize];
    let birth = g[Comparison::BirthDate as usize];
    let other_sex = g[Comparison::Sex as usize] == 1;
    let twins = (given == 3 || (given == 2 && other_sex))
        && (birth <= 1 || birth == NULL)
        && g[Comparison::Family as usize] <= 1
        && (id == NULL || (id == 2 && other_sex));
    id == 3 || twins
}

/// Pseudo-records of the term-frequency estimate (see `Linker::term_weight`).
const TF_PRIOR: f64 = 1_000.0;

/// The person of a retired record.
const RETIRED: u32 = u32::MAX;

/// The index.
pub struct Linker {
    model: Model,
    thresholds: Thresholds,
    records: Vec<Prepared>,
    person_of: Vec<u32>,
    persons: u32,
    members: Vec<Vec<u32>>,
    blocks: Blocks,
    family_tf: HashMap<String, u32>,
    given_tf: HashMap<String, u32>,
    family_total: u32,
    given_total: u32,
}

impl Linker {
    pub fn new(model: Model, thresholds: Thresholds) -> Self {
        Linker {
            model,
            thresholds,
            records: Vec::new(),
            person_of: Vec::new(),
            persons: 0,
            members: Vec::new(),
            blocks: Blocks::default(),
            family_tf: HashMap::new(),
            given_tf: HashMap::new(),
            family_total: 0,
            given_total: 0,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds
    }

    /// Records in the index.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Persons in the index.
    pub fn persons(&self) -> u32 {
        self.persons
    }

    /// The person of a record.
    pub fn person_of(&self, record: u32) -> u32 {
        self.person_of[record as usize]
    }

    /// Estimates a model from a set of records (unsupervised): u from `random_pairs` random
    /// pairs, m and λ by expectation-maximisation over (up to `max_candidates`) blocked pairs.
    pub fn train(records: &[Record], random_pairs: usize, max_candidates: usize, seed: u64) -> (Model, TrainingReport) {
        let prepared: Vec<Prepared> = records.iter().map(Record::prepare).collect();
        let sessions: Vec<Session> = RULES
            .iter()
            .map(|(rule, fields)| {
                let blocked = fields.iter().map(|f| *f as usize).collect();
                Session { blocked, pairs: candidate_pairs(&prepared, Some(*rule), max_candidates / RULES.len()) }
            })
            .collect();
        let all = candidate_pairs(&prepared, None, max_candidates);
        // Capped: the pairs stop inside the records, after the last record they reach.
        let covered = if all.len() >= max_candidates {
            all.iter().map(|p| p.1 as usize + 1).max().unwrap_or(prepared.len())
        } else {
            prepared.len()
        };
        Model::estimate(&prepared, &sessions, (&all, covered), random_pairs, seed)
    }

    fn term_weight(&self, c: usize, level: u8, probe: &Prepared) -> f64 {
        // Agreement on a rare name says more than agreement on a common one: for exact name
        // agreement, u is the name's frequency instead of the average (Splink's term-frequency
        // adjustment).
        if level == 0 {
            let (tf, total, name) = match Comparison::ALL[c] {
                Comparison::Family => (&self.family_tf, self.family_total, probe.family.as_ref()),
                Comparison::Given => (&self.given_tf, self.given_total, probe.given.as_ref()),
                _ => return self.model.level_weight(c, level),
            };
            if let Some(name) = name
                && total > 0
            {
                // The name's share of the index, smoothed towards the model's average by
                // TF_PRIOR pseudo-records: in a small index every name is "frequent" (one
                // record of one is 100%), which says nothing about names in general.
                let count = tf.get(&name.text).copied().unwrap_or(0).max(1) as f64;
                let average = self.model.u[c][0];
                let freq =
                    ((count + TF_PRIOR * average) / (total as f64 + TF_PRIOR)).max(average.min(1.0 / total as f64));
                return (self.model.m[c][0] / freq).log2();
            }
        }
        self.model.level_weight(c, level)
    }

    /// The match weight of two prepared records.
    fn score(&self, probe: &Prepared, other: &Prepared) -> (f64, Gamma) {
        let g = gamma(probe, other);
        let mut w = self.model.prior_weight();
        for (c, &level) in g.iter().enumerate() {
            if level != NULL {
                w += self.term_weight(c, level, probe);
            }
        }
        (w, g)
    }

    fn candidates_prepared(&self, probe: &Prepared) -> Vec<Candidate> {
        let mut seen: Vec<u32> = Vec::new();
        for (_, k) in block_keys(probe) {
            if let Some(block) = self.blocks.get(&k)
                && block.len() <= MAX_BLOCK
            {
                seen.extend_from_slice(block);
            }
        }
        seen.sort_unstable();
        seen.dedup();
        // Every record scored, then the best record of each person (the first of equals).
        let mut out: Vec<Candidate> = seen
            .into_iter()
            .map(|record| {
                let (weight, gamma) = self.score(probe, &self.records[record as usize]);
                Candidate { person: self.person_of[record as usize], record, weight, gamma }
            })
            .collect();
        out.sort_by(|a, b| a.person.cmp(&b.person).then(b.weight.total_cmp(&a.weight)).then(a.record.cmp(&b.record)));
        out.dedup_by_key(|c| c.person);
        out.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.person.cmp(&b.person)));
        out
    }

    /// The persons a record may be, best first (one candidate per person: its best record).
    pub fn candidates(&self, record: &Record) -> Vec<Candidate> {
        self.candidates_prepared(&record.prepare())
    }

    /// The decision the thresholds give for a candidate list (best first). Candidates above the
    /// link threshold that a review rule holds back ([`needs_review`]) cannot be linked, and do
    /// not compete with one that can: a twin does not stop a record joining its own person.
    pub fn decide(&self, candidates: &[Candidate]) -> Decision {
        let above_link: Vec<&Candidate> =
            candidates.iter().filter(|c| c.weight >= self.thresholds.link && !needs_review(&c.gamma)).collect();
        match above_link.as_slice() {
            [one] => Decision::Link { person: one.person, weight: one.weight },
            [] => {
                let review: Vec<(u32, f64)> = candidates
                    .iter()
                    .filter(|c| c.weight >= self.thresholds.review)
                    .map(|c| (c.person, c.weight))
                    .collect();
                if review.is_empty() { Decision::New } else { Decision::Review { candidates: review } }
            }
            many => {
                let consistent = many.iter().enumerate().all(|(i, a)| {
                    many[i + 1..].iter().all(|b| {
                        let (w, g) = self.score(&self.records[a.record as usize], &self.records[b.record as usize]);
                        w >= self.thresholds.review && !needs_review(&g)
                    })
                });
                if consistent {
                    Decision::Merge {
                        person: many[0].person,
                        weight: many[0].weight,
                        merged: many[1..].iter().map(|c| c.person).collect(),
                    }
                } else {
                    Decision::Review { candidates: many.iter().map(|c| (c.person, c.weight)).collect() }
                }
            }
        }
    }

    /// Matches a record and adds it: linked to the person the decision names, or made a new
    /// person (also when it goes to review: the steward's decision links it later).
    pub fn add(&mut self, record: &Record) -> (u32, Decision) {
        let prepared = record.prepare();
        let candidates = self.candidates_prepared(&prepared);
        let decision = self.decide(&candidates);
        let person = match &decision {
            Decision::Link { person, .. } => *person,
            Decision::Merge { person, merged, .. } => {
                for &other in merged {
                    self.merge(other, *person);
                }
                *person
            }
            _ => self.new_person(),
        };
        (self.insert(prepared, person), decision)
    }

    /// A new person without records.
    pub fn new_person(&mut self) -> u32 {
        self.persons += 1;
        self.members.push(Vec::new());
        self.persons - 1
    }

    /// Batch linkage: adds the records in order, as if they arrived one by one, and returns
    /// each one's person at the end (after any merges a later record caused).
    pub fn link_all(&mut self, records: &[Record]) -> Vec<u32> {
        let first = self.records.len() as u32;
        for r in records {
            self.add(r);
        }
        (first..self.records.len() as u32).map(|i| self.person_of(i)).collect()
    }

    /// Moves every record of `from` to `into`.
    pub fn merge(&mut self, from: u32, into: u32) {
        if from == into {
            return;
        }
        let moved = std::mem::take(&mut self.members[from as usize]);
        for &r in &moved {
            self.person_of[r as usize] = into;
        }
        self.members[into as usize].extend(moved);
    }

    /// The records of a person.
    pub fn members(&self, person: u32) -> &[u32] {
        &self.members[person as usize]
    }

    fn insert(&mut self, prepared: Prepared, person: u32) -> u32 {
        let id = self.records.len() as u32;
        for (_, k) in block_keys(&prepared) {
            self.blocks.entry(k).or_default().push(id);
        }
        if let Some(n) = &prepared.family {
            *self.family_tf.entry(n.text.clone()).or_default() += 1;
            self.family_total += 1;
        }
        if let Some(n) = &prepared.given {
            *self.given_tf.entry(n.text.clone()).or_default() += 1;
            self.given_total += 1;
        }
        self.records.push(prepared);
        self.person_of.push(person);
        self.members[person as usize].push(id);
        id
    }

    /// Adds a record to a known person without matching it (a registry reloading its links, or
    /// a steward's decision); returns the record's number.
    pub fn insert_linked(&mut self, record: &Record, person: u32) -> u32 {
        assert!(person < self.persons, "person {person} does not exist");
        self.insert(record.prepare(), person)
    }

    /// Takes a record out of the index (its source record was deleted, or is replaced by a
    /// newer version under a new number): no probe finds it again and its person loses it. Its
    /// number is not reused.
    pub fn retire(&mut self, record: u32) {
        let person = self.person_of[record as usize];
        if person == RETIRED {
            return;
        }
        let prepared = &self.records[record as usize];
        for (_, k) in block_keys(prepared) {
            if let Some(block) = self.blocks.get_mut(&k) {
                block.retain(|&r| r != record);
                if block.is_empty() {
                    self.blocks.remove(&k);
                }
            }
        }
        if let Some(n) = &prepared.family
            && let Some(c) = self.family_tf.get_mut(&n.text)
        {
            *c = c.saturating_sub(1);
            self.family_total = self.family_total.saturating_sub(1);
        }
        if let Some(n) = &prepared.given
            && let Some(c) = self.given_tf.get_mut(&n.text)
        {
            *c = c.saturating_sub(1);
            self.given_total = self.given_total.saturating_sub(1);
        }
        self.members[person as usize].retain(|&r| r != record);
        self.person_of[record as usize] = RETIRED;
    }

    /// Whether a record has been retired.
    pub fn is_retired(&self, record: u32) -> bool {
        self.person_of[record as usize] == RETIRED
    }

    /// Moves a record to another person (a steward's link, or an unmerge into a new person when
    /// `person` is `None`); returns the record's person.
    pub fn relink(&mut self, record: u32, person: Option<u32>) -> u32 {
        let old = self.person_of[record as usize];
        assert!(old != RETIRED, "record {record} is retired");
        let p = person.unwrap_or_else(|| self.new_person());
        self.members[old as usize].retain(|&r| r != record);
        self.person_of[record as usize] = p;
        self.members[p as usize].push(record);
        p
    }
}

/// The match weight of two records under `model`, without the term-frequency adjustment an
/// index provides (for callers that weigh a few pairs found another way, as `Patient/$match`
/// does with the FHIR search index), with the comparison vector.
pub fn weigh(model: &Model, a: &Record, b: &Record) -> (f64, Gamma) {
    let g = gamma(&a.prepare(), &b.prepare());
    (model.weight(&g), g)
}

/// A model for a registry too small (or too new) to estimate its own: trained on synthetic
/// Chinese records (`synth`, 20,000 records, fixed seed), so it knows the platform's field
/// error rates but not the registry's own name and birth-date frequencies.
pub fn default_model() -> Model {
    let data = super::synth::generate(super::synth::Settings { records: 20_000, seed: 20_261_122 });
    let records: Vec<Record> = data.into_iter().map(|s| s.record).collect();
    Linker::train(&records, 300_000, 500_000, 20_261_122).0
}

/// Candidate pairs (i < j) of a record set by the blocking keys (of one rule, or of all), at
/// most `max` of them (the first records' pairs; for training, a sample suffices).
pub(crate) fn candidate_pairs(records: &[Prepared], rule: Option<u8>, max: usize) -> Vec<(u32, u32)> {
    let mut blocks = Blocks::default();
    let mut pairs = Vec::new();
    let mut mine: Vec<u32> = Vec::new();
    for (j, r) in records.iter().enumerate() {
        mine.clear();
        for (rl, k) in block_keys(r) {
            if rule.is_some_and(|want| want != rl) {
                continue;
            }
            let block = blocks.entry(k).or_default();
            if block.len() <= MAX_BLOCK {
                mine.extend_from_slice(block);
            }
            block.push(j as u32);
        }
        mine.sort_unstable();
        mine.dedup();
        for &i in &mine {
            pairs.push((i, j as u32));
            if pairs.len() >= max {
                return pairs;
            }
        }
    }
    pairs
}

#[cfg(test)]
mod weigh_tests {
    use super::super::compare::COMPARISONS;
    use super::*;

    /// A comparison vector from (comparison, level) pairs, every other comparison missing.
    fn vector(levels: &[(Comparison, u8)]) -> Gamma {
        let mut g = [NULL; COMPARISONS];
        for &(c, level) in levels {
            g[c as usize] = level;
        }
        g
    }

    #[test]
    fn twins_are_held_back_unless_their_id_numbers_agree() {
        use Comparison::*;
        let household = [(Family, 0), (BirthDate, 0), (Phone, 0), (Residence, 0)];
        let with = |extra: &[(Comparison, u8)]| vector(&[&household[..], extra].concat());
        // Wholly different given names, no ID number: twins.
        assert!(needs_review(&with(&[(Given, 3), (Sex, 0)])));
        // The same with a birth date one edit apart, or missing.
        assert!(needs_review(&vector(&[(Family, 0), (Given, 3), (BirthDate, 1), (Phone, 0)])));
        assert!(needs_review(&vector(&[(Family, 0), (Given, 3), (Phone, 0), (Residence, 0)])));
        // A brother and a sister with names alike in sound (思 and 丝).
        assert!(needs_review(&with(&[(Given, 2), (Sex, 1)])));
        // Of different sexes, one ID number mistyped.
        assert!(needs_review(&with(&[(Given, 3), (Sex, 1), (IdNumber, 2)])));
        // Agreeing ID numbers decide.
        assert!(!needs_review(&with(&[(Given, 3), (Sex, 1), (IdNumber, 0)])));
        assert!(!needs_review(&with(&[(Given, 3), (IdNumber, 1)])));
        // One person: a given name alike in sound, the same sex.
        assert!(!needs_review(&with(&[(Given, 2), (Sex, 0)])));
        // Two invalid numbers that differ and no sex recorded (FEBRL's mistyped social security
        // numbers): the score decides.
        assert!(!needs_review(&with(&[(Given, 3), (IdNumber, 2)])));
        // A different family name is not a twin.
        assert!(!needs_review(&vector(&[(Family, 3), (Given, 3), (BirthDate, 0), (Phone, 0)])));
    }

    #[test]
    fn namesakes_with_different_valid_ids_are_held_back() {
        let model = default_model();
        let a = Record {
            family: Some("张".into()),
            given: Some("伟".into()),
            birth_date: Some("1980-01-02".into()),
            sex: Some('M'),
            id_number: Some("110105198001020038".into()),
            phone: Some("13800138000".into()),
            ..Default::default()
        };
        let b = Record { id_number: Some("310101198001020013".into()), phone: Some("13900139000".into()), ..a.clone() };
        let (w, g) = weigh(&model, &a, &b);
        assert_eq!(g[Comparison::IdNumber as usize], 3, "two different valid ID numbers");
        assert!(needs_review(&g), "{g:?}");
        let (same, _) = weigh(&model, &a, &Record { phone: None, ..a.clone() });
        assert!(same > w + 20.0, "the same ID number weighs far more: {same} vs {w}");
    }
}
