//! Probabilistic record linkage for the master patient index: Fellegi–Sunter matching with
//! parameters estimated from the data, Chinese-aware comparisons, blocking on several keys.
//!
//! - [`Record`]: what a source system says about a person.
//! - [`Comparison`]: the field comparisons and their agreement levels (`compare.rs`).
//! - [`Model`]: m and u probabilities, estimated by [`Linker::train`] (`model.rs`).
//! - [`Linker`]: the index that matches one record at a time and links it to a person
//!   (`index.rs`); batch linkage is the same, record after record.

mod compare;
mod eval;
mod index;
mod model;
mod record;
pub mod synth;

pub use compare::{COMPARISONS, Comparison, Gamma, NULL};
pub use eval::{Metrics, parse_febrl};
pub use index::{Candidate, Decision, Linker, MAX_BLOCK, Thresholds, default_model, needs_review, weigh};
pub use model::{Model, TrainingReport};
pub use record::Record;
