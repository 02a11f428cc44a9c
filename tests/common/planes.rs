//! `sluice up`'s two planes in this process, for end-to-end tests of the control plane and the
//! data plane together: start them, talk to the API, connect through the gateway.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sluice::up::Up;
use sluice_controlplane::up::UpArgs;
use sluice_dataplane::Dataplane;

/// `sluice up`'s arguments: the embedded store in `dir`, the API on `listen`.
pub fn up_args(dir: &Path, listen: SocketAddr) -> UpArgs {
    UpArgs {
        listen,
        data_dir: dir.to_owned(),
        store: None,
        issuer: None,
        config: None,
    }
}

/// Both planes, the data plane configured by `dataplane_yaml`, the API on a free port.
pub fn start_up(dir: &Path, dataplane_yaml: &str) -> Up {
    Up::start(
        &up_args(dir, "127.0.0.1:0".parse().expect("an address")),
        dataplane_yaml,
        Path::new("."),
        &|_| None,
    )
    .expect("sluice up")
}

/// A tokio-postgres connection string through `dp` to connection `conn` with `token`.
pub fn conn_str(dp: &Dataplane, token: &str, conn: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=agent password='{token}' dbname={conn} sslmode=disable",
        dp.local_addr().port()
    )
}

/// One HTTP/1.1 request with `Connection: close`; the status and the JSON body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the API");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let json = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or(serde_json::Value::Null))
        .unwrap_or_default();
    (status, json)
}
