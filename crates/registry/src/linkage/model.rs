//! The Fellegi–Sunter model: for every comparison level, m = P(level | same person) and
//! u = P(level | different persons). u comes from random pairs (which are almost all different
//! persons); m and the share of matches among candidate pairs (λ) from expectation-maximisation
//! over the candidate pairs, with u held fixed — the method Splink uses. A pair's match weight is
//! log2 of its odds of being the same person: log2(λ / (1 − λ)) + Σ log2(m / u) over the
//! comparisons both records can make.

use std::collections::HashMap;

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::compare::{COMPARISONS, Comparison, Gamma, NULL, gamma};
use super::record::Prepared;

/// Estimated parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Share of matches among candidate pairs.
    pub lambda: f64,
    /// m per comparison and level.
    pub m: Vec<Vec<f64>>,
    /// u per comparison and level.
    pub u: Vec<Vec<f64>>,
    /// Expectation-maximisation rounds run.
    pub iterations: usize,
    weights: Vec<Vec<f64>>,
}

/// What training saw, for reports.
#[derive(Debug, Clone, Default)]
pub struct TrainingReport {
    pub random_pairs: usize,
    pub candidate_pairs: usize,
    pub distinct_vectors: usize,
}

/// The candidate pairs one blocking rule found, and the comparisons its key is made of.
pub(crate) struct Session {
    pub blocked: Vec<usize>,
    pub pairs: Vec<(u32, u32)>,
}

fn initial_m(levels: usize) -> Vec<f64> {
    let raw = [0.85, 0.1, 0.03, 0.015, 0.005];
    let v: Vec<f64> = raw[..levels].to_vec();
    let sum: f64 = v.iter().sum();
    v.iter().map(|x| x / sum).collect()
}

impl Model {
    fn with(lambda: f64, m: Vec<Vec<f64>>, u: Vec<Vec<f64>>, iterations: usize) -> Model {
        let weights = m.iter().zip(&u).map(|(m, u)| m.iter().zip(u).map(|(m, u)| (m / u).log2()).collect()).collect();
        Model { lambda, m, u, iterations, weights }
    }

    /// The weight of one level of one comparison: log2(m / u).
    pub fn level_weight(&self, comparison: usize, level: u8) -> f64 {
        if level == NULL { 0.0 } else { self.weights[comparison][level as usize] }
    }

    /// log2(λ / (1 − λ)).
    pub fn prior_weight(&self) -> f64 {
        (self.lambda / (1.0 - self.lambda)).log2()
    }

    /// The match weight of a comparison vector (without term-frequency adjustment).
    pub fn weight(&self, g: &Gamma) -> f64 {
        self.prior_weight() + (0..COMPARISONS).map(|c| self.level_weight(c, g[c])).sum::<f64>()
    }

    /// Estimates the model from prepared records. `sessions` are the candidate pairs of each
    /// blocking rule with the comparisons that rule's key is made of: each session estimates m
    /// for the other comparisons only (pairs found by agreeing on a field say nothing about how
    /// often true matches agree on it), and m is the mean over the sessions that estimated it.
    /// λ is then the share of matches among all random pairs, from the expected matches among
    /// the candidate pairs `all` (m and u fixed), which are the pairs among the first `covered`
    /// records (all of them, unless the candidates were capped).
    pub(crate) fn estimate(
        records: &[Prepared],
        sessions: &[Session],
        (all, covered): (&[(u32, u32)], usize),
        random_pairs: usize,
        seed: u64,
    ) -> (Model, TrainingReport) {
        let mut report = TrainingReport::default();
        // u from random pairs.
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts: Vec<Vec<f64>> = Comparison::ALL.iter().map(|c| vec![1.0; c.levels()]).collect();
        let n = records.len();
        if n >= 2 {
            let all_pairs = n * (n - 1) / 2;
            if all_pairs <= random_pairs {
                for i in 0..n {
                    for j in i + 1..n {
                        add(&mut counts, &gamma(&records[i], &records[j]), 1.0);
                    }
                }
                report.random_pairs = all_pairs;
            } else {
                for _ in 0..random_pairs {
                    let i = rng.random_range(0..n);
                    let mut j = rng.random_range(0..n - 1);
                    if j >= i {
                        j += 1;
                    }
                    add(&mut counts, &gamma(&records[i], &records[j]), 1.0);
                }
                report.random_pairs = random_pairs;
            }
        }
        let u: Vec<Vec<f64>> = counts.iter().map(|c| normalize(c)).collect();

        let initial: Vec<Vec<f64>> = Comparison::ALL.iter().map(|c| initial_m(c.levels())).collect();
        let mut m_sum: Vec<Vec<f64>> = Comparison::ALL.iter().map(|c| vec![0.0; c.levels()]).collect();
        let mut m_n = [0usize; COMPARISONS];
        let mut iterations = 0;
        for Session { blocked, pairs } in sessions {
            let mut patterns: HashMap<Gamma, f64> = HashMap::new();
            for &(a, b) in pairs {
                let mut g = gamma(&records[a as usize], &records[b as usize]);
                for &c in blocked {
                    g[c] = NULL;
                }
                *patterns.entry(g).or_default() += 1.0;
            }
            report.candidate_pairs += pairs.len();
            report.distinct_vectors += patterns.len();
            if pairs.len() < 10 {
                continue;
            }
            let (m, _, rounds) = em(&patterns, &u, initial.clone(), 0.1, true);
            iterations += rounds;
            for c in 0..COMPARISONS {
                let seen: f64 = patterns.iter().filter(|(g, _)| g[c] != NULL).map(|(_, n)| n).sum();
                if !blocked.contains(&c) && seen >= 10.0 {
                    for (s, v) in m_sum[c].iter_mut().zip(&m[c]) {
                        *s += v;
                    }
                    m_n[c] += 1;
                }
            }
        }
        let mut m: Vec<Vec<f64>> =
            (0..COMPARISONS).map(|c| if m_n[c] == 0 { initial[c].clone() } else { normalize(&m_sum[c]) }).collect();
        constrain(&mut m);

        // λ over all pairs: expected matches among the candidate pairs, scaled from the records
        // they cover to all records when the candidates were capped. The capped candidates are
        // the pairs among the first `covered` records, and a true pair has both its records
        // there with probability covered(covered − 1) / n(n − 1) (records arrive in no
        // particular order): the scale is that ratio's inverse, quadratic in n / covered.
        let mut patterns: HashMap<Gamma, f64> = HashMap::new();
        for &(a, b) in all {
            *patterns.entry(gamma(&records[a as usize], &records[b as usize])).or_default() += 1.0;
        }
        let (_, lambda_candidates, _) = em(&patterns, &u, m.clone(), 0.1, false);
        let covered = covered.clamp(2, n.max(2)) as f64;
        let all_pairs = (n as f64 * (n as f64 - 1.0) / 2.0).max(1.0);
        let covered_pairs = (covered * (covered - 1.0) / 2.0).min(all_pairs);
        let matches = lambda_candidates * all.len() as f64 * all_pairs / covered_pairs;
        let lambda = (matches / all_pairs).clamp(1e-12, 0.5);
        (Model::with(lambda, m, u, iterations), report)
    }
}

