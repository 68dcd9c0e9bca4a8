//! End-to-end tests of the real `hutong` binary.

mod bench;
mod clients;
mod crash;
mod internet_browser;
mod mllp;
mod portal_browser;
mod security;
mod serve;
mod terminology;
mod webdriver;
