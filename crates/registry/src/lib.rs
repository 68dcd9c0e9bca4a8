//! The registries (WS/T 790): the master patient index's record linkage (`linkage`), the GB/T
//! 2260 division table (`division`), and the rules of the facility (`facility`) and practitioner
//! (`practitioner`) registries. Pure: no IO beyond the embedded division table.

pub mod division;
pub mod facility;
pub mod linkage;
pub mod practitioner;
mod rules;

pub use rules::Problem;
