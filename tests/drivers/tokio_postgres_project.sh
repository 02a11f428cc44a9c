#!/usr/bin/env bash
# Builds tokio-postgres's own integration tests (tests/test/ of the crates.io package) as a
# throwaway cargo project in DIR, and leaves the test executable at DIR/test-binary.
#
#   bash tests/drivers/tokio_postgres_project.sh DIR VERSION
#
# The package is fetched by cargo from crates.io (a dependency of the project). Its tests
# connect to fixed addresses (`127.0.0.1:5433`, `host=localhost port=5433 user=postgres`, no
# password): sed/perl rewrite those call sites to go through two helpers appended to main.rs,
# which take the address, port and password from DRIVERS_HOST, DRIVERS_PORT and
# DRIVERS_PASSWORD at run time (the password is added only to `user=postgres` strings that
# carry none). Nothing else in the tests is changed. Only the `runtime` feature is on (the
# optional type integrations, chrono, uuid, ..., are left out to keep the build small).
set -euo pipefail
dir=$1 version=$2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$dir"
cd "$dir"

cat >Cargo.toml <<EOF
[package]
name = "tokio-postgres-suite"
version = "0.0.0"
edition = "2024"
publish = false

[workspace]

[features]
default = ["runtime"]
runtime = []

[dependencies]
tokio-postgres = "=$version"

[dev-dependencies]
tokio = { version = "1", features = ["full"] }
futures-util = { version = "0.3", features = ["sink"] }
futures-channel = { version = "0.3", features = ["sink"] }
bytes = "1"
pin-project-lite = "0.2"
postgres-types = "0.2"

[[test]]
name = "test"
path = "tests/test/main.rs"
EOF
mkdir -p src
echo "" >src/lib.rs
# The workspace's lock file pins the versions already in the local registry cache.
[ -f Cargo.lock ] || cp "$repo/Cargo.lock" Cargo.lock
cargo fetch --quiet
src=$(cargo metadata --format-version 1 --quiet |
    python3 -c "import json,sys; m=json.load(sys.stdin); print(next(p['manifest_path'] for p in m['packages'] if p['name']=='tokio-postgres'))")
src=$(dirname "$src")
rm -rf tests
mkdir -p tests
cp -r "$src/tests/test" tests/test

t=tests/test
sed -i 's|TcpStream::connect("127.0.0.1:5433")|TcpStream::connect(crate::drivers_addr())|' $t/main.rs
sed -i 's|let config = s.parse::<Config>().unwrap();|let config = crate::drivers_fix(s).parse::<Config>().unwrap();|' $t/main.rs
# runtime.rs calls tokio_postgres::connect(<literal or s>, NoTls) directly.
perl -0pi -e 's/tokio_postgres::connect\(\s*(s|"(?:[^"\\]|\\.)*"),\s*NoTls/tokio_postgres::connect(&crate::drivers_fix($1), NoTls/g' $t/runtime.rs
cat >>$t/main.rs <<'EOF'

// Added by Sluice's tests/drivers/tokio_postgres_project.sh: where the suite's server is.
fn drivers_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn drivers_addr() -> String {
    format!("{}:{}", drivers_env("DRIVERS_HOST"), drivers_env("DRIVERS_PORT"))
}

fn drivers_fix(s: &str) -> String {
    let mut s = s.replace("5433", &drivers_env("DRIVERS_PORT"));
    if s.contains("user=postgres") && !s.contains("password=") {
        s.push_str(&format!(" password={}", drivers_env("DRIVERS_PASSWORD")));
    }
    s
}
EOF
grep -q '5433' $t/main.rs $t/runtime.rs && grep -n '5433' $t/main.rs $t/runtime.rs | grep -v 'drivers_fix\|replace("5433"' >&2 || true

CARGO_TARGET_DIR=$dir/target cargo test --quiet --no-run --test test 2>&1 | tail -20 >&2
bin=$(CARGO_TARGET_DIR=$dir/target cargo test --quiet --no-run --test test --message-format=json 2>/dev/null |
    python3 -c "import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get('reason')=='compiler-artifact' and m.get('executable') and m['target']['name']=='test': print(m['executable'])" | tail -1)
cp "$bin" "$dir/test-binary"
