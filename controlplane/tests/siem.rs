//! SIEM export to a real rsyslog (Debian's `rsyslogd`, started here with its own
//! configuration on a free port, writing what it parses to a temp file): audit records and
//! API-audit rows arrive as RFC 5424 messages, records stored while the receiver is down arrive
//! once it is up, and a restarted control plane resends nothing already written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{settings, test_key, Server, ADMIN};
use serde_json::{json, Value};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// rsyslogd in the foreground, listening on `port`, one line per message in `out`: HOSTNAME,
/// APP-NAME, MSGID, STRUCTURED-DATA and MSG as rsyslog parsed them.
struct Rsyslog {
    child: Child,
    out: PathBuf,
}

impl Rsyslog {
    fn start(dir: &Path, port: u16) -> Rsyslog {
        let out = dir.join("received.log");
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}")
module(load="imtcp")
template(name="fields" type="string" string="%hostname%|%app-name%|%msgid%|%structured-data%|%msg%\n")
ruleset(name="siem") {{ action(type="omfile" file="{out}" template="fields") }}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="siem")
"#,
                dir = dir.display(),
                out = out.display()
            ),
        )
        .unwrap();
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rsyslogd (apt-get install rsyslog)");
        Rsyslog { child, out }
    }

    /// The messages received so far.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The audit records' messages by their `id` parameter, counting repeats.
fn audit_ids(lines: &[String]) -> BTreeMap<i64, usize> {
    let mut ids = BTreeMap::new();
    for l in lines
        .iter()
        .filter(|l| l.split('|').nth(2) == Some("audit"))
    {
        let sd = l.split('|').nth(3).unwrap();
        let id: i64 = sd
            .split("id=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("an id in {l}"));
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

fn wait_for(rs: &Rsyslog, what: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lines = rs.lines();
        if done(&lines) {
            return lines;
        }
        assert!(Instant::now() < deadline, "{what}: got {lines:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn record(i: i64, verdict: &str) -> Value {
    json!({"time_ms": 1_796_316_561_000_i64 + i, "identity": "ci-bot", "connection": "app",
           "statement": format!("SELECT {i} -- \"quoted\" ]"), "verdict": verdict,
           "rule_id": if verdict == "deny" { Some("tables.deny") } else { None }})
}

#[test]
fn audit_records_reach_rsyslog_at_least_once_and_a_restart_resends_nothing() {
    if !Path::new(RSYSLOGD).exists() {
        if std::env::var_os("CI").is_some() {
            panic!("{RSYSLOGD} is missing: .ci/run installs rsyslog");
        }
        eprintln!("skipped: {RSYSLOGD} is not installed (apt-get install rsyslog)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display());
    let key = test_key();
    let port = free_port();
    let mut s = settings();
    s.syslog = Some(format!("127.0.0.1:{port}"));

    // Records stored while no receiver listens wait for it.
    let srv = Server::try_start(&store, &key, s.clone()).unwrap();
    let batch = json!({"batch_id": "b1", "node_id": "dp-7",
                       "records": [record(1, "allow"), record(2, "deny"), record(3, "review")]});
    let (st, v) = srv.post_json("/v1/audit/batches", ADMIN, &batch);
    assert_eq!(st, 200, "{v}");
    std::thread::sleep(Duration::from_millis(500));
    let rs = Rsyslog::start(dir.path(), port);
    let lines = wait_for(&rs, "three audit records", |l| audit_ids(l).len() == 3);

    let deny = lines
        .iter()
        .find(|l| l.contains("verdict=\"deny\""))
        .expect("the denied record");
    let f: Vec<&str> = deny.splitn(5, '|').collect();
    assert_eq!(&f[..3], ["dp-7", "sluice", "audit"], "{deny}");
    assert!(f[3].starts_with("[sluice@32473 id=\""), "{deny}");
    assert!(
        f[3].contains(
            "identity=\"ci-bot\" connection=\"app\" verdict=\"deny\" rule=\"tables.deny\""
        ),
        "{deny}"
    );
    let msg: Value = serde_json::from_str(f[4].trim()).expect("MSG is the record as JSON");
    assert_eq!(msg["statement"], "SELECT 2 -- \"quoted\" ]");
    assert_eq!(msg["node_id"], "dp-7");

    // API-audit rows too: an apply made through the API.
    let (st, v) = srv.apply_yaml("policies:\n  - name: p\n    classes: { allow: [read] }\n");
    assert_eq!(st, 200, "{v}");
    let lines = wait_for(&rs, "the apply", |l| {
        l.iter()
            .any(|x| x.contains("|api-audit|") && x.contains("action=\"apply\""))
    });
    let apply = lines
        .iter()
        .find(|x| x.contains("action=\"apply\""))
        .unwrap();
    assert!(
        apply.contains("actor=\"bootstrap-admin\" role=\"admin\""),
        "{apply}"
    );

    // A restart goes on from the cursor: the new record, and nothing sent before.
    std::thread::sleep(Duration::from_millis(300));
    srv.stop();
    let srv = Server::try_start(&store, &key, s).unwrap();
    let batch = json!({"batch_id": "b2", "node_id": "dp-7", "records": [record(4, "deny")]});
    let (st, v) = srv.post_json("/v1/audit/batches", ADMIN, &batch);
    assert_eq!(st, 200, "{v}");
    let lines = wait_for(&rs, "the fourth record", |l| audit_ids(l).len() == 4);
    std::thread::sleep(Duration::from_millis(1500));
    let lines = if rs.lines().len() > lines.len() {
        rs.lines()
    } else {
        lines
    };
    let ids = audit_ids(&lines);
    assert!(ids.values().all(|&n| n == 1), "each record once: {ids:?}");
    let api_lines = lines.iter().filter(|l| l.contains("|api-audit|")).count();
    assert_eq!(api_lines, 1, "the apply once: {lines:#?}");
    srv.stop();
}
