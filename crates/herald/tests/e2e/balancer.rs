//! herald behind a real load balancer: HAProxy (Debian's package;
//! `infra/dev/test.sh` installs it when missing) with the repository's
//! configuration (`infra/haproxy/haproxy.cfg`) in front of three nodes.
//! Clients know only the balancer's address. One node is drained (SIGTERM)
//! and another killed (SIGKILL) while publishing; every client resumes
//! through the balancer on the node left, and every acked message reaches
//! the subscriber once.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::scenario::{assert_all_once, scenario};
use common::*;

const CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../infra/haproxy/haproxy.cfg"
);

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn haproxy_bin() -> String {
    for p in ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"] {
        if std::path::Path::new(p).exists() {
            return p.to_owned();
        }
    }
    panic!("haproxy is not installed (infra/dev/test.sh installs Debian's `haproxy`)");
}

/// HAProxy on `port` in front of `edges` (host:port), with every edge up.
fn start_haproxy(port: u16, edges: &[String]) -> Haproxy {
    let child = Command::new(haproxy_bin())
        .args(["-db", "-f", CONFIG])
        .env("HERALD_LB_BIND", format!("127.0.0.1:{port}"))
        // Within this machine's open-file limit (20,000).
        .env("HERALD_LB_MAXCONN", "5000")
        .env("HERALD_EDGE_1", &edges[0])
        .env("HERALD_EDGE_2", &edges[1])
        .env("HERALD_EDGE_3", &edges[2])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting haproxy");
    let lb = Haproxy(child);
    // Up once it answers /readyz through a healthy edge.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok_and(|mut s| {
            use std::io::{Read, Write};
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nhost: lb\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.starts_with("HTTP/1.1 200")
        });
        if ok {
            return lb;
        }
        assert!(Instant::now() < deadline, "haproxy did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_behind_haproxy_survive_a_drain_and_a_crash() {
    let prefix = unique_prefix("balancer");
    // One at a time: the first creates the topic and its epoch.
    let a = Server::start(&prefix, &[]);
    let b = Server::start(&prefix, &[]);
    let c = Server::start(&prefix, &[]);
    let edges: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|s| s.http.trim_start_matches("http://").to_owned())
        .collect();
    let port = free_ports(1)[0];
    let _lb = start_haproxy(port, &edges);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let channels = ["chat:lb-0", "chat:lb-1", "chat:lb-2", "chat:lb-3"];
    let outcome = scenario(
        vec![url],
        &channels,
        200,
        150,
        move || {
            // Drain one node the way an orchestrator stops it...
            a.stop();
            std::thread::sleep(Duration::from_secs(2));
            // ...and lose another.
            b.kill();
        },
        None,
    )
    .await;
    assert_all_once("behind haproxy: drain one node, kill another", &outcome);
    // The last node served everyone to the end.
    drop(c);
}
