//! The contract test suite every ResourceStore backend must pass.
