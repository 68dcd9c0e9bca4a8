//! The `hutong` binary.
fn main() {}
