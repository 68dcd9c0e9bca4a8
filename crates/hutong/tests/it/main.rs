//! End-to-end tests of the real `hutong` binary.

mod clients;
mod crash;
mod mllp;
mod security;
mod serve;
mod terminology;
