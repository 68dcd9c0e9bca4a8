//! End-to-end tests of the real `hutong` binary.

mod clients;
mod crash;
mod mllp;
mod portal_browser;
mod security;
mod serve;
mod terminology;