/// Expectation-maximisation over distinct comparison vectors with their counts, u fixed;
/// updates m too when `update_m`. Returns (m, λ, rounds).
fn em(
    patterns: &HashMap<Gamma, f64>,
    u: &[Vec<f64>],
    mut m: Vec<Vec<f64>>,
    mut lambda: f64,
    update_m: bool,
) -> (Vec<Vec<f64>>, f64, usize) {
    let total: f64 = patterns.values().sum();
    if total == 0.0 {
        return (m, lambda, 0);
    }
    let mut rounds = 0;
    for round in 1..=100 {
        rounds = round;
        let mut m_counts: Vec<Vec<f64>> = Comparison::ALL.iter().map(|c| vec![1e-3; c.levels()]).collect();
        let mut matches = 0.0;
        for (g, &count) in patterns {
            let (mut pm, mut pu) = (lambda, 1.0 - lambda);
            for c in 0..COMPARISONS {
                if g[c] != NULL {
                    pm *= m[c][g[c] as usize];
                    pu *= u[c][g[c] as usize];
                }
            }
            let p = pm / (pm + pu);
            matches += p * count;
            if update_m {
                add(&mut m_counts, g, p * count);
            }
        }
        let new_lambda = (matches / total).clamp(1e-9, 1.0 - 1e-9);
        let mut change = (new_lambda - lambda).abs();
        lambda = new_lambda;
        if update_m {
            let new_m: Vec<Vec<f64>> = m_counts.iter().map(|c| normalize(c)).collect();
            change = new_m.iter().flatten().zip(m.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(change, f64::max);
            m = new_m;
        }
        if change < 1e-6 {
            break;
        }
    }
    (m, lambda, rounds)
}

/// Domain knowledge the data cannot teach: household members (twins above all) agree on family
/// name, birth date, address and phone, so expectation-maximisation takes some of them for
/// matches and learns that "matches" may carry two different valid ID numbers. That does not
/// happen to one person except by re-issue, so that m value is capped (Splink calls this fixing
/// m probabilities).
pub const MAX_M_DIFFERENT_VALID_ID: f64 = 1e-4;

fn constrain(m: &mut [Vec<f64>]) {
    for (c, cap) in [(Comparison::IdNumber as usize, MAX_M_DIFFERENT_VALID_ID)] {
        let last = m[c].len() - 1;
        if m[c][last] > cap {
            let rest: f64 = m[c][..last].iter().sum();
            let scale = (1.0 - cap) / rest;
            for v in &mut m[c][..last] {
                *v *= scale;
            }
            m[c][last] = cap;
        }
    }
}

fn add(counts: &mut [Vec<f64>], g: &Gamma, w: f64) {
    for (c, &level) in g.iter().enumerate() {
        if level != NULL {
            counts[c][level as usize] += w;
        }
    }
}

fn normalize(v: &[f64]) -> Vec<f64> {
    let sum: f64 = v.iter().sum();
    v.iter().map(|x| x / sum).collect()
}
