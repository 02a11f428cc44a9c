#!/usr/bin/env bash
# Runs every suite in every mode (tests/drivers/run.sh), then prints the counts as a table and,
# per suite and mode, the tests that fail through Sluice but pass straight at PostgreSQL.
#
#   bash tests/drivers/all.sh [SUITE...]        # default: asyncpg pg8000 tokio-postgres
#
# Same environment as run.sh (SLUICE_BIN, DRIVERS_RESULTS, ...). Takes 15-30 minutes.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS=${DRIVERS_RESULTS:-/tmp/sluice-drivers-results}
suites=("$@")
[ ${#suites[@]} -eq 0 ] && suites=(asyncpg pg8000 tokio-postgres)
for s in "${suites[@]}"; do
    for m in direct session transaction; do
        echo "== $s $m $(date -u +%T)" >&2
        bash "$here/run.sh" "$s" "$m" | tail -1 >"$RESULTS/$s-$m.count"
        cat "$RESULTS/$s-$m.count" >&2
    done
done
python3 - "$RESULTS" "${suites[@]}" <<'EOF'
import sys, os
res, suites = sys.argv[1], sys.argv[2:]
def read(s, m, ext):
    p = os.path.join(res, f"{s}-{m}.{ext}")
    return open(p).read() if os.path.exists(p) else ""
print("| suite | direct | session | transaction |\n|---|---|---|---|")
for s in suites:
    print(f"| {s} | " + " | ".join(read(s, m, "count").strip() for m in ("direct", "session", "transaction")) + " |")
for s in suites:
    direct = {l.split("\t")[0] for l in read(s, "direct", "failed").splitlines()}
    for m in ("session", "transaction"):
        new = [l for l in read(s, m, "failed").splitlines() if l.split("\t")[0] not in direct]
        print(f"\n## {s} {m}: {len(new)} failing through Sluice, passing direct")
        for l in new:
            print("  " + l[:240])
EOF
