#!/usr/bin/env bash
# The one test command: formatting, lints, every Rust test on SQLite and on a throwaway
# PostgreSQL 15, then the end-to-end tests against the real binary. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hutong-target}
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

pgdir=$(mktemp -d /tmp/hutong-pg.XXXXXX)
cleanup() { scripts/pg.sh stop "$pgdir" || true; rm -rf "$pgdir"; }
trap cleanup EXIT

step "starting a throwaway PostgreSQL on loopback"
HUTONG_TEST_POSTGRES_URL=$(scripts/pg.sh start "$pgdir") || fail "could not start PostgreSQL (see $pgdir/log)"
export HUTONG_TEST_POSTGRES_URL HUTONG_REQUIRE_POSTGRES=1
echo "PostgreSQL at $HUTONG_TEST_POSTGRES_URL"

step "fetching external test data (Synthea, Inferno, FHIR JSON schema) and Python test packages"
scripts/fetch-test-data.sh || fail "fetching test data"

step "headless Chromium for the browser tests (portal, internet hospital) (chromium, chromium-driver, fonts-wqy-microhei)"
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! dpkg -s fonts-wqy-microhei >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver fonts-wqy-microhei \
    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver fonts-wqy-microhei; } \
    || fail "installing chromium chromium-driver fonts-wqy-microhei"
fi
# The browser test fails (instead of skipping) without a browser, and saves its screenshots here.
export HUTONG_REQUIRE_BROWSER=1
export HUTONG_ARTIFACTS_DIR=${HUTONG_ARTIFACTS_DIR:-$CARGO_TARGET_DIR/artifacts}

step "cargo fmt --check"
cargo fmt --all -- --check || fail "formatting (run cargo fmt --all)"

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings || fail "clippy"

step "cargo test (SQLite and PostgreSQL)"
cargo test --workspace 2>&1 | tee /tmp/hutong-cargo-test.log || fail "cargo test"
grep -E '^test result:' /tmp/hutong-cargo-test.log | awk '{p+=$4; f+=$6} END {print "rust: " p " passed, " f " failed"}'

if [ -x scripts/e2e.sh ]; then
  step "end-to-end tests against the real binary"
  scripts/e2e.sh || fail "end-to-end tests"
fi
echo "portal screenshots: $HUTONG_ARTIFACTS_DIR/portal-screenshots/"
echo "internet hospital screenshots: $HUTONG_ARTIFACTS_DIR/internet-screenshots/"
step "all tests passed"
