//! Internet-hospital prescriptions (互联网医院处方), pure: no store, no HTTP.
//!
//! - [`catalogue`]: the drug catalogue and the interaction knowledge base, loaded from documented
//!   TSV tables (`data/catalogue.tsv`, `data/interactions.tsv` are the synthetic demo ones).
//! - [`check`]: the national prescription rules for online prescribing (controlled drugs, children
//!   under 6, at most 5 drugs, herbal pieces apart, supply days, validity) and the rational-drug-use
//!   checks (interactions, duplicate therapy, dose limits by age and weight, allergies,
//!   contraindications, sex and age restrictions). Every alert says why, in Chinese and English;
//!   hard stops are never signed, warnings only with a recorded reason.
//! - [`sign`]: the canonical form of a prescription and its SM2 signatures (doctor, pharmacist).

pub mod catalogue;
pub mod check;
pub mod sign;

pub use catalogue::{Catalogue, Category, Drug, Interaction, Knowledge, Severity};
pub use check::{Alert, Item, Level, PatientFacts, Prescription, check};
