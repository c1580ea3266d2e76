#!/usr/bin/env bash
# Line coverage of the outbox library, measured with cargo-tarpaulin (installed from crates.io
# when missing) over the library's unit, conformance, integration and end-to-end tests against
# the real services. Prints the figure of every library file, then those of the two modules held
# to 100%: the PostgreSQL repository and the relay worker. Exits non-zero when either is below
# 100% of its lines (`.ci/run` runs it).
#
#   scripts/coverage.sh              run, print per-file figures (HTML report in target/coverage)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v cargo-tarpaulin >/dev/null; then
  echo "coverage: installing cargo-tarpaulin from crates.io (a few minutes, once)"
  cargo install cargo-tarpaulin --locked --version 0.37.5
fi
if [ -z "${DATABASE_URL:-}" ] && [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  scripts/services.sh up
  eval "$(scripts/services.sh env)"
fi
export DATABASE_URL KAFKA_BOOTSTRAP_SERVERS
scripts/kafka-node.sh fetch

OUT="$ROOT/target/coverage"
mkdir -p "$OUT"
# A report left by an earlier run must not stand in for this one.
rm -f "$OUT/tarpaulin-report.json"
set +o pipefail
cargo tarpaulin \
  --engine llvm \
  --target-dir "$ROOT/target/tarpaulin" \
  --skip-clean \
  --timeout 900 \
  -p outbox-core -p outbox-seaorm -p outbox-kafka -p outbox-e2e \
  --features outbox-core/test-utils \
  --include-files 'crates/outbox-core/src/*' 'crates/outbox-core/src/worker/*' 'crates/outbox-core/src/inbox/*' 'crates/outbox-seaorm/src/*' 'crates/outbox-kafka/src/*' \
  --exclude-files 'crates/outbox-core/src/testing.rs' 'crates/outbox-core/src/conformance.rs' \
  --out Html --out Json --output-dir "$OUT" \
  2>&1 | tee "$OUT/tarpaulin.log" | { grep -E '^\|\| |coverage,|^[0-9.]+% coverage' || true; }
status=${PIPESTATUS[0]}
set -o pipefail
if [ "$status" -ne 0 ]; then
  echo "coverage: cargo tarpaulin failed (exit $status: a build error or a failing test); see $OUT/tarpaulin.log" >&2
  exit "$status"
fi

python3 - "$OUT/tarpaulin-report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
rows = []
for f in report["files"]:
    path = "/".join(f["path"])
    path = path[path.find("crates/"):] if "crates/" in path else path
    rows.append((path, f["covered"], f["coverable"]))
print("\nline coverage per file")
for path, covered, coverable in sorted(rows):
    pct = 100.0 * covered / coverable if coverable else 100.0
    print(f"  {pct:6.2f}%  {covered:4d}/{coverable:<4d} {path}")
# The repository and the relay worker are modules of several files: every one of them is held.
repository = ["outbox-seaorm/src/" + m + ".rs" for m in
              ("outbox", "write", "leadership", "claim", "wake", "stats", "dead_letters", "cleanup", "rows")]
held = [r for r in rows if r[0].endswith(tuple(repository)) or "outbox-core/src/worker/" in r[0]]
print("\nheld to 100%:")
short = []
for path, covered, coverable in held:
    print(f"  {100.0 * covered / coverable if coverable else 100.0:6.2f}%  {path}")
    if covered < coverable:
        short.append(path)
if sum(1 for p, _, _ in held if p.endswith(tuple(repository))) != len(repository) or not any(
        "outbox-core/src/worker/" in p for p, _, _ in held):
    sys.exit("coverage: the report lacks the repository or the relay worker")
if short:
    uncovered = {}
    for f in report["files"]:
        path = "/".join(f["path"])
        if any(path.endswith(s) for s in short):
            uncovered[path[path.find("crates/"):]] = [
                t["line"] for t in f["traces"] if t["stats"]["Line"] == 0
            ]
    for path, lines in uncovered.items():
        print(f"  uncovered lines of {path}: {lines}")
    sys.exit("coverage: below 100% of lines in " + ", ".join(short))
PY
