#!/usr/bin/env bash
# End-to-end tests: a real FHIR client (Python fhirclient) against the real binary, on the
# embedded store and, when HUTONG_TEST_POSTGRES_URL is set, on a fresh PostgreSQL database.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/hutong-target}
cache=${HUTONG_TESTDATA:-$HOME/.cache/hutong-testdata}
scripts/fetch-test-data.sh
cargo build --quiet -p hutong
bin="$CARGO_TARGET_DIR/debug/hutong"

run_against() {
  local label=$1 demo=$2; shift 2
  local data; data=$(mktemp -d)
  local log="$data/server.log"
  "$bin" serve --listen 127.0.0.1:0 --data "$data" $demo "$@" >"$log" 2>&1 &
  local pid=$!
  local url=""
  for _ in $(seq 1 300); do
    url=$(sed -n 's/^Hutong FHIR server listening on //p' "$log" | head -1)
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; return 1; }
    sleep 0.1
  done
  [ -n "$url" ] || { echo "server did not start"; cat "$log"; kill "$pid"; return 1; }
  echo "e2e ($label) against $url"
  # The tests' client is made the way an operator makes one, while the server runs.
  local client
  client=$("$bin" admin create-client --name e2e --scopes 'system/*.*' --data "$data" "$@")
  local status=0
  HUTONG_BASE_URL="$url" HUTONG_TESTDATA="$cache" \
    HUTONG_CLIENT_ID=$(echo "$client" | "$cache/venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["client_id"])') \
    HUTONG_CLIENT_SECRET=$(echo "$client" | "$cache/venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])') \
    "$cache/venv/bin/python" -m pytest -q tests/test_e2e_fhir.py || status=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  return $status
}

run_against sqlite --demo
if [ -n "${HUTONG_TEST_POSTGRES_URL:-}" ]; then
  db="hutong_e2e_$$"
  "$cache/venv/bin/python" - "$HUTONG_TEST_POSTGRES_URL" "$db" <<'PY'
import socket, sys
# CREATE DATABASE through psql, which ships with the server packages.
import subprocess
url, db = sys.argv[1], sys.argv[2]
subprocess.run(["psql", url, "-q", "-c", f"CREATE DATABASE {db}"], check=True)
PY
  run_against postgres "" --database "${HUTONG_TEST_POSTGRES_URL%/*}/$db"
fi
