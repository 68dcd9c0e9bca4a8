//! FHIR R4 knowledge shared by every layer: the official definitions (StructureDefinitions,
//! SearchParameters, ValueSets, CompartmentDefinitions) loaded from the vendored
//! `hl7.fhir.r4.core.tgz`, validation of resources against them, extraction of search-index
//! entries from resources, and parsing of FHIR search queries into a typed form.
//!
//! This crate is pure: it knows nothing of HTTP or SQL.

pub mod definitions;
pub mod fhirpath;
pub mod index;
pub mod normalize;
pub mod outcome;
pub mod search;
pub mod validate;

pub use definitions::{Definitions, ParamType, SearchParamDef};
pub use index::{IndexEntry, IndexValue};
pub use outcome::{Issue, IssueSeverity, IssueType};
