//! End-to-end tests of the real `hutong` binary.

mod crash;
mod security;
mod serve;
